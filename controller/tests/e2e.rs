//! End-to-end: a real Kubernetes cluster (the one `KUBECONFIG` names) plus the AWS endpoint the
//! SDK is pointed at (`AWS_ENDPOINT_URL`, an emulator in CI; real AWS when unset). It lives in the
//! controller crate so that Cargo builds the `tap-controller` binary for it
//! (`CARGO_BIN_EXE_tap-controller`): `cargo test -p tap-controller --test e2e`.
//!
//! 1. installs the CRD from `crds/` (server-side apply) and waits until it is Established;
//! 2. chooses where the controller runs (`TAP_E2E_CONTROLLER=auto|cluster|local`, default auto):
//!    - in-cluster: a Deployment labelled `app.kubernetes.io/name=tap-controller` exists (the Helm
//!      release, as the workflow's kind job installs it) and a node can run its pods; the suite waits
//!      for an available replica;
//!    - local: otherwise, and always when no node is Ready and schedulable (an API-server-only control
//!      plane, envtest-style, where a Deployment's pods never run). The suite spawns
//!      `tap-controller run` (this build's binary, or `TAP_CONTROLLER_BIN`) with the same kubeconfig,
//!      and waits for its `/readyz`. With `TAP_E2E_SERVICE_ACCOUNT=<namespace>/<name>` it runs as that
//!      ServiceAccount (a token from `kubectl create token`), e.g. the chart's, so the chart's RBAC is
//!      what is exercised;
//! 3. applies `examples/pipeline.yaml` and waits (5 min) for condition Ready=True, pushing a minimal image
//!    manifest (tag `v1`, or `TAP_E2E_IMAGE_TAG`) to every `tap-<suffix>-*` ECR repository as soon as the
//!    controller has created it, since Ready needs the Lambda images to exist;
//! 4. checks the printer columns of `kubectl get transactionpipelines`;
//! 5. checks the stack through the AWS SDK (DynamoDB tables, the arm64 Lambda);
//! 6. changes the Lambda's memory out of band and waits for the entry in `status.drift`, then for the
//!    controller to put the memory back;
//! 7. deletes the resource, waits for the finalizer to finish, and checks nothing named `tap-<suffix>-`
//!    is left in AWS.
//!
//! Without a cluster (no `KUBECONFIG`, a missing file, or an unreachable API server) it prints why and
//! passes; with `TAP_E2E_REQUIRE` set (the workflow sets it) that is a failure instead.
//! Every wait is bounded by `TAP_E2E_TIMEOUT_SECS` (default 300).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams};
use kube::config::KubeConfigOptions;
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};
use serde_json::Value;

const CONTROLLER_LABEL: &str = "app.kubernetes.io/name=tap-controller";
const CRD_NAME: &str = "transactionpipelines.tap.dev";
const EXPECTED_COLUMNS: [&str; 7] = [
    "NAME", "SUFFIX", "PHASE", "READY", "DRIFT", "ENDPOINT", "AGE",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("controller/ has a parent")
        .to_path_buf()
}

