//! Scale benchmark: the real controller binary (`tap-controller run`, release build) as a separate
//! process, against moto, with N = 1, 20, 50, 100 TransactionPipelines: create → all Ready, one full
//! resync, teardown; controller and moto CPU, controller RSS (peak and after each phase), AWS calls per
//! pipeline and per resync resource; the same 100 with +40 ms per call (microburst); one fresh stack with
//! +40 ms per call, graph executor vs concurrency 1, against its critical path.
//!
//! The Kubernetes API is the cluster `KUBECONFIG` names when it is set, otherwise the mocked API
//! server (`tap_controller::k8s::fake_api`) served over HTTP in this process, with a generated
//! kubeconfig; the first line printed says which.
//!
//! Run: `cargo bench -p tap-tests --bench scale` (about 8 minutes on 2 cores);
//! `-- --quick` runs only the single stack and 1 and 20 pipelines. Options: `--pipelines 1,20,50,100`,
//! `--latency-pipelines 100` (0: skip the +40 ms fleet), `--concurrency 8`, `--out PATH.json`,
//! `--controller-env K=V` (repeatable, e.g. `MALLOC_ARENA_MAX=2`), `--no-single`.
//! `TAP_CONTROLLER_BIN` runs another build of the binary (a `dhat-heap` build: see the README);
//! otherwise the bench builds `cargo build --release -p tap-controller` first.
//! Writes a markdown table and a JSON file (paths printed) under `target/scale/`.

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("the scale benchmark reads /proc/<pid>: Linux only");
}

#[cfg(target_os = "linux")]
fn main() -> anyhow::Result<()> {
    // kube (ring) and the AWS SDK (aws-lc-rs) both enable a rustls provider: pick one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench::run())
}