fn timeout() -> Duration {
    let secs = std::env::var("TAP_E2E_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

fn step(msg: &str) {
    eprintln!("==> {msg}");
}

/// The cluster to test against, or the reason there is none.
async fn cluster() -> std::result::Result<Client, String> {
    // kube and the AWS SDK may both enable a rustls provider: choose one, once (as the binary does).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tap_tests::cluster::from_kubeconfig().await
}

fn kubectl() -> Command {
    Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
}

/// Runs kubectl with `args` from the repository root; stdout, or an error with stderr.
fn run_kubectl(args: &[&str]) -> Result<String> {
    let out = kubectl()
        .args(args)
        .current_dir(repo_root())
        .output()
        .with_context(|| format!("running kubectl {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "kubectl {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The controller spawned locally; killed (and its log tail printed on failure) when dropped.
struct LocalController {
    child: Child,
    log: PathBuf,
}

impl LocalController {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for LocalController {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of the controller log {} ---\n{}",
                self.log.display(),
                self.log_tail()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A plain HTTP/1.0 GET on the loopback interface; true on a 200.
fn http_ok(port: u16, path: &str) -> bool {
    let Ok(mut stream) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200")
}

/// The controller binary: `TAP_CONTROLLER_BIN`, else the one Cargo built for this test.
fn controller_binary() -> Result<PathBuf> {
    let bin = std::env::var_os("TAP_CONTROLLER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tap-controller")));
    if !bin.is_file() {
        bail!("no controller binary at {}", bin.display());
    }
    Ok(bin)
}

/// A kubeconfig for the current cluster that authenticates as ServiceAccount `namespace/name`
/// (a short-lived token from `kubectl create token`).
fn service_account_kubeconfig(spec: &str, dir: &Path) -> Result<PathBuf> {
    let (namespace, name) = spec
        .split_once('/')
        .with_context(|| format!("TAP_E2E_SERVICE_ACCOUNT={spec:?} is not <namespace>/<name>"))?;
    let token = run_kubectl(&["create", "token", name, "-n", namespace, "--duration=2h"])?;
    let view: Value = serde_json::from_str(&run_kubectl(&[
        "config", "view", "--raw", "--minify", "-o", "json",
    ])?)?;
    let mut cluster = view["clusters"][0]["cluster"].clone();
    if cluster.is_null() {
        bail!("kubectl config view names no cluster");
    }
    if let Some(c) = cluster.as_object_mut() {
        c.remove("extensions");
    }
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": cluster}],
        "users": [{"name": spec, "user": {"token": token.trim()}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": spec, "namespace": namespace}}],
        "current-context": "e2e",
    });
    let path = dir.join(format!("tap-e2e-kubeconfig-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_vec(&config)?)?;
    eprintln!("the local controller runs as ServiceAccount {spec}");
    Ok(path)
}

/// Spawns `tap-controller run` against `kubeconfig` (default: the environment's `KUBECONFIG`) and
/// waits until it is ready.
async fn spawn_local_controller(kubeconfig: Option<&Path>) -> Result<LocalController> {
    let bin = controller_binary()?;
    let port = free_port()?;
    let log = std::env::temp_dir().join(format!("tap-controller-e2e-{}.log", std::process::id()));
    let log_file = std::fs::File::create(&log)?;
    let mut cmd = Command::new(&bin);
    cmd.arg("run")
        .env("TAP_METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env(
            "POD_NAMESPACE",
            std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into()),
        )
        .env("TAP_LEADER_ELECTION", "false")
        .env("TAP_LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    // A short resync so the out-of-band change is noticed well inside the timeout.
    if std::env::var_os("TAP_RESYNC_SECONDS").is_none() {
        cmd.env("TAP_RESYNC_SECONDS", "10");
    }
    if std::env::var_os("AWS_REGION").is_none() {
        cmd.env("AWS_REGION", "us-east-1");
    }
    if let Some(path) = kubeconfig {
        cmd.env("KUBECONFIG", path);
    } else if let Ok(sa) = std::env::var("TAP_E2E_SERVICE_ACCOUNT") {
        cmd.env(
            "KUBECONFIG",
            service_account_kubeconfig(&sa, &std::env::temp_dir())?,
        );
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    let mut controller = LocalController { child, log };
    eprintln!(
        "spawned {} run (metrics on 127.0.0.1:{port}, log {})",
        bin.display(),
        controller.log.display()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = controller.child.try_wait()? {
            bail!(
                "the local controller exited with {status}:\n{}",
                controller.log_tail()
            );
        }
        // Ready: its watchers have listed the TransactionPipelines.
        if http_ok(port, "/readyz") {
            eprintln!("the local controller is ready");
            return Ok(controller);
        }
        if Instant::now() > deadline {
            bail!(
                "the local controller is not ready after 60 s:\n{}",
                controller.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits for an in-cluster controller Deployment to have an available replica.
async fn wait_for_deployment(client: &Client, deployment: &Deployment) -> Result<()> {
    let ns = deployment.metadata.namespace.clone().unwrap_or_default();
    let name = deployment.metadata.name.clone().unwrap_or_default();
    let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + timeout();
    loop {
        let d = api.get(&name).await?;
        let available = d
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0);
        if available >= 1 {
            eprintln!("using the in-cluster controller {ns}/{name} ({available} available)");
            return Ok(());
        }
        if Instant::now() > deadline {
            let logs = run_kubectl(&[
                "logs",
                "-n",
                &ns,
                &format!("deployment/{name}"),
                "--tail=50",
            ])
            .unwrap_or_else(|e| e.to_string());
            bail!("controller Deployment {ns}/{name} has no available replica:\n{logs}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

enum ControllerHandle {
    InCluster,
    Local(#[allow(dead_code)] LocalController),
}

/// Whether some node can run a pod: Ready and schedulable. Without one (an API-server-only control
/// plane) a Deployment's pods never start. `Err` when the nodes cannot be listed.
async fn a_node_can_run_pods(client: &Client) -> Result<bool> {
    let nodes: Api<Node> = Api::all(client.clone());
    let nodes = nodes.list(&ListParams::default()).await?;
    Ok(nodes.items.iter().any(|n| {
        let schedulable = !n
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        let ready = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        schedulable && ready
    }))
}

/// Where the controller runs (see the module doc); `kubeconfig` is the local controller's (default:
/// the environment's).
async fn start_controller(client: &Client, kubeconfig: Option<&Path>) -> Result<ControllerHandle> {
    let mode = std::env::var("TAP_E2E_CONTROLLER").unwrap_or_else(|_| "auto".into());
    if !matches!(mode.as_str(), "auto" | "cluster" | "local") {
        bail!("TAP_E2E_CONTROLLER={mode:?}: use auto, cluster or local");
    }
    if mode == "local" {
        eprintln!("controller: local process (TAP_E2E_CONTROLLER=local)");
        return Ok(ControllerHandle::Local(
            spawn_local_controller(kubeconfig).await?,
        ));
    }
    let runs_pods = match a_node_can_run_pods(client).await {
        Ok(yes) => yes,
        Err(e) => {
            eprintln!("cannot list nodes ({e}): assuming they can run pods");
            true
        }
    };
    let deployments: Api<Deployment> = Api::all(client.clone());
    let found = deployments
        .list(&ListParams::default().labels(CONTROLLER_LABEL))
        .await?;
    match (found.items.first(), runs_pods) {
        (Some(d), true) => {
            eprintln!("controller: in-cluster (Deployment labelled {CONTROLLER_LABEL})");
            wait_for_deployment(client, d).await?;
            Ok(ControllerHandle::InCluster)
        }
        (_, false) if mode == "cluster" => bail!(
            "TAP_E2E_CONTROLLER=cluster but no node is Ready and schedulable: the controller's pods cannot run"
        ),
        (None, _) if mode == "cluster" => bail!(
            "TAP_E2E_CONTROLLER=cluster but no Deployment labelled {CONTROLLER_LABEL} exists"
        ),
        (deployment, runs_pods) => {
            let why = if !runs_pods {
                "no node is Ready and schedulable (an API-server-only control plane)"
            } else {
                "no in-cluster controller Deployment"
            };
            if deployment.is_some() && !runs_pods {
                eprintln!("a controller Deployment exists, but its pods cannot run here");
            }
            eprintln!("controller: local process ({why})");
            Ok(ControllerHandle::Local(spawn_local_controller(kubeconfig).await?))
        }
    }
}

/// What the example manifest declares.
struct Example {
    name: String,
    namespace: String,
    suffix: String,
    /// Every AWS resource of the pipeline is named `tap-<suffix>-...`.
    prefix: String,
    image_tag: String,
}

fn find_string_key(v: &Value, key: &str) -> Option<String> {
    match v {
        Value::Object(map) => map
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| map.values().find_map(|child| find_string_key(child, key))),
        Value::Array(items) => items.iter().find_map(|child| find_string_key(child, key)),
        _ => None,
    }
}

fn read_example(path: &Path) -> Result<Example> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "{} is missing: the e2e suite applies it to the cluster",
            path.display()
        )
    })?;
    let doc: Value =
        serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if doc["kind"] != "TransactionPipeline" {
        bail!("{} is not a TransactionPipeline", path.display());
    }
    let name = doc["metadata"]["name"]
        .as_str()
        .context("metadata.name")?
        .to_string();
    let namespace = doc["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let suffix = doc["spec"]["environmentSuffix"]
        .as_str()
        .context("spec.environmentSuffix")?
        .to_string();
    let image_tag = std::env::var("TAP_E2E_IMAGE_TAG")
        .ok()
        .or_else(|| find_string_key(&doc["spec"], "imageTag"))
        .unwrap_or_else(|| "v1".into());
    Ok(Example {
        prefix: format!("tap-{suffix}-"),
        name,
        namespace,
        suffix,
        image_tag,
    })
}

fn pipeline_api(client: &Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("tap.dev", "v1alpha1", "TransactionPipeline");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "transactionpipelines");
    Api::namespaced_with(client.clone(), namespace, &ar)
}

fn condition_status(obj: &DynamicObject, type_: &str) -> Option<String> {
    obj.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["status"].as_str())
        .map(str::to_string)
}

fn phase(obj: &DynamicObject) -> String {
    obj.data["status"]["phase"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

async fn aws_config() -> SdkConfig {
    let region = std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|_| "us-east-1".into());
    // AWS_ENDPOINT_URL and the credentials come from the environment, like the controller's.
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region))
        .load()
        .await
}

/// Docker image manifest v2 with no layers: enough for ECR (and the emulators) to record a tag.
const FAKE_MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},"layers":[]}"#;

/// Pushes the fake manifest under `tag` to every repository named `prefix*` that lacks it.
async fn push_missing_images(ecr: &aws_sdk_ecr::Client, prefix: &str, tag: &str) -> Result<usize> {
    let mut pushed = 0;
    let mut pages = ecr.describe_repositories().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.context("ecr DescribeRepositories")?;
        for repo in page.repositories() {
            let Some(name) = repo.repository_name() else {
                continue;
            };
            if !name.starts_with(prefix) {
                continue;
            }
            let existing = ecr
                .describe_images()
                .repository_name(name)
                .image_ids(
                    aws_sdk_ecr::types::ImageIdentifier::builder()
                        .image_tag(tag)
                        .build(),
                )
                .send()
                .await;
            if matches!(&existing, Ok(out) if !out.image_details().is_empty()) {
                continue;
            }
            match ecr
                .put_image()
                .repository_name(name)
                .image_tag(tag)
                .image_manifest(FAKE_MANIFEST)
                .image_manifest_media_type("application/vnd.docker.distribution.manifest.v2+json")
                .send()
                .await
            {
                Ok(_) => {
                    eprintln!("   pushed {name}:{tag}");
                    pushed += 1;
                }
                Err(e) => {
                    let text = format!("{e:?}");
                    if !text.contains("AlreadyExists") && !text.contains("already exists") {
                        return Err(anyhow!("ecr PutImage {name}:{tag}: {text}"));
                    }
                }
            }
        }
    }
    Ok(pushed)
}

/// `kubectl get transactionpipelines` for one object: header -> value.
fn printer_columns(example: &Example) -> Result<Vec<(String, String)>> {
    let out = run_kubectl(&[
        "get",
        "transactionpipelines",
        "-n",
        &example.namespace,
        &example.name,
    ])?;
    let mut lines = out.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .context("no header line")?
        .split_whitespace()
        .collect();
    let row: Vec<&str> = lines.next().context("no row")?.split_whitespace().collect();
    if header.len() != row.len() {
        bail!("cannot split the kubectl table (a value with spaces?):\n{out}");
    }
    Ok(header
        .into_iter()
        .zip(row)
        .map(|(h, v)| (h.to_string(), v.to_string()))
        .collect())
}

fn json_scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Names left in AWS that contain `prefix`, per service.
async fn leftovers(config: &SdkConfig, prefix: &str) -> Result<Vec<String>> {
    let mut left = Vec::new();
    let keep = |name: &str| name.contains(prefix);

    let ddb = aws_sdk_dynamodb::Client::new(config);
    let mut pages = ddb.list_tables().into_paginator().send();
    while let Some(page) = pages.next().await {
        for t in page.context("dynamodb ListTables")?.table_names() {
            if keep(t) {
                left.push(format!("dynamodb table {t}"));
            }
        }
    }
    let lambda = aws_sdk_lambda::Client::new(config);
    let mut pages = lambda.list_functions().into_paginator().send();
    while let Some(page) = pages.next().await {
        for f in page.context("lambda ListFunctions")?.functions() {
            if let Some(name) = f.function_name().filter(|n| keep(n)) {
                left.push(format!("lambda function {name}"));
            }
        }
    }
    let ecr = aws_sdk_ecr::Client::new(config);
    let mut pages = ecr.describe_repositories().into_paginator().send();
    while let Some(page) = pages.next().await {
        for r in page.context("ecr DescribeRepositories")?.repositories() {
            if let Some(name) = r.repository_name().filter(|n| keep(n)) {
                left.push(format!("ecr repository {name}"));
            }
        }
    }
    let sfn = aws_sdk_sfn::Client::new(config);
    let mut pages = sfn.list_state_machines().into_paginator().send();
    while let Some(page) = pages.next().await {
        for m in page.context("states ListStateMachines")?.state_machines() {
            if keep(m.name()) {
                left.push(format!("state machine {}", m.name()));
            }
        }
    }
    let iam = aws_sdk_iam::Client::new(config);
    let mut pages = iam.list_roles().into_paginator().send();
    while let Some(page) = pages.next().await {
        for r in page.context("iam ListRoles")?.roles() {
            if keep(r.role_name()) {
                left.push(format!("iam role {}", r.role_name()));
            }
        }
    }
    let sqs = aws_sdk_sqs::Client::new(config);
    let queues = sqs.list_queues().send().await.context("sqs ListQueues")?;
    for url in queues.queue_urls() {
        if keep(url.rsplit('/').next().unwrap_or(url)) {
            left.push(format!("sqs queue {url}"));
        }
    }
    let sns = aws_sdk_sns::Client::new(config);
    let mut pages = sns.list_topics().into_paginator().send();
    while let Some(page) = pages.next().await {
        for t in page.context("sns ListTopics")?.topics() {
            if let Some(arn) = t
                .topic_arn()
                .filter(|a| keep(a.rsplit(':').next().unwrap_or(a)))
            {
                left.push(format!("sns topic {arn}"));
            }
        }
    }
    let apigw = aws_sdk_apigateway::Client::new(config);
    let mut pages = apigw.get_rest_apis().into_paginator().send();
    while let Some(page) = pages.next().await {
        for api in page.context("apigateway GetRestApis")?.items() {
            if let Some(name) = api.name().filter(|n| keep(n)) {
                left.push(format!("rest api {name}"));
            }
        }
    }
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(config)
            .force_path_style(true)
            .build(),
    );
    let buckets = s3.list_buckets().send().await.context("s3 ListBuckets")?;
    for b in buckets.buckets() {
        if let Some(name) = b.name().filter(|n| keep(n)) {
            left.push(format!("s3 bucket {name}"));
        }
    }
    // CloudWatch alarms are not listed: aws-sdk-cloudwatch speaks rpcv2-CBOR and moto answers it in
    // XML, so DescribeAlarms fails to parse against the emulator.
    Ok(left)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_lifecycle_end_to_end() {
    let client = match cluster().await {
        Ok(client) => client,
        Err(reason) => {
            if std::env::var_os("TAP_E2E_REQUIRE").is_some() {
                panic!("TAP_E2E_REQUIRE is set but there is no usable cluster: {reason}");
            }
            eprintln!("SKIP e2e: {reason}. Point KUBECONFIG at a cluster (e.g. kind) and AWS_ENDPOINT_URL at an emulator to run it.");
            return;
        }
    };
    if let Err(e) = lifecycle(client).await {
        panic!("e2e failed: {e:?}");
    }
}

async fn lifecycle(client: Client) -> Result<()> {
    let example = read_example(&repo_root().join("examples/pipeline.yaml"))?;
    let prefix = example.prefix.clone();
    eprintln!(
        "pipeline {}/{} suffix {} (AWS names {prefix}*), AWS endpoint {}",
        example.namespace,
        example.name,
        example.suffix,
        std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "(real AWS)".into())
    );
    let aws = aws_config().await;
    let ecr = aws_sdk_ecr::Client::new(&aws);
    let lambda = aws_sdk_lambda::Client::new(&aws);
    let ddb = aws_sdk_dynamodb::Client::new(&aws);

    step("install the CRD from crds/");
    run_kubectl(&["apply", "--server-side", "--force-conflicts", "-f", "crds/"])?;
    run_kubectl(&[
        "wait",
        "--for=condition=Established",
        &format!("crd/{CRD_NAME}"),
        "--timeout=60s",
    ])?;

    step("start the controller");
    let _controller = start_controller(&client, None).await?;

    let api = pipeline_api(&client, &example.namespace);
    if api.get_opt(&example.name).await?.is_some() {
        step("delete the pipeline left by an earlier run");
        api.delete(&example.name, &DeleteParams::default()).await?;
        wait_gone(&api, &example.name).await?;
    }

    step("apply examples/pipeline.yaml");
    run_kubectl(&["apply", "-f", "examples/pipeline.yaml"])?;

    step(&format!(
        "wait for Ready=True, pushing {}:{} images as repositories appear",
        prefix, example.image_tag
    ));
    let deadline = Instant::now() + timeout();
    let mut last_phase = String::new();
    let ready = loop {
        let obj = api.get(&example.name).await?;
        let p = phase(&obj);
        if p != last_phase {
            eprintln!("   phase {p:?}");
            last_phase = p;
        }
        if condition_status(&obj, "Ready").as_deref() == Some("True") {
            break obj;
        }
        push_missing_images(&ecr, &prefix, &example.image_tag).await?;
        if Instant::now() > deadline {
            bail!(
                "not Ready after {:?}; status:\n{}",
                timeout(),
                serde_json::to_string_pretty(&obj.data["status"])?
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };

    step("check the printer columns");
    let columns = printer_columns(&example)?;
    let headers: Vec<&str> = columns.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(
        headers, EXPECTED_COLUMNS,
        "kubectl get transactionpipelines headers"
    );
    let col = |h: &str| {
        columns
            .iter()
            .find(|(k, _)| k == h)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(col("NAME"), example.name);
    assert_eq!(col("SUFFIX"), example.suffix);
    assert_eq!(col("READY"), "True");
    assert_eq!(col("PHASE"), phase(&ready), "PHASE column vs status.phase");
    let endpoint = col("ENDPOINT");
    assert!(
        endpoint.starts_with("http"),
        "ENDPOINT column should be the API URL, got {endpoint:?}"
    );
    assert_ne!(col("DRIFT"), "", "DRIFT column");
    eprintln!("   {columns:?}");

    step("check the stack in AWS");
    for table in ["transactions", "processing-status"] {
        let name = format!("{prefix}{table}");
        let t = ddb
            .describe_table()
            .table_name(&name)
            .send()
            .await
            .with_context(|| format!("table {name}"))?;
        let status = t
            .table()
            .and_then(|t| t.table_status())
            .map(|s| s.as_str().to_string());
        assert_eq!(status.as_deref(), Some("ACTIVE"), "table {name}");
    }
    let function = format!("{prefix}csv-validator");
    let cfg = lambda
        .get_function_configuration()
        .function_name(&function)
        .send()
        .await
        .with_context(|| format!("function {function}"))?;
    assert!(
        cfg.architectures()
            .contains(&aws_sdk_lambda::types::Architecture::Arm64),
        "{function} is not arm64: {:?}",
        cfg.architectures()
    );

    step("change the Lambda's memory out of band and wait for status.drift");
    let memory = cfg.memory_size().context("MemorySize")?;
    let changed = if memory <= 10240 - 128 {
        memory + 128
    } else {
        memory - 128
    };
    lambda
        .update_function_configuration()
        .function_name(&function)
        .memory_size(changed)
        .send()
        .await
        .context("lambda UpdateFunctionConfiguration")?;
    let deadline = Instant::now() + timeout();
    let entry = loop {
        let obj = api.get(&example.name).await?;
        let found = obj.data["status"]["drift"].as_array().and_then(|entries| {
            entries
                .iter()
                .find(|e| {
                    e["field"]
                        .as_str()
                        .is_some_and(|f| f.to_lowercase().contains("memory"))
                        && json_scalar(&e["actual"]) == changed.to_string()
                })
                .cloned()
        });
        if let Some(entry) = found {
            break entry;
        }
        if Instant::now() > deadline {
            bail!(
                "no status.drift entry for the memory of {function} ({memory} -> {changed}) after {:?}; status:\n{}",
                timeout(),
                serde_json::to_string_pretty(&obj.data["status"])?
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    eprintln!("   drift entry: {entry}");
    assert_eq!(
        json_scalar(&entry["expected"]),
        memory.to_string(),
        "drift expected value: {entry}"
    );

    step("wait for the controller to correct the drift");
    let deadline = Instant::now() + timeout();
    loop {
        let now = lambda
            .get_function_configuration()
            .function_name(&function)
            .send()
            .await?
            .memory_size();
        if now == Some(memory) {
            break;
        }
        if Instant::now() > deadline {
            bail!("{function} memory still {now:?}, expected the controller to restore {memory}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    step("delete the pipeline and wait for the finalizer to tear the stack down");
    api.delete(&example.name, &DeleteParams::default()).await?;
    wait_gone(&api, &example.name).await?;

    step(&format!("check nothing named {prefix}* is left in AWS"));
    let left = leftovers(&aws, &prefix).await?;
    assert!(left.is_empty(), "left in AWS after deletion: {left:#?}");
    eprintln!("e2e passed");
    Ok(())
}

async fn wait_gone(api: &Api<DynamicObject>, name: &str) -> Result<()> {
    let deadline = Instant::now() + timeout();
    loop {
        match api.get_opt(name).await? {
            None => return Ok(()),
            Some(obj) => {
                if Instant::now() > deadline {
                    bail!(
                        "{name} still exists after {:?} (finalizers {:?}); status:\n{}",
                        timeout(),
                        obj.metadata.finalizers,
                        serde_json::to_string_pretty(&obj.data["status"])?
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The suite's own AWS helpers (fake image push, leftover listing across every service) against the
/// local emulator, so they are proven before a cluster run depends on them. Needs moto (or
/// ministack, per `TAP_TEST_EMULATOR`); without it: a skip, or a failure when `CI` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_helpers_work_against_the_emulator() {
    let emulator = match tap_tests::Emulator::start().await {
        Ok(e) => e,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIP: no AWS emulator: {e:#}");
            return;
        }
        Err(e) => panic!("CI is set but the AWS emulator does not start: {e:#}"),
    };
    let config = emulator.sdk_config();
    let prefix = "tap-e2ehelper-";
    let ecr = aws_sdk_ecr::Client::new(&config);
    let ddb = aws_sdk_dynamodb::Client::new(&config);

    assert!(leftovers(&config, prefix).await.unwrap().is_empty());
    for repo in [
        "tap-e2ehelper-csv-validator",
        "tap-e2ehelper-transaction-processor",
        "other-repo",
    ] {
        ecr.create_repository()
            .repository_name(repo)
            .send()
            .await
            .unwrap();
    }
    assert_eq!(
        push_missing_images(&ecr, prefix, "v1").await.unwrap(),
        2,
        "one push per matching repo"
    );
    assert_eq!(
        push_missing_images(&ecr, prefix, "v1").await.unwrap(),
        0,
        "idempotent"
    );
    let images = ecr
        .describe_images()
        .repository_name("tap-e2ehelper-csv-validator")
        .send()
        .await
        .unwrap();
    assert!(images
        .image_details()
        .iter()
        .any(|d| d.image_tags().contains(&"v1".to_string())));
    let other = ecr
        .describe_images()
        .repository_name("other-repo")
        .send()
        .await
        .unwrap();
    assert!(
        other.image_details().is_empty(),
        "repositories outside the prefix are left alone"
    );

    ddb.create_table()
        .table_name("tap-e2ehelper-transactions")
        .billing_mode(aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
        .attribute_definitions(
            aws_sdk_dynamodb::types::AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(aws_sdk_dynamodb::types::ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            aws_sdk_dynamodb::types::KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(aws_sdk_dynamodb::types::KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let left = leftovers(&config, prefix).await.unwrap();
    assert_eq!(
        left,
        vec![
            "dynamodb table tap-e2ehelper-transactions".to_string(),
            "ecr repository tap-e2ehelper-csv-validator".to_string(),
            "ecr repository tap-e2ehelper-transaction-processor".to_string(),
        ]
    );
    // A longer suffix sharing the prefix's start is not a leftover of this pipeline.
    assert!(leftovers(&config, "tap-e2ehelpe-")
        .await
        .unwrap()
        .is_empty());
}

/// The suite's own controller placement against an API-server-only "cluster" (the in-memory fake API
/// server over HTTP: no node, no Deployment): it chooses the local process, which Cargo built for
/// it, and that process becomes ready (its watchers have listed the pipelines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_node_the_suite_runs_the_controller_locally_and_it_becomes_ready() {
    use tap_controller::k8s::fake_api::FakeApi;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let api = FakeApi::new();
    let url = api.serve_tcp().await;
    let kubeconfig = std::env::temp_dir().join(format!(
        "tap-e2e-fake-kubeconfig-{}.yaml",
        std::process::id()
    ));
    std::fs::write(&kubeconfig, FakeApi::kubeconfig(&url)).unwrap();
    let client = Client::try_from(
        Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
            &KubeConfigOptions::default(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    let handle = start_controller(&client, Some(&kubeconfig))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        matches!(handle, ControllerHandle::Local(_)),
        "no node can run pods: the controller must run as a local process"
    );
    let pipeline_lists = api
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/transactionpipelines") && r.method == "GET")
        .count();
    assert!(
        pipeline_lists >= 1,
        "the local controller listed the pipelines"
    );
    drop(handle);
    let _ = std::fs::remove_file(&kubeconfig);
}