#[cfg(target_os = "linux")]
mod bench {
    use std::collections::{BTreeMap, HashMap};
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context as _};
    use futures::StreamExt;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
    use kube::runtime::watcher;
    use kube::{Client, ResourceExt};
    use serde::Serialize;
    use serde_json::json;
    use tap_controller::api::{
        TransactionPipeline, TransactionPipelineSpec, FINALIZER, RECONCILE_REQUEST_ANNOTATION,
    };
    use tap_controller::aws::{is_read, CallCounter};
    use tap_controller::desired::ResourceId;
    use tap_controller::engine::{DriftMemory, Engine, Mode, Pipeline, Progress, ResourceReport};
    use tap_controller::k8s::fake_api::FakeApi;
    use tap_tests::scale::controller::{ControllerConfig, ControllerProcess, MetricsSnapshot};
    use tap_tests::scale::procstat::{self, ProcStat, RssSampler};
    use tap_tests::scale::tap::{AwsTap, Call, ImagePush};
    use tap_tests::scale::{critical_path, line_fit, quantile, LatencyProxy};
    use tap_tests::stack::offline_stack;
    use tap_tests::{Emulator, EmulatorKind};

    const NAMESPACE: &str = "tap-scale";
    /// Added by the bench with the reconcile request that triggers one resync of every pipeline at
    /// once; it holds each object after teardown until the bench has seen the controller's own
    /// finalizer go, and is removed then.
    const BENCH_FINALIZER: &str = "bench.tap.dev/resync";
    /// Long enough that no periodic resync falls inside a run: the bench triggers the one it measures.
    const RESYNC_SECONDS: u64 = 3600;
    const TAG: &str = "v1";
    const MIB_TARGET: f64 = 64.0;

    // ---------------------------------------------------------------- options

    struct Options {
        quick: bool,
        pipelines: Vec<usize>,
        latency_pipelines: usize,
        concurrency: usize,
        out: PathBuf,
        controller_env: Vec<(String, String)>,
        single: bool,
    }

    fn target_dir() -> PathBuf {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"))
    }

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace root")
            .to_path_buf()
    }

    fn options() -> anyhow::Result<Options> {
        let mut o = Options {
            quick: false,
            pipelines: vec![1, 20, 50, 100],
            latency_pipelines: 100,
            concurrency: 8,
            out: target_dir().join("scale").join("scale.json"),
            controller_env: Vec::new(),
            single: true,
        };
        let mut explicit_pipelines = false;
        let mut explicit_latency = false;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value =
                |name: &str| args.next().with_context(|| format!("{name} needs a value"));
            match arg.as_str() {
                "--quick" => o.quick = true,
                "--pipelines" => {
                    o.pipelines = value("--pipelines")?
                        .split(',')
                        .map(|n| n.trim().parse())
                        .collect::<Result<_, _>>()
                        .context("--pipelines 1,20,50,100")?;
                    explicit_pipelines = true;
                }
                "--latency-pipelines" => {
                    o.latency_pipelines = value("--latency-pipelines")?.parse()?;
                    explicit_latency = true;
                }
                "--concurrency" => o.concurrency = value("--concurrency")?.parse()?,
                "--out" => o.out = PathBuf::from(value("--out")?),
                "--controller-env" => {
                    let kv = value("--controller-env")?;
                    let (k, v) = kv.split_once('=').context("--controller-env K=V")?;
                    o.controller_env.push((k.to_string(), v.to_string()));
                }
                "--no-single" => o.single = false,
                // `cargo bench` passes `--bench`; filters and other harness flags mean nothing here.
                _ => {}
            }
        }
        if o.quick {
            if !explicit_pipelines {
                o.pipelines = vec![1, 20];
            }
            if !explicit_latency {
                o.latency_pipelines = 0;
            }
        }
        Ok(o)
    }

    /// The controller binary: `TAP_CONTROLLER_BIN`, or the release build (built now if stale).
    fn controller_binary() -> anyhow::Result<(PathBuf, String)> {
        if let Some(bin) = std::env::var_os("TAP_CONTROLLER_BIN") {
            return Ok((PathBuf::from(bin), "TAP_CONTROLLER_BIN".into()));
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        eprintln!("building the controller: cargo build --release -p tap-controller");
        let started = Instant::now();
        let mut build = std::process::Command::new(cargo);
        // `cargo bench` hands this process the variables it sets for a bench (`CARGO_MANIFEST_DIR`, …)
        // and the `[env]` of .cargo/config.toml. Build scripts that track one (ring's tracks
        // `CARGO_MANIFEST_DIR`) would see it changed from a plain `cargo build`, and the release
        // controller, AWS SDK included, would be rebuilt from scratch (about 20 min on 2 cores).
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            let keep = ["CARGO_HOME", "CARGO_TARGET_DIR"].contains(&name.as_ref());
            if (name.starts_with("CARGO_") && !keep)
                || name.ends_with("_aarch64_unknown_linux_musl")
            {
                build.env_remove(name.as_ref());
            }
        }
        let output = build
            .args([
                "build",
                "--release",
                "-p",
                "tap-controller",
                "--bin",
                "tap-controller",
                "--message-format=json-render-diagnostics",
            ])
            .current_dir(workspace())
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("running cargo build --release -p tap-controller")?;
        if !output.status.success() {
            bail!("cargo build --release -p tap-controller failed");
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let exe = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| {
                m["reason"] == "compiler-artifact" && m["target"]["name"] == "tap-controller"
            })
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .context("cargo reported no tap-controller executable")?;
        eprintln!(
            "  {} ({:.0} s)",
            exe.display(),
            started.elapsed().as_secs_f64()
        );
        Ok((
            exe,
            "release (cargo build --release -p tap-controller)".into(),
        ))
    }

    /// One cheap read per service through `endpoint` (moto, or the latency proxy in front of it), before
    /// the recording proxy (not counted): moto loads a service's backend at its first request, and the
    /// first request through the latency proxy is slow too (the first STS call took 2.8 s and the first
    /// Step Functions call 1.2 s inside a measured converge), costs real AWS does not have.
    async fn warm_up(moto: &Emulator, endpoint: &str) {
        let config = moto
            .sdk_config()
            .to_builder()
            .endpoint_url(endpoint)
            .build();
        let _ = tokio::join!(
            aws_sdk_sts::Client::new(&config)
                .get_caller_identity()
                .send(),
            aws_sdk_sfn::Client::new(&config)
                .list_state_machines()
                .send(),
            aws_sdk_s3::Client::new(&config).list_buckets().send(),
            aws_sdk_dynamodb::Client::new(&config).list_tables().send(),
            aws_sdk_lambda::Client::new(&config).list_functions().send(),
            aws_sdk_apigateway::Client::new(&config)
                .get_rest_apis()
                .send(),
            aws_sdk_iam::Client::new(&config).list_roles().send(),
            aws_sdk_ecr::Client::new(&config)
                .describe_repositories()
                .send(),
            aws_sdk_sns::Client::new(&config).list_topics().send(),
            aws_sdk_sqs::Client::new(&config).list_queues().send(),
            aws_sdk_cloudwatch::Client::new(&config)
                .describe_alarms()
                .send(),
            aws_sdk_cloudwatchlogs::Client::new(&config)
                .describe_log_groups()
                .send(),
        );
    }

    // ---------------------------------------------------------------- Kubernetes side

    /// Where the pipelines live: the mocked API server (one per scenario) or a real cluster.
    struct Kube {
        client: Client,
        kubeconfig: PathBuf,
        /// Keeps the mocked API server's state alive for the scenario.
        _fake: Option<FakeApi>,
    }

    fn real_kubeconfig() -> Option<PathBuf> {
        std::env::var_os("KUBECONFIG")
            .filter(|k| !k.is_empty())
            .map(PathBuf::from)
    }

    async fn kube_for(scenario: &str, dir: &Path) -> anyhow::Result<Kube> {
        if let Some(kubeconfig) = real_kubeconfig() {
            let client = Client::try_default()
                .await
                .context("connecting to the cluster KUBECONFIG names")?;
            let api: Api<TransactionPipeline> = Api::namespaced(client.clone(), NAMESPACE);
            let left = api.list(&Default::default()).await?;
            if !left.items.is_empty() {
                bail!(
                    "namespace {NAMESPACE} still holds {} TransactionPipelines (an earlier run?): delete them first",
                    left.items.len()
                );
            }
            return Ok(Kube {
                client,
                kubeconfig,
                _fake: None,
            });
        }
        let fake = FakeApi::new();
        let url = fake.serve_tcp().await;
        let kubeconfig = dir.join(format!("{scenario}-kubeconfig.yaml"));
        std::fs::write(&kubeconfig, FakeApi::kubeconfig(&url))?;
        Ok(Kube {
            client: fake.client(),
            kubeconfig,
            _fake: Some(fake),
        })
    }

    /// On a real cluster: the CRD (server-side apply, then Established) and the namespace.
    async fn prepare_cluster(client: &Client) -> anyhow::Result<()> {
        use k8s_openapi::api::core::v1::Namespace;
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        use kube::CustomResourceExt;
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let crd = TransactionPipeline::crd();
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply("tap-scale-bench").force(),
            &Patch::Apply(&crd),
        )
        .await
        .context("applying the TransactionPipeline CRD")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let established = crds.get(&name).await?.status.is_some_and(|s| {
                s.conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established {
                break;
            }
            if Instant::now() > deadline {
                bail!("the CRD {name} is not Established after 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .patch(
                NAMESPACE,
                &PatchParams::apply("tap-scale-bench"),
                &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})),
            )
            .await
            .context("creating the namespace")?;
        Ok(())
    }

    fn spec_yaml(suffix: &str) -> String {
        format!(
            "environmentSuffix: {suffix}\nfunctions:\n  csvValidator: {{image: {{tag: {TAG}}}}}\n  dataTransformer: {{image: {{tag: {TAG}}}}}\n  notificationSender: {{image: {{tag: {TAG}}}}}\n"
        )
    }

    fn spec(suffix: &str) -> TransactionPipelineSpec {
        serde_saphyr::from_str(&spec_yaml(suffix)).expect("the bench spec parses")
    }

    fn pipeline(name: &str, suffix: &str) -> TransactionPipeline {
        let mut p = TransactionPipeline::new(name, spec(suffix));
        p.metadata.namespace = Some(NAMESPACE.into());
        // What a real API server sets on create (it ignores what a client sends); the mocked one keeps them.
        p.metadata.generation = Some(1);
        p.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        p
    }

    /// What the bench saw of one pipeline, from its own watch.
    #[derive(Clone, Debug, Default)]
    struct Seen {
        created: Option<Instant>,
        ready: Option<Instant>,
        delete_requested: Option<Instant>,
        /// The controller's finalizer is gone (teardown done).
        released: Option<Instant>,
        gone: bool,
        phase: String,
    }

    /// A watch on the pipelines of the namespace, recording when each became Ready and was released.
    struct Tracker {
        seen: Arc<Mutex<HashMap<String, Seen>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Tracker {
        fn start(api: Api<TransactionPipeline>) -> Self {
            let seen: Arc<Mutex<HashMap<String, Seen>>> = Default::default();
            let state = seen.clone();
            let task = tokio::spawn(async move {
                let mut stream = watcher(api, watcher::Config::default()).boxed();
                while let Some(event) = stream.next().await {
                    let now = Instant::now();
                    let (object, deleted) = match event {
                        Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => {
                            (p, false)
                        }
                        Ok(watcher::Event::Delete(p)) => (p, true),
                        Ok(_) => continue,
                        Err(e) => {
                            eprintln!("  watch: {e}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    };
                    let mut state = state.lock().expect("tracker");
                    let s = state.entry(object.name_any()).or_default();
                    let status = object.status.as_ref();
                    s.phase = status
                        .and_then(|st| st.phase)
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_default();
                    let ready = status.is_some_and(|st| {
                        st.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    });
                    if ready && s.ready.is_none() && object.metadata.deletion_timestamp.is_none() {
                        s.ready = Some(now);
                    }
                    let ours = object.finalizers().iter().any(|f| f == FINALIZER);
                    if (deleted || (object.metadata.deletion_timestamp.is_some() && !ours))
                        && s.released.is_none()
                    {
                        s.released = Some(now);
                    }
                    if deleted {
                        s.gone = true;
                    }
                }
            });
            Self { seen, task }
        }

        fn update(&self, name: &str, f: impl FnOnce(&mut Seen)) {
            f(self
                .seen
                .lock()
                .expect("tracker")
                .entry(name.to_string())
                .or_default());
        }

        fn snapshot(&self) -> HashMap<String, Seen> {
            self.seen.lock().expect("tracker").clone()
        }

        /// Waits until `done` holds for every one of `names`; returns how many it holds for.
        async fn wait_all(
            &self,
            names: &[String],
            timeout: Duration,
            done: impl Fn(&Seen) -> bool,
        ) -> usize {
            let deadline = Instant::now() + timeout;
            loop {
                let count = {
                    let seen = self.seen.lock().expect("tracker");
                    names
                        .iter()
                        .filter(|n| seen.get(*n).is_some_and(&done))
                        .count()
                };
                if count == names.len() || Instant::now() > deadline {
                    return count;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    impl Drop for Tracker {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    // ---------------------------------------------------------------- measurements

    /// CPU seconds of each process over a phase.
    #[derive(Clone, Copy, Debug, Default, Serialize)]
    struct Cpu {
        controller: f64,
        moto: f64,
        /// microburst (the +40 ms proxy), when there is one.
        latency_proxy: f64,
        /// This process: the mocked API server, the recording proxy, the watch.
        harness: f64,
    }

    struct Processes {
        controller: u32,
        moto: u32,
        latency_proxy: Option<u32>,
    }

    impl Processes {
        fn read(&self) -> (ProcStat, ProcStat, ProcStat, ProcStat) {
            (
                procstat::read(Some(self.controller)).unwrap_or_default(),
                procstat::read(Some(self.moto)).unwrap_or_default(),
                self.latency_proxy
                    .and_then(|p| procstat::read(Some(p)))
                    .unwrap_or_default(),
                procstat::read(None).unwrap_or_default(),
            )
        }
    }

    /// The start of a phase: readings to subtract at its end.
    struct PhaseStart {
        at: Instant,
        metrics: MetricsSnapshot,
        procs: (ProcStat, ProcStat, ProcStat, ProcStat),
        tap: usize,
        log: u64,
    }

    /// What one phase (create → Ready, resync, teardown) cost.
    #[derive(Clone, Debug, Default, Serialize)]
    struct Phase {
        /// Seconds from the first request of the phase to the last pipeline done.
        wall_seconds: f64,
        /// Per pipeline, seconds from its request to it being done.
        per_pipeline_p50: Option<f64>,
        per_pipeline_p95: Option<f64>,
        per_pipeline_max: Option<f64>,
        done: usize,
        /// The controller's `tap_aws_calls_total` over the phase.
        calls: u64,
        reads: u64,
        writes: u64,
        calls_by_operation: BTreeMap<String, u64>,
        /// From the recording proxy: requests (retries included), not-found answers to reads, retries.
        proxy_requests: usize,
        proxy_reads: usize,
        proxy_not_found_reads: usize,
        proxy_retries: usize,
        proxy_errors: usize,
        /// Mean upstream time per call, ms.
        proxy_mean_latency_ms: f64,
        /// Per signing service: (reads, not-found reads, writes).
        proxy_by_service: BTreeMap<String, (usize, usize, usize)>,
        /// Not-found reads per operation.
        proxy_not_found_by_operation: BTreeMap<String, usize>,
        /// Per `service operation`: (requests, summed upstream seconds, slowest upstream seconds).
        proxy_upstream_by_operation: BTreeMap<String, (usize, f64, f64)>,
        /// Summed upstream time of every request, seconds (over the wall time: requests in flight).
        proxy_upstream_seconds: f64,
        cpu: Cpu,
        /// Controller VmHWM over the phase (reset at its start), MiB.
        controller_peak_rss_mib: f64,
        /// Controller VmRSS at the end of the phase, MiB.
        controller_rss_end_mib: f64,
        /// Of it, mapped files (the binary's code), MiB.
        controller_rss_file_end_mib: f64,
        /// Largest VmRSS sampled every 100 ms during the phase, MiB.
        controller_rss_sampled_max_mib: f64,
        reconciles: u64,
        reconcile_errors: u64,
        /// Sum of `aws_calls` over the controller's `reconciled` log lines of the phase.
        logged_aws_calls: u64,
        logged_reconciles: usize,
    }

    async fn phase_start(
        controller: &ControllerProcess,
        procs: &Processes,
        tap: &AwsTap,
        sampler: &RssSampler,
    ) -> anyhow::Result<PhaseStart> {
        procstat::reset_peak(procs.controller);
        sampler.take_max();
        Ok(PhaseStart {
            metrics: controller.metrics().await?,
            procs: procs.read(),
            tap: tap.mark(),
            log: controller.log_mark(),
            at: Instant::now(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn phase_end(
        start: &PhaseStart,
        end_at: Instant,
        per_pipeline: Vec<f64>,
        done: usize,
        controller: &ControllerProcess,
        procs: &Processes,
        tap: &AwsTap,
        sampler: &RssSampler,
    ) -> anyhow::Result<Phase> {
        let metrics = controller.metrics().await?;
        let (c, m, l, h) = procs.read();
        let calls = metrics.calls_since(&start.metrics);
        let total: u64 = calls.values().sum();
        let writes: u64 = calls
            .iter()
            .filter(|((_, op), _)| !is_read(op))
            .map(|(_, n)| n)
            .sum();
        let proxied: Vec<Call> = tap.calls_since(start.tap);
        let mut by_service: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
        let mut not_found_by_operation: BTreeMap<String, usize> = BTreeMap::new();
        let mut upstream: BTreeMap<String, (usize, f64, f64)> = BTreeMap::new();
        for call in &proxied {
            let secs = call.latency.as_secs_f64();
            let op = upstream
                .entry(format!("{} {}", call.service, call.operation))
                .or_default();
            op.0 += 1;
            op.1 += secs;
            op.2 = op.2.max(secs);
            let entry = by_service.entry(call.service.clone()).or_default();
            if call.read {
                entry.0 += 1;
                if call.not_found {
                    entry.1 += 1;
                    *not_found_by_operation
                        .entry(format!("{} {}", call.service, call.operation))
                        .or_default() += 1;
                }
            } else {
                entry.2 += 1;
            }
        }
        let logged: Vec<serde_json::Value> = controller
            .log_lines(start.log, None)
            .into_iter()
            .filter(|l| l["fields"]["message"] == "reconciled")
            .collect();
        Ok(Phase {
            wall_seconds: (end_at - start.at).as_secs_f64(),
            per_pipeline_p50: quantile(&per_pipeline, 0.5),
            per_pipeline_p95: quantile(&per_pipeline, 0.95),
            per_pipeline_max: quantile(&per_pipeline, 1.0),
            done,
            calls: total,
            reads: total - writes,
            writes,
            calls_by_operation: calls
                .into_iter()
                .map(|((s, o), n)| (format!("{s} {o}"), n))
                .collect(),
            proxy_requests: proxied.len(),
            proxy_reads: proxied.iter().filter(|c| c.read).count(),
            proxy_not_found_reads: proxied.iter().filter(|c| c.read && c.not_found).count(),
            proxy_retries: proxied.iter().filter(|c| c.attempt > 1).count(),
            proxy_errors: proxied
                .iter()
                .filter(|c| c.status >= 400 && !c.not_found)
                .count(),
            proxy_mean_latency_ms: if proxied.is_empty() {
                0.0
            } else {
                proxied
                    .iter()
                    .map(|c| c.latency.as_secs_f64() * 1000.0)
                    .sum::<f64>()
                    / proxied.len() as f64
            },
            proxy_by_service: by_service,
            proxy_not_found_by_operation: not_found_by_operation,
            proxy_upstream_seconds: proxied.iter().map(|c| c.latency.as_secs_f64()).sum(),
            proxy_upstream_by_operation: upstream,
            cpu: Cpu {
                controller: c.cpu_seconds - start.procs.0.cpu_seconds,
                moto: m.cpu_seconds - start.procs.1.cpu_seconds,
                latency_proxy: l.cpu_seconds - start.procs.2.cpu_seconds,
                harness: h.cpu_seconds - start.procs.3.cpu_seconds,
            },
            controller_peak_rss_mib: c.hwm_mib,
            controller_rss_end_mib: c.rss_mib,
            controller_rss_file_end_mib: c.rss_file_mib,
            controller_rss_sampled_max_mib: sampler.take_max().max(c.rss_mib),
            reconciles: metrics.reconciles_finished - start.metrics.reconciles_finished,
            reconcile_errors: metrics.reconcile_errors - start.metrics.reconcile_errors,
            logged_aws_calls: logged
                .iter()
                .filter_map(|l| l["fields"]["aws_calls"].as_u64())
                .sum(),
            logged_reconciles: logged.len(),
        })
    }

    // ---------------------------------------------------------------- one fleet

    #[derive(Clone, Debug, Serialize)]
    struct Fleet {
        label: String,
        pipelines: usize,
        latency_ms: u64,
        concurrency: usize,
        resources_per_pipeline: usize,
        controller_ready_seconds: f64,
        create: Option<Phase>,
        resync: Option<Phase>,
        teardown: Option<Phase>,
        /// VmHWM of the controller over the whole run (max of the phases'), MiB.
        controller_peak_rss_mib: f64,
        /// Controller VmRSS a few seconds after the teardown, MiB.
        controller_rss_after_teardown_settled_mib: Option<f64>,
        moto_peak_rss_mib: f64,
        images_pushed: usize,
        controller_exit_code: Option<i32>,
        controller_log: String,
        log_warnings: usize,
        log_errors: usize,
        errors: Vec<String>,
    }

    struct Env {
        binary: PathBuf,
        dir: PathBuf,
        controller_env: Vec<(String, String)>,
    }

    async fn fleet(
        env: &Env,
        label: &str,
        pipelines: usize,
        latency_ms: u64,
        concurrency: usize,
        full: bool,
    ) -> anyhow::Result<Fleet> {
        eprintln!(
            "== {label}: {pipelines} pipelines, +{latency_ms} ms per call, concurrency {concurrency}{}",
            if full { ", then resync and teardown" } else { "" }
        );
        let moto = Emulator::start_kind(EmulatorKind::Moto).await?;
        warm_up(&moto, &moto.endpoint).await;
        let latency = if latency_ms > 0 {
            Some(LatencyProxy::start(&moto.endpoint, latency_ms).await?)
        } else {
            None
        };
        if let Some(latency) = &latency {
            warm_up(&moto, &latency.endpoint).await;
        }
        let upstream = latency
            .as_ref()
            .map(|l| l.endpoint.clone())
            .unwrap_or_else(|| moto.endpoint.clone());
        let tap = AwsTap::start(
            &upstream,
            Some(ImagePush {
                ecr: aws_sdk_ecr::Client::new(&moto.sdk_config()),
                tag: TAG.into(),
            }),
        )
        .await?;
        let kube = kube_for(label, &env.dir).await?;
        let api: Api<TransactionPipeline> = Api::namespaced(kube.client.clone(), NAMESPACE);
        let tracker = Tracker::start(api.clone());
        let log = env.dir.join(format!("{label}-controller.log"));
        let mut controller = ControllerProcess::start(&ControllerConfig {
            binary: &env.binary,
            kubeconfig: &kube.kubeconfig,
            aws_endpoint: &tap.endpoint,
            region: &moto.region,
            concurrency,
            resync_seconds: RESYNC_SECONDS,
            namespace: NAMESPACE,
            log: log.clone(),
            cwd: &env.dir,
            env: &env.controller_env,
        })?;
        let controller_ready = controller.wait_ready(Duration::from_secs(60)).await?;
        let procs = Processes {
            controller: controller.pid(),
            moto: moto.pid(),
            latency_proxy: latency.as_ref().map(|l| l.pid()),
        };
        let sampler = RssSampler::start(procs.controller, Duration::from_millis(100));
        let mut result = Fleet {
            label: label.into(),
            pipelines,
            latency_ms,
            concurrency,
            resources_per_pipeline: offline_stack(&spec_yaml("x1")).resources.len(),
            controller_ready_seconds: controller_ready.as_secs_f64(),
            create: None,
            resync: None,
            teardown: None,
            controller_peak_rss_mib: 0.0,
            controller_rss_after_teardown_settled_mib: None,
            moto_peak_rss_mib: 0.0,
            images_pushed: 0,
            controller_exit_code: None,
            controller_log: log.display().to_string(),
            log_warnings: 0,
            log_errors: 0,
            errors: Vec::new(),
        };
        let names: Vec<String> = (0..pipelines).map(|i| format!("scale-{i:03}")).collect();
        let timeout = Duration::from_secs(120 + 6 * pipelines as u64);

        // Create → all Ready.
        let start = phase_start(&controller, &procs, &tap, &sampler).await?;
        for (i, name) in names.iter().enumerate() {
            api.create(&PostParams::default(), &pipeline(name, &format!("s{i:03}")))
                .await
                .with_context(|| format!("creating {name}"))?;
            tracker.update(name, |s| s.created = Some(Instant::now()));
        }
        let ready = tracker
            .wait_all(&names, timeout, |s| s.ready.is_some())
            .await;
        if ready < pipelines {
            result
                .errors
                .push(format!("{ready} of {pipelines} Ready after {timeout:?}"));
        }
        let seen = tracker.snapshot();
        let end = seen
            .values()
            .filter_map(|s| s.ready)
            .max()
            .unwrap_or(start.at);
        let per: Vec<f64> = seen
            .values()
            .filter_map(|s| Some((s.ready? - s.created?).as_secs_f64()))
            .collect();
        if let Err(e) = controller.wait_reconciled(0, Duration::from_secs(60)).await {
            result.errors.push(format!("after Ready: {e}"));
        }
        let create =
            phase_end(&start, end, per, ready, &controller, &procs, &tap, &sampler).await?;
        eprintln!(
            "   all Ready in {:.1} s ({} calls per pipeline; controller {:.1} s CPU, moto {:.1} s)",
            create.wall_seconds,
            create.calls / pipelines.max(1) as u64,
            create.cpu.controller,
            create.cpu.moto
        );
        result.controller_peak_rss_mib = create.controller_peak_rss_mib;
        result.create = Some(create);

        if full && ready == pipelines {
            // One resync of every pipeline at once.
            let start = phase_start(&controller, &procs, &tap, &sampler).await?;
            let requested_at = chrono::Utc::now().to_rfc3339();
            for name in &names {
                api.patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {
                        "finalizers": [FINALIZER, BENCH_FINALIZER],
                        "annotations": {RECONCILE_REQUEST_ANNOTATION: requested_at},
                    }})),
                )
                .await
                .with_context(|| format!("requesting a reconcile of {name}"))?;
            }
            let wanted = start.metrics.reconciles_finished + pipelines as u64;
            let done = match controller.wait_reconciled(wanted, timeout).await {
                Ok(m) => (m.reconciles_finished - start.metrics.reconciles_finished) as usize,
                Err(e) => {
                    result.errors.push(format!("resync: {e}"));
                    0
                }
            };
            let resync = phase_end(
                &start,
                Instant::now(),
                Vec::new(),
                done,
                &controller,
                &procs,
                &tap,
                &sampler,
            )
            .await?;
            eprintln!(
                "   resync of all in {:.1} s: {} reads, {} writes",
                resync.wall_seconds, resync.reads, resync.writes
            );
            result.controller_peak_rss_mib = result
                .controller_peak_rss_mib
                .max(resync.controller_peak_rss_mib);
            result.resync = Some(resync);

            // Teardown: until the controller's finalizer is gone from every pipeline.
            let start = phase_start(&controller, &procs, &tap, &sampler).await?;
            for name in &names {
                api.delete(name, &DeleteParams::default())
                    .await
                    .with_context(|| format!("deleting {name}"))?;
                tracker.update(name, |s| s.delete_requested = Some(Instant::now()));
            }
            let released = tracker
                .wait_all(&names, timeout, |s| s.released.is_some())
                .await;
            if released < pipelines {
                result.errors.push(format!(
                    "{released} of {pipelines} torn down after {timeout:?}"
                ));
            }
            let seen = tracker.snapshot();
            let end = seen
                .values()
                .filter_map(|s| s.released)
                .max()
                .unwrap_or(start.at);
            let per: Vec<f64> = seen
                .values()
                .filter_map(|s| Some((s.released? - s.delete_requested?).as_secs_f64()))
                .collect();
            if let Err(e) = controller.wait_reconciled(0, Duration::from_secs(60)).await {
                result.errors.push(format!("after teardown: {e}"));
            }
            let teardown = phase_end(
                &start,
                end,
                per,
                released,
                &controller,
                &procs,
                &tap,
                &sampler,
            )
            .await?;
            eprintln!(
                "   torn down in {:.1} s ({} calls per pipeline)",
                teardown.wall_seconds,
                teardown.calls / pipelines.max(1) as u64
            );
            result.controller_peak_rss_mib = result
                .controller_peak_rss_mib
                .max(teardown.controller_peak_rss_mib);
            result.teardown = Some(teardown);
            // Let the pipelines go (the bench's finalizer was the last one).
            for name in &names {
                let _ = api
                    .patch(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"finalizers": []}})),
                    )
                    .await;
            }
            let gone = tracker
                .wait_all(&names, Duration::from_secs(60), |s| s.gone)
                .await;
            if gone < pipelines {
                result
                    .errors
                    .push(format!("{gone} of {pipelines} pipelines gone after 60 s"));
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            result.controller_rss_after_teardown_settled_mib =
                procstat::read(Some(procs.controller)).map(|s| s.rss_mib);
        } else if real_kubeconfig().is_some() {
            // Leave the cluster as found: the pipelines go with their finalizers dropped (moto is
            // thrown away with everything in it).
            for name in &names {
                let _ = api
                    .patch(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"finalizers": []}})),
                    )
                    .await;
                let _ = api.delete(name, &DeleteParams::default()).await;
            }
        }
        result.moto_peak_rss_mib = procstat::read(Some(procs.moto))
            .map(|s| s.hwm_mib)
            .unwrap_or(f64::NAN);
        result.images_pushed = tap.pushed().len();
        drop(sampler);
        result.controller_exit_code = controller.stop(Duration::from_secs(120));
        for line in controller.log_lines(0, None) {
            match line["level"].as_str() {
                Some("WARN") => result.log_warnings += 1,
                Some("ERROR") => result.log_errors += 1,
                _ => {}
            }
        }
        drop(tracker);
        Ok(result)
    }

    // ---------------------------------------------------------------- one stack, critical path

    /// Per resource: the calls its turn made (exact at concurrency 1) and how long it took.
    #[derive(Default)]
    struct PerResource {
        counter: OnceLock<CallCounter>,
        started: Mutex<HashMap<ResourceId, u64>>,
        done: Mutex<HashMap<ResourceId, (u64, Duration)>>,
        /// When the walk began, and each resource's turn (start, end) since then.
        origin: OnceLock<Instant>,
        spans: Mutex<HashMap<ResourceId, (Duration, Duration)>>,
    }

    impl PerResource {
        fn since_origin(&self) -> Duration {
            self.origin.get().map(Instant::elapsed).unwrap_or_default()
        }
    }

    impl Progress for PerResource {
        fn started(&self, id: &ResourceId) {
            let calls = self.counter.get().map(CallCounter::total).unwrap_or(0);
            self.started.lock().unwrap().insert(id.clone(), calls);
            let at = self.since_origin();
            self.spans.lock().unwrap().insert(id.clone(), (at, at));
        }

        fn finished(&self, report: &ResourceReport) {
            let now = self.counter.get().map(CallCounter::total).unwrap_or(0);
            let before = self
                .started
                .lock()
                .unwrap()
                .remove(&report.id)
                .unwrap_or(now);
            self.done
                .lock()
                .unwrap()
                .insert(report.id.clone(), (now - before, report.elapsed));
            let at = self.since_origin();
            if let Some(span) = self.spans.lock().unwrap().get_mut(&report.id) {
                span.1 = at;
            }
        }
    }

    #[derive(Clone, Debug, Serialize)]
    struct Walk {
        concurrency: usize,
        wall_seconds: f64,
        calls: u64,
        walks: usize,
        converged: bool,
    }

    #[derive(Clone, Debug, Serialize)]
    struct SingleStack {
        latency_ms: u64,
        /// The binary: create → Ready of one pipeline.
        binary_graph: Option<Fleet>,
        binary_sequential: Option<Fleet>,
        /// The engine in-process (same drivers and executor), through the same proxies.
        engine_graph: Walk,
        engine_sequential: Walk,
        /// Round trips on the longest dependency chain (calls per resource from the sequential walk).
        critical_path_round_trips: u64,
        critical_path: Vec<String>,
        /// Sum of the sequential walk's per-resource times along that chain.
        critical_path_seconds: f64,
        /// The same chain in the graph walk: when each of its resources became ready (its last
        /// dependency done), started and finished, in ms from the walk's start.
        critical_path_in_graph: Vec<ChainStep>,
        /// Mean time of one call through the proxies, ms.
        mean_call_ms: f64,
        /// Per resource: (calls, seconds) in the sequential walk.
        per_resource: BTreeMap<String, (u64, f64)>,
    }

    #[derive(Clone, Debug, Serialize)]
    struct ChainStep {
        resource: String,
        ready_ms: f64,
        started_ms: f64,
        finished_ms: f64,
    }

    /// The chain (found on the `cp1` stack) in the graph walk of `stack` (the `cp8` one).
    fn chain_timeline(
        stack: &tap_controller::desired::Stack,
        chain: &[ResourceId],
        spans: &HashMap<ResourceId, (Duration, Duration)>,
    ) -> Vec<ChainStep> {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        chain
            .iter()
            .filter_map(|id| {
                let id = ResourceId {
                    kind: id.kind,
                    name: id.name.replace("tap-cp1-", "tap-cp8-"),
                };
                let resource = stack.resources.iter().find(|r| r.id == id)?;
                let (started, finished) = *spans.get(&id)?;
                let ready = resource
                    .depends_on
                    .iter()
                    .filter_map(|d| spans.get(d).map(|s| s.1))
                    .max()
                    .unwrap_or_default();
                Some(ChainStep {
                    resource: id.to_string(),
                    ready_ms: ms(ready),
                    started_ms: ms(started),
                    finished_ms: ms(finished),
                })
            })
            .collect()
    }

    /// The outbound rate limits the controller runs with: its `TAP_AWS_RATE_LIMITS` (`--controller-env`),
    /// else its default. The engine in-process uses the same, so that the two walks compare.
    fn controller_rate_limits(env: &Env) -> anyhow::Result<tap_controller::aws::RateLimits> {
        let value = env
            .controller_env
            .iter()
            .rev()
            .find(|(k, _)| k == "TAP_AWS_RATE_LIMITS")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        value
            .parse()
            .map_err(|e: String| anyhow::anyhow!("TAP_AWS_RATE_LIMITS={value}: {e}"))
    }

    async fn engine_walk(
        env: &Env,
        moto: &Emulator,
        endpoint: &str,
        suffix: &str,
        concurrency: usize,
        progress: Arc<PerResource>,
    ) -> anyhow::Result<Walk> {
        let sdk = moto
            .sdk_config()
            .to_builder()
            .endpoint_url(endpoint)
            .build();
        let engine = Engine::new(sdk, concurrency, BTreeMap::new())
            .with_client_options(tap_controller::aws::ClientOptions {
                rate_limits: controller_rate_limits(env)?,
                ..Default::default()
            })
            .with_progress(progress.clone());
        let aws = engine.aws(None).await?;
        let _ = progress.counter.set(aws.calls.clone());
        let spec = spec(suffix);
        let owner = format!("{NAMESPACE}/{suffix}");
        let pipeline = Pipeline {
            owner: &owner,
            spec: &spec,
        };
        let mut memory = DriftMemory::default();
        let before = aws.calls.total();
        let started = Instant::now();
        let _ = progress.origin.set(started);
        let mut walks = 0;
        let mut converged = false;
        while walks < 5 && !converged {
            walks += 1;
            converged = engine
                .reconcile(&pipeline, Mode::Apply, &mut memory)
                .await?
                .converged();
        }
        Ok(Walk {
            concurrency,
            wall_seconds: started.elapsed().as_secs_f64(),
            calls: aws.calls.total() - before,
            walks,
            converged,
        })
    }

    async fn single_stack(
        env: &Env,
        latency_ms: u64,
        concurrency: usize,
    ) -> anyhow::Result<SingleStack> {
        eprintln!(
            "== one fresh stack, +{latency_ms} ms per call: the engine in-process, critical path"
        );
        let moto = Emulator::start_kind(EmulatorKind::Moto).await?;
        warm_up(&moto, &moto.endpoint).await;
        let latency = LatencyProxy::start(&moto.endpoint, latency_ms).await?;
        warm_up(&moto, &latency.endpoint).await;
        let tap = AwsTap::start(
            &latency.endpoint,
            Some(ImagePush {
                ecr: aws_sdk_ecr::Client::new(&moto.sdk_config()),
                tag: TAG.into(),
            }),
        )
        .await?;
        let sequential_progress = Arc::new(PerResource::default());
        let mark = tap.mark();
        let engine_sequential = engine_walk(
            env,
            &moto,
            &tap.endpoint,
            "cp1",
            1,
            sequential_progress.clone(),
        )
        .await?;
        let calls = tap.calls_since(mark);
        let mean_call_ms = calls
            .iter()
            .map(|c| c.latency.as_secs_f64() * 1000.0)
            .sum::<f64>()
            / calls.len().max(1) as f64;
        let graph_progress = Arc::new(PerResource::default());
        let engine_graph = engine_walk(
            env,
            &moto,
            &tap.endpoint,
            "cp8",
            concurrency,
            graph_progress.clone(),
        )
        .await?;
        let stack = offline_stack(&spec_yaml("cp1"));
        let done = sequential_progress.done.lock().unwrap().clone();
        let (round_trips, chain) =
            critical_path(&stack, |id| done.get(id).map(|d| d.0 as f64).unwrap_or(0.0));
        let critical_path_in_graph = chain_timeline(
            &offline_stack(&spec_yaml("cp8")),
            &chain,
            &graph_progress.spans.lock().unwrap(),
        );
        let critical_path_seconds = chain
            .iter()
            .filter_map(|id| done.get(id).map(|d| d.1.as_secs_f64()))
            .sum();
        drop(tap);
        drop(latency);
        drop(moto);
        let binary_graph = fleet(env, "single-graph", 1, latency_ms, concurrency, false).await?;
        let binary_sequential = fleet(env, "single-sequential", 1, latency_ms, 1, false).await?;
        Ok(SingleStack {
            latency_ms,
            binary_graph: Some(binary_graph),
            binary_sequential: Some(binary_sequential),
            engine_graph,
            engine_sequential,
            critical_path_round_trips: round_trips as u64,
            critical_path: chain
                .iter()
                .map(|id| format!("{id} ({})", done.get(id).map(|d| d.0).unwrap_or(0)))
                .collect(),
            critical_path_seconds,
            critical_path_in_graph,
            mean_call_ms,
            per_resource: done
                .iter()
                .map(|(id, (calls, t))| (id.to_string(), (*calls, t.as_secs_f64())))
                .collect(),
        })
    }

    // ---------------------------------------------------------------- report

    #[derive(Clone, Debug, Serialize)]
    struct Target {
        target: String,
        measured: String,
        met: Option<bool>,
    }

    #[derive(Clone, Debug, Serialize)]
    struct RssCurve {
        /// (pipelines, controller peak RSS MiB) over the fleets at 0 ms.
        peak: Vec<(usize, f64)>,
        after_ready: Vec<(usize, f64)>,
        /// (pipelines, of the RSS after Ready the mapped files' MiB: code, not heap).
        after_ready_file: Vec<(usize, f64)>,
        peak_fit_mib_per_pipeline: Option<f64>,
        peak_fit_intercept_mib: Option<f64>,
        after_ready_fit_mib_per_pipeline: Option<f64>,
        after_ready_fit_intercept_mib: Option<f64>,
        /// The largest fleet: RSS after Ready, after the resync, after the teardown (and settled).
        largest: Option<LargestRss>,
    }

    /// Pipelines, then RSS (MiB) after Ready, after the resync, after the teardown, and settled.
    type LargestRss = (usize, f64, Option<f64>, Option<f64>, Option<f64>);

    #[derive(Clone, Debug, Serialize)]
    struct Report {
        started: String,
        kubernetes: String,
        controller_binary: String,
        controller_profile: String,
        controller_env: Vec<(String, String)>,
        cores: usize,
        moto_version: String,
        quick: bool,
        total_seconds: f64,
        fleets: Vec<Fleet>,
        latency_fleet: Option<Fleet>,
        single_stack: Option<SingleStack>,
        rss_curve: RssCurve,
        targets: Vec<Target>,
    }

    fn fmt_s(v: Option<f64>) -> String {
        v.map(|v| format!("{v:.1} s")).unwrap_or_else(|| "–".into())
    }

    fn per(n: u64, d: usize) -> f64 {
        n as f64 / d.max(1) as f64
    }

    fn mark(met: Option<bool>) -> &'static str {
        match met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "n/a",
        }
    }

    fn targets(report: &Report) -> Vec<Target> {
        let mut t = Vec::new();
        let hundred = report.fleets.iter().find(|f| f.pipelines == 100);
        let create = hundred.and_then(|f| f.create.as_ref());
        let resync = hundred.and_then(|f| f.resync.as_ref());
        let teardown = hundred.and_then(|f| f.teardown.as_ref());
        let mut add = |target: &str, measured: Option<String>, met: Option<bool>| {
            t.push(Target {
                target: target.into(),
                measured: measured.unwrap_or_else(|| "not run".into()),
                met,
            })
        };
        add(
            "100 pipelines: nothing → all Ready < 45 s",
            create.map(|c| format!("{:.1} s", c.wall_seconds)),
            create.map(|c| c.done == 100 && c.wall_seconds < 45.0),
        );
        add(
            "… within 1.3× of moto's CPU time for the same calls",
            create.map(|c| {
                format!(
                    "{:.2}× ({:.1} s wall / {:.1} s moto CPU)",
                    c.wall_seconds / c.cpu.moto,
                    c.wall_seconds,
                    c.cpu.moto
                )
            }),
            create.map(|c| c.wall_seconds <= 1.3 * c.cpu.moto),
        );
        let slow = report
            .latency_fleet
            .as_ref()
            .and_then(|f| f.create.as_ref());
        add(
            "100 pipelines, +40 ms per call: all Ready < 90 s",
            slow.map(|c| format!("{:.1} s", c.wall_seconds)),
            slow.map(|c| c.done == 100 && c.wall_seconds < 90.0),
        );
        add(
            "per-pipeline create → Ready explained by the endpoint's throughput (p95 ≤ 1.3 × moto CPU of the phase)",
            create.map(|c| {
                format!(
                    "p50 {} / p95 {}; moto busy {:.0} % of the phase, controller {:.0} % of one core",
                    fmt_s(c.per_pipeline_p50),
                    fmt_s(c.per_pipeline_p95),
                    100.0 * c.cpu.moto / c.wall_seconds,
                    100.0 * c.cpu.controller / c.wall_seconds
                )
            }),
            create.and_then(|c| c.per_pipeline_p95.map(|p| p <= 1.3 * c.cpu.moto)),
        );
        add(
            "AWS calls per fresh pipeline < 91",
            create.map(|c| format!("{:.1}", per(c.calls, 100))),
            create.map(|c| per(c.calls, 100) < 91.0),
        );
        add(
            "controller peak RSS < 64 MiB with 100 pipelines",
            hundred.map(|f| format!("{:.1} MiB", f.controller_peak_rss_mib)),
            hundred.map(|f| f.controller_peak_rss_mib < MIB_TARGET),
        );
        add(
            "RSS growth per pipeline (line over 1, 20, 50, 100)",
            report.rss_curve.peak_fit_mib_per_pipeline.map(|s| {
                format!(
                    "peak {:.2} MiB/pipeline + {:.1} MiB; after Ready {:.2} MiB/pipeline + {:.1} MiB",
                    s,
                    report.rss_curve.peak_fit_intercept_mib.unwrap_or(f64::NAN),
                    report
                        .rss_curve
                        .after_ready_fit_mib_per_pipeline
                        .unwrap_or(f64::NAN),
                    report.rss_curve.after_ready_fit_intercept_mib.unwrap_or(f64::NAN)
                )
            }),
            None,
        );
        let resources = hundred.map(|f| f.resources_per_pipeline).unwrap_or(30);
        add(
            "resync: at most about one read per managed resource (≤ 1.1)",
            resync.map(|r| {
                format!(
                    "{:.2} ({:.1} reads for {resources} resources)",
                    per(r.reads, 100 * resources),
                    per(r.reads, 100)
                )
            }),
            resync.map(|r| per(r.reads, 100 * resources) <= 1.1),
        );
        add(
            "resync: zero writes",
            resync.map(|r| r.writes.to_string()),
            resync.map(|r| r.writes == 0),
        );
        add(
            "full resync of all 100 < 10 s",
            resync.map(|r| format!("{:.1} s", r.wall_seconds)),
            resync.map(|r| r.done == 100 && r.wall_seconds < 10.0),
        );
        let single = report.single_stack.as_ref();
        let graph_ready = single
            .and_then(|s| s.binary_graph.as_ref())
            .and_then(|f| f.create.as_ref());
        let seq_ready = single
            .and_then(|s| s.binary_sequential.as_ref())
            .and_then(|f| f.create.as_ref());
        add(
            "one fresh stack, +40 ms per call: converged < 1.2 s (controller: create → Ready)",
            graph_ready.map(|c| {
                format!(
                    "{:.2} s (engine walk alone {:.2} s)",
                    c.wall_seconds,
                    single
                        .map(|s| s.engine_graph.wall_seconds)
                        .unwrap_or(f64::NAN)
                )
            }),
            graph_ready.map(|c| c.done == 1 && c.wall_seconds < 1.2),
        );
        add(
            "graph executor ≥ 3.5× faster than concurrency 1",
            graph_ready.zip(seq_ready).map(|(g, s)| {
                format!(
                    "{:.1}× (controller {:.2} s vs {:.2} s; engine {:.1}×)",
                    s.wall_seconds / g.wall_seconds,
                    g.wall_seconds,
                    s.wall_seconds,
                    single
                        .map(|x| x.engine_sequential.wall_seconds / x.engine_graph.wall_seconds)
                        .unwrap_or(f64::NAN)
                )
            }),
            graph_ready
                .zip(seq_ready)
                .map(|(g, s)| s.wall_seconds / g.wall_seconds >= 3.5),
        );
        add(
            "critical path (round trips on the longest dependency chain) against the wall time",
            single.map(|s| {
                format!(
                    "{} round trips × {:.0} ms = {:.2} s; engine graph walk {:.2} s",
                    s.critical_path_round_trips,
                    s.mean_call_ms,
                    s.critical_path_round_trips as f64 * s.mean_call_ms / 1000.0,
                    s.engine_graph.wall_seconds
                )
            }),
            None,
        );
        add(
            "teardown of 100 pipelines < 60 s",
            teardown.map(|c| format!("{:.1} s", c.wall_seconds)),
            teardown.map(|c| c.done == 100 && c.wall_seconds < 60.0),
        );
        add(
            "RSS flat after Ready (after resync and after teardown ≤ after Ready + 2 MiB)",
            hundred.and_then(|f| {
                let ready = f.create.as_ref()?.controller_rss_end_mib;
                let resync = f.resync.as_ref()?.controller_rss_end_mib;
                let teardown = f.teardown.as_ref()?.controller_rss_end_mib;
                Some(format!("{ready:.1} → {resync:.1} → {teardown:.1} MiB"))
            }),
            hundred.and_then(|f| {
                let ready = f.create.as_ref()?.controller_rss_end_mib;
                let resync = f.resync.as_ref()?.controller_rss_end_mib;
                let teardown = f.teardown.as_ref()?.controller_rss_end_mib;
                Some(resync <= ready + 2.0 && teardown <= ready + 2.0)
            }),
        );
        add(
            "the `reconciled … aws_calls=` log field counts this pipeline's calls only (logged sum = calls, resync of 100)",
            resync.map(|r| {
                format!(
                    "logged {} over {} reconciles, made {}",
                    r.logged_aws_calls, r.logged_reconciles, r.calls
                )
            }),
            resync.map(|r| r.logged_aws_calls == r.calls),
        );
        add(
            "not-found answers among a fresh pipeline's reads",
            create.map(|c| {
                format!(
                    "{:.1} of {:.1} reads",
                    per(c.proxy_not_found_reads as u64, 100),
                    per(c.proxy_reads as u64, 100)
                )
            }),
            None,
        );
        t
    }

    fn markdown(r: &Report) -> String {
        let mut s = String::new();
        let mut line = |l: String| {
            s.push_str(&l);
            s.push('\n');
        };
        line(format!(
            "## Scale benchmark ({}, {} cores)\n",
            r.started, r.cores
        ));
        line(format!(
            "Kubernetes API: {}. Controller: `{}` ({}){}. AWS: moto {} on loopback, each scenario on a fresh moto; \
             the recording proxy pushes the images as each repository is created. Run took {:.0} s.\n",
            r.kubernetes,
            r.controller_binary,
            r.controller_profile,
            if r.controller_env.is_empty() {
                String::new()
            } else {
                format!(
                    ", env {}",
                    r.controller_env
                        .iter()
                        .map(|(k, v)| format!("`{k}={v}`"))
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            },
            r.moto_version,
            r.total_seconds
        ));
        line("### Targets\n".into());
        line("| target | measured | |".into());
        line("|---|---|---|".into());
        for t in &r.targets {
            line(format!(
                "| {} | {} | {} |",
                t.target,
                t.measured,
                mark(t.met)
            ));
        }
        line(String::new());
        line("### Create → all Ready\n".into());
        line("| pipelines | added latency | concurrency | create → all Ready | per pipeline p50 / p95 | AWS calls per pipeline (reads / writes) | not-found reads per pipeline | controller CPU | moto CPU | all Ready / moto CPU | harness CPU | controller peak RSS | RSS after Ready |".into());
        line("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|".into());
        let mut fleets: Vec<&Fleet> = r.fleets.iter().collect();
        fleets.extend(r.latency_fleet.iter());
        for f in &fleets {
            let Some(c) = &f.create else { continue };
            line(format!(
                "| {} | {} ms | {} | {:.1} s{} | {} / {} | {:.1} ({:.1} / {:.1}) | {:.1} | {:.1} s | {:.1} s | {:.2} | {:.1} s{} | {:.1} MiB | {:.1} MiB |",
                f.pipelines,
                f.latency_ms,
                f.concurrency,
                c.wall_seconds,
                if c.done < f.pipelines { format!(" ({} of {} Ready)", c.done, f.pipelines) } else { String::new() },
                fmt_s(c.per_pipeline_p50),
                fmt_s(c.per_pipeline_p95),
                per(c.calls, f.pipelines),
                per(c.reads, f.pipelines),
                per(c.writes, f.pipelines),
                per(c.proxy_not_found_reads as u64, f.pipelines),
                c.cpu.controller,
                c.cpu.moto,
                c.wall_seconds / c.cpu.moto,
                c.cpu.harness,
                if f.latency_ms > 0 { format!(" (+ microburst {:.1} s)", c.cpu.latency_proxy) } else { String::new() },
                c.controller_peak_rss_mib,
                c.controller_rss_end_mib,
            ));
        }
        line(String::new());
        line("### Resync and teardown\n".into());
        line("| pipelines | full resync | reads per resource | reads / writes per pipeline | logged `aws_calls` / made | controller CPU (resync) | moto CPU (resync) | RSS after resync | teardown | per pipeline p50 / p95 | calls per pipeline | controller CPU (teardown) | moto CPU (teardown) | RSS after teardown (3 s later) | peak RSS, whole run |".into());
        line("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|".into());
        for f in &r.fleets {
            let (Some(rs), Some(td)) = (&f.resync, &f.teardown) else {
                continue;
            };
            line(format!(
                "| {} | {:.2} s | {:.2} | {:.1} / {:.1} | {} / {} | {:.1} s | {:.1} s | {:.1} MiB | {:.1} s | {} / {} | {:.1} | {:.1} s | {:.1} s | {:.1} MiB ({}) | {:.1} MiB |",
                f.pipelines,
                rs.wall_seconds,
                per(rs.reads, f.pipelines * f.resources_per_pipeline),
                per(rs.reads, f.pipelines),
                per(rs.writes, f.pipelines),
                rs.logged_aws_calls,
                rs.calls,
                rs.cpu.controller,
                rs.cpu.moto,
                rs.controller_rss_end_mib,
                td.wall_seconds,
                fmt_s(td.per_pipeline_p50),
                fmt_s(td.per_pipeline_p95),
                per(td.calls, f.pipelines),
                td.cpu.controller,
                td.cpu.moto,
                td.controller_rss_end_mib,
                f.controller_rss_after_teardown_settled_mib
                    .map(|v| format!("{v:.1} MiB"))
                    .unwrap_or_else(|| "–".into()),
                f.controller_peak_rss_mib,
            ));
        }
        line(String::new());
        line("### Controller RSS curve\n".into());
        line("| pipelines | peak RSS (VmHWM) | RSS after Ready | of it, mapped files (code) | of it, heap and stacks |".into());
        line("|---:|---:|---:|---:|---:|".into());
        for (((n, peak), (_, ready)), (_, file)) in r
            .rss_curve
            .peak
            .iter()
            .zip(&r.rss_curve.after_ready)
            .zip(&r.rss_curve.after_ready_file)
        {
            line(format!(
                "| {n} | {peak:.1} MiB | {ready:.1} MiB | {file:.1} MiB | {:.1} MiB |",
                ready - file
            ));
        }
        if let (Some(a), Some(b)) = (
            r.rss_curve.peak_fit_mib_per_pipeline,
            r.rss_curve.peak_fit_intercept_mib,
        ) {
            line(format!(
                "\nLine fit (least squares): peak ≈ {b:.1} MiB + {a:.3} MiB × pipelines; after Ready ≈ {:.1} MiB + {:.3} MiB × pipelines.",
                r.rss_curve.after_ready_fit_intercept_mib.unwrap_or(f64::NAN),
                r.rss_curve.after_ready_fit_mib_per_pipeline.unwrap_or(f64::NAN)
            ));
        }
        if let Some((n, ready, resync, teardown, settled)) = r.rss_curve.largest {
            let f = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "–".into());
            line(format!(
                "{n} pipelines: after Ready {ready:.1} MiB → after one resync {} MiB → after teardown {} MiB (3 s later {} MiB).",
                f(resync),
                f(teardown),
                f(settled)
            ));
        }
        line(String::new());
        if let Some(single) = &r.single_stack {
            line(format!(
                "### One fresh stack, +{} ms per call\n",
                single.latency_ms
            ));
            line("| run | wall | AWS calls | walks |".into());
            line("|---|---:|---:|---:|".into());
            for (name, f) in [
                (
                    "controller, graph executor: create → Ready",
                    &single.binary_graph,
                ),
                (
                    "controller, concurrency 1: create → Ready",
                    &single.binary_sequential,
                ),
            ] {
                if let Some(c) = f.as_ref().and_then(|f| f.create.as_ref()) {
                    line(format!(
                        "| {name} (concurrency {}) | {:.2} s | {} | {} |",
                        f.as_ref().map(|f| f.concurrency).unwrap_or(0),
                        c.wall_seconds,
                        c.calls,
                        c.reconciles
                    ));
                }
            }
            for (name, w) in [
                ("engine in-process, graph executor", &single.engine_graph),
                (
                    "engine in-process, concurrency 1",
                    &single.engine_sequential,
                ),
            ] {
                line(format!(
                    "| {name} (concurrency {}) | {:.2} s | {} | {} |",
                    w.concurrency, w.wall_seconds, w.calls, w.walks
                ));
            }
            line(format!(
                "\nCritical path: {} round trips on the longest dependency chain × {:.1} ms per call = {:.2} s \
                 (the sequential walk spent {:.2} s on those resources); the graph walk took {:.2} s.\n\nChain (calls per resource): {}\n",
                single.critical_path_round_trips,
                single.mean_call_ms,
                single.critical_path_round_trips as f64 * single.mean_call_ms / 1000.0,
                single.critical_path_seconds,
                single.engine_graph.wall_seconds,
                single.critical_path.join(" → ")
            ));
            line(
                "The same chain in the graph walk (ms from the walk's start; ready: its last dependency done):\n"
                    .to_string(),
            );
            line(
                "| resource | ready | started | finished | turn |\n|---|---:|---:|---:|---:|"
                    .to_string(),
            );
            for step in &single.critical_path_in_graph {
                line(format!(
                    "| {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                    step.resource,
                    step.ready_ms,
                    step.started_ms,
                    step.finished_ms,
                    step.finished_ms - step.started_ms
                ));
            }
            line(String::new());
        }
        // Calls by operation for the largest fleet.
        if let Some(f) = r.fleets.iter().max_by_key(|f| f.pipelines) {
            line(format!(
                "### AWS calls by operation, per pipeline ({} pipelines)\n",
                f.pipelines
            ));
            line("| operation | fresh → Ready | resync | teardown |".into());
            line("|---|---:|---:|---:|".into());
            let mut ops: Vec<&String> = Vec::new();
            for p in [&f.create, &f.resync, &f.teardown].into_iter().flatten() {
                ops.extend(p.calls_by_operation.keys());
            }
            ops.sort();
            ops.dedup();
            let get = |p: &Option<Phase>, op: &str| {
                p.as_ref()
                    .and_then(|p| p.calls_by_operation.get(op))
                    .map(|n| format!("{:.2}", per(*n, f.pipelines)))
                    .unwrap_or_default()
            };
            for op in ops {
                line(format!(
                    "| {op} | {} | {} | {} |",
                    get(&f.create, op),
                    get(&f.resync, op),
                    get(&f.teardown, op)
                ));
            }
            if let Some(c) = &f.create {
                line(String::new());
                line("Not-found answers to a fresh pipeline's reads, per pipeline (recording proxy):\n".into());
                line("| service operation | not found |".into());
                line("|---|---:|".into());
                for (op, n) in &c.proxy_not_found_by_operation {
                    line(format!("| {op} | {:.2} |", per(*n as u64, f.pipelines)));
                }
            }
            for (name, phase) in [
                ("fresh → Ready", &f.create),
                ("resync", &f.resync),
                ("teardown", &f.teardown),
            ] {
                let Some(p) = phase else { continue };
                line(String::new());
                line(format!(
                    "Where the endpoint's time goes, {name} ({} requests, {:.1} s summed upstream time over {:.1} s wall: {:.1} in flight on average; moto CPU {:.1} s), the 12 largest sums:\n",
                    p.proxy_requests,
                    p.proxy_upstream_seconds,
                    p.wall_seconds,
                    p.proxy_upstream_seconds / p.wall_seconds.max(1e-9),
                    p.cpu.moto
                ));
                line("| service operation | requests | summed upstream | mean | slowest |".into());
                line("|---|---:|---:|---:|---:|".into());
                let mut ops: Vec<(&String, &(usize, f64, f64))> =
                    p.proxy_upstream_by_operation.iter().collect();
                ops.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
                for (op, (n, sum, max)) in ops.into_iter().take(12) {
                    line(format!(
                        "| {op} | {n} | {sum:.1} s | {:.1} ms | {:.0} ms |",
                        sum * 1000.0 / *n as f64,
                        max * 1000.0
                    ));
                }
            }
            line(String::new());
        }
        let problems: Vec<String> = r
            .fleets
            .iter()
            .chain(r.latency_fleet.iter())
            .flat_map(|f| f.errors.iter().map(move |e| format!("{}: {e}", f.label)))
            .collect();
        if !problems.is_empty() {
            line("### Problems\n".into());
            for p in problems {
                line(format!("- {p}"));
            }
        }
        s
    }

    fn moto_version() -> String {
        std::process::Command::new(
            std::env::var("TAP_MOTO_PYTHON").unwrap_or_else(|_| "python3".into()),
        )
        .args(["-c", "import moto; print(moto.__version__)"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
    }

    pub async fn run() -> anyhow::Result<()> {
        let options = options()?;
        let began = Instant::now();
        let started = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
        let kubernetes = match real_kubeconfig() {
            Some(k) => format!("the cluster KUBECONFIG names ({})", k.display()),
            None => {
                "mocked (tap_controller::k8s::fake_api over HTTP on loopback, one per scenario)"
                    .to_string()
            }
        };
        eprintln!("Kubernetes API: {kubernetes}");
        let dir = options
            .out
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        std::fs::create_dir_all(&dir)?;
        let dir = dir.canonicalize()?;
        if real_kubeconfig().is_some() {
            prepare_cluster(&Client::try_default().await?).await?;
        }
        let (binary, profile) = controller_binary()?;
        let env = Env {
            binary: binary.clone(),
            dir: dir.clone(),
            controller_env: options.controller_env.clone(),
        };
        let single_stack = if options.single {
            Some(single_stack(&env, 40, options.concurrency).await?)
        } else {
            None
        };
        let mut fleets = Vec::new();
        for &n in &options.pipelines {
            fleets.push(fleet(&env, &format!("fleet-{n}"), n, 0, options.concurrency, true).await?);
        }
        let latency_fleet = if options.latency_pipelines > 0 {
            let n = options.latency_pipelines;
            Some(
                fleet(
                    &env,
                    &format!("fleet-{n}-40ms"),
                    n,
                    40,
                    options.concurrency,
                    false,
                )
                .await?,
            )
        } else {
            None
        };
        let curve_points = |f: &dyn Fn(&Fleet) -> Option<f64>| -> Vec<(usize, f64)> {
            fleets
                .iter()
                .filter_map(|x| f(x).map(|v| (x.pipelines, v)))
                .collect()
        };
        let peak = curve_points(&|f| Some(f.controller_peak_rss_mib));
        let after_ready = curve_points(&|f| f.create.as_ref().map(|c| c.controller_rss_end_mib));
        let after_ready_file =
            curve_points(&|f| f.create.as_ref().map(|c| c.controller_rss_file_end_mib));
        let fit = |points: &[(usize, f64)]| {
            line_fit(
                &points
                    .iter()
                    .map(|(n, v)| (*n as f64, *v))
                    .collect::<Vec<_>>(),
            )
        };
        let peak_fit = fit(&peak);
        let ready_fit = fit(&after_ready);
        let largest = fleets.iter().max_by_key(|f| f.pipelines).and_then(|f| {
            Some((
                f.pipelines,
                f.create.as_ref()?.controller_rss_end_mib,
                f.resync.as_ref().map(|p| p.controller_rss_end_mib),
                f.teardown.as_ref().map(|p| p.controller_rss_end_mib),
                f.controller_rss_after_teardown_settled_mib,
            ))
        });
        let mut report = Report {
            started,
            kubernetes,
            controller_binary: binary.display().to_string(),
            controller_profile: profile,
            controller_env: options.controller_env.clone(),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            moto_version: moto_version(),
            quick: options.quick,
            total_seconds: began.elapsed().as_secs_f64(),
            fleets,
            latency_fleet,
            single_stack,
            rss_curve: RssCurve {
                peak,
                after_ready,
                after_ready_file,
                peak_fit_mib_per_pipeline: peak_fit.map(|f| f.0),
                peak_fit_intercept_mib: peak_fit.map(|f| f.1),
                after_ready_fit_mib_per_pipeline: ready_fit.map(|f| f.0),
                after_ready_fit_intercept_mib: ready_fit.map(|f| f.1),
                largest,
            },
            targets: Vec::new(),
        };
        report.targets = targets(&report);
        let md = markdown(&report);
        println!("\n{md}");
        std::fs::write(&options.out, serde_json::to_string_pretty(&report)?)?;
        let md_path = options.out.with_extension("md");
        std::fs::write(&md_path, &md)?;
        eprintln!(
            "wrote {} and {} (controller logs and kubeconfigs beside them)",
            options.out.display(),
            md_path.display()
        );
        Ok(())
    }
}
