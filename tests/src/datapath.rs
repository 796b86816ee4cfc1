//! The data path of a deployed stack, locally: [`DataPath::start`] converges a pipeline with the
//! `tap-controller` CLI against moto, reads the deployed configuration back through the AWS SDK, turns on
//! moto's IAM enforcement and runs each function's real binary ([`crate::lambda_runtime_api`]) with its
//! deployed environment and its role's credentials. Then, each from the deployed configuration only:
//!
//! * [`DataPath::post`] is API Gateway for the deployed REST API: route, `apiKeyRequired` and the usage
//!   plan's keys, the request validator (required parameters, the body against the model's JSON schema), the
//!   function's resource policy, the AWS_PROXY event to the integration's function, its proxy response;
//! * [`DataPath::deliver_s3_notifications`] is S3's event notification for new objects: the deployed
//!   filter and events, the resource policy, an asynchronous invocation (2 retries, then the function's
//!   dead-letter queue, sent with the function's role);
//! * [`DataPath::run_new_executions`] is Step Functions for the executions started on the emulator: the
//!   deployed definition, run by `aws-local-stepfunctions` (`tests/datapath/run-state-machine.mjs`) with
//!   the state machine role's credentials, its Lambda tasks invoking the local functions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use aws_lambda_events::apigw::{ApiGatewayProxyRequest, ApiGatewayProxyResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::s3::S3Event;
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{json, Value};
use wildmatch::WildMatch;

use crate::lambda_runtime_api::{
    workspace_binary, FunctionSpec, LambdaApi, LocalFunction, Outcome,
};
use crate::{fake_image_manifest, Emulator, EmulatorKind};

/// The crates of the three functions (their images are built from them), in the stack's order.
pub const FUNCTIONS: [&str; 3] = ["csv-validator", "data-transformer", "notification-sender"];
/// API Gateway's payload limit.
pub const MAX_API_PAYLOAD_BYTES: usize = 10 * 1024 * 1024;

/// What the test pipeline declares (the rest is the CRD's defaults).
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    pub suffix: String,
    pub retry_max_attempts: u32,
    pub retry_interval_seconds: u32,
    pub retry_backoff_rate: f64,
    pub transformer_timeout_seconds: u32,
    pub transformer_memory_mb: u32,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            suffix: "dpt".into(),
            retry_max_attempts: 2,
            retry_interval_seconds: 1,
            retry_backoff_rate: 1.5,
            transformer_timeout_seconds: 120,
            transformer_memory_mb: 1024,
        }
    }
}

impl PipelineOptions {
    pub fn manifest(&self) -> String {
        format!(
            r#"apiVersion: tap.dev/v1alpha1
kind: TransactionPipeline
metadata: {{name: datapath, namespace: default}}
spec:
  environmentSuffix: {suffix}
  functions:
    csvValidator: {{image: {{tag: v1}}, memoryMb: 512, timeoutSeconds: 30}}
    dataTransformer: {{image: {{tag: v1}}, memoryMb: {memory}, timeoutSeconds: {timeout}}}
    notificationSender: {{image: {{tag: v1}}, timeoutSeconds: 30}}
  stateMachine:
    retry: {{maxAttempts: {attempts}, intervalSeconds: {interval}, backoffRate: {backoff}}}
  api: {{stageName: prod, throttle: {{rateLimit: 100, burstLimit: 200}}, quota: {{limit: 10000, period: DAY}}}}
"#,
            suffix = self.suffix,
            memory = self.transformer_memory_mb,
            timeout = self.transformer_timeout_seconds,
            attempts = self.retry_max_attempts,
            interval = self.retry_interval_seconds,
            backoff = self.retry_backoff_rate,
        )
    }
}

/// A function as deployed (read back from the emulator).
#[derive(Clone, Debug)]
pub struct DeployedFunction {
    pub name: String,
    pub arn: String,
    pub role_arn: String,
    pub environment: BTreeMap<String, String>,
    pub timeout_seconds: i32,
    pub memory_mb: i32,
    pub image_uri: String,
    pub dead_letter_arn: Option<String>,
    /// The resource-based policy (who may invoke it).
    pub policy: Value,
}

/// One S3 event notification to a function, as deployed.
#[derive(Clone, Debug)]
pub struct NotificationTarget {
    pub id: String,
    pub function_arn: String,
    pub events: Vec<String>,
    pub prefix: String,
    pub suffix: String,
}

/// The REST API's upload method, as deployed.
#[derive(Clone, Debug, Default)]
pub struct DeployedApi {
    pub id: String,
    pub stage: String,
    pub resource_id: String,
    pub resource_path: String,
    pub http_method: String,
    pub api_key_required: bool,
    /// `(validateRequestBody, validateRequestParameters)` of the method's request validator.
    pub validator: Option<(bool, bool)>,
    pub request_parameters: BTreeMap<String, bool>,
    /// Content type → model name.
    pub request_models: BTreeMap<String, String>,
    /// Model name → its JSON schema.
    pub models: BTreeMap<String, Value>,
    pub integration_type: String,
    pub integration_uri: String,
    /// API keys (value, enabled) bound through a usage plan to this API's stage.
    pub stage_keys: Vec<(String, String, bool)>,
}

/// The state machine, as deployed.
#[derive(Clone, Debug)]
pub struct DeployedStateMachine {
    pub arn: String,
    pub definition: String,
    pub role_arn: String,
    pub machine_type: String,
}

#[derive(Clone, Debug)]
pub struct Deployed {
    pub account: String,
    /// By crate name (the repository of the function's image).
    pub functions: BTreeMap<String, DeployedFunction>,
    pub state_machine: DeployedStateMachine,
    pub bucket: String,
    pub notifications: Vec<NotificationTarget>,
    pub api: DeployedApi,
    pub transactions_table: String,
    pub status_table: String,
    pub topic_arn: String,
    /// The queue URL as the emulator answers it.
    pub dlq_url: String,
}

/// An HTTP request to the API, as a client sends it.
#[derive(Clone, Debug, Default)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpRequest {
    pub fn post(path: &str, body: impl Into<String>) -> Self {
        HttpRequest {
            method: "POST".into(),
            path: path.into(),
            headers: vec![],
            body: body.into(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP response from the API.
#[derive(Clone, Debug, Default)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
    /// Whether the request reached the function.
    pub invoked: bool,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn gateway(status: u16, message: &str) -> Self {
        HttpResponse {
            status,
            headers: BTreeMap::from([("content-type".into(), "application/json".into())]),
            body: json!({ "message": message }).to_string(),
            invoked: false,
        }
    }
}

/// One S3 notification delivered to a function.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub key: String,
    pub function: String,
    /// Every attempt's outcome (Lambda retries a failed asynchronous invocation twice).
    pub attempts: Vec<Outcome>,
    /// The dead-letter message id, when every attempt failed.
    pub dead_letter: Option<String>,
}

impl Delivery {
    pub fn succeeded(&self) -> bool {
        matches!(self.attempts.last(), Some(Outcome::Response(_)))
    }
}

/// One event of a local state machine run.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct RunEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub timestamp: u64,
    pub state: Option<String>,
    pub error: Option<String>,
    pub cause: Option<Value>,
}

/// One execution of the deployed definition, run locally.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionRun {
    #[serde(default)]
    pub execution_arn: String,
    #[serde(default)]
    pub input: Value,
    pub valid: bool,
    pub validation_errors: Vec<String>,
    pub status: Option<String>,
    #[serde(default)]
    pub output: Value,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub cause: Option<Value>,
    pub events: Vec<RunEvent>,
}

impl ExecutionRun {
    /// How many times a state ran: once when entered, once more for each retry.
    pub fn attempts(&self, state: &str) -> usize {
        self.events
            .iter()
            .filter(|e| e.state.as_deref() == Some(state))
            .filter(|e| e.kind == "StateEntered" || e.kind == "StateRetried")
            .count()
    }

    /// The states entered, in order (retries not repeated).
    pub fn path(&self) -> Vec<String> {
        let mut path: Vec<String> = Vec::new();
        for e in &self.events {
            if e.kind == "StateEntered" {
                let name = e.state.clone().unwrap_or_default();
                if path.last() != Some(&name) {
                    path.push(name);
                }
            }
        }
        path
    }

    /// The errors of a state's failed attempts, in order.
    pub fn failures(&self, state: &str) -> Vec<&RunEvent> {
        self.events
            .iter()
            .filter(|e| e.kind == "StateFailed" && e.state.as_deref() == Some(state))
            .collect()
    }

    /// Milliseconds between each failed attempt of `state` and its retry.
    pub fn retry_gaps_ms(&self, state: &str) -> Vec<u64> {
        let mut gaps = Vec::new();
        let mut failed_at = None;
        for e in &self.events {
            if e.state.as_deref() != Some(state) {
                continue;
            }
            match e.kind.as_str() {
                "StateFailed" => failed_at = Some(e.timestamp),
                "StateRetried" => {
                    if let Some(t) = failed_at.take() {
                        gaps.push(e.timestamp.saturating_sub(t));
                    }
                }
                _ => {}
            }
        }
        gaps
    }
}

/// What one upload went through.
#[derive(Debug)]
pub struct Flow {
    pub response: HttpResponse,
    pub deliveries: Vec<Delivery>,
    pub runs: Vec<ExecutionRun>,
}

/// A converged stack on moto with IAM enforced, and its functions running locally.
pub struct DataPath {
    pub emulator: Emulator,
    pub workdir: PathBuf,
    pub options: PipelineOptions,
    /// `apply --output json`'s status.
    pub status: Value,
    pub deployed: Deployed,
    /// An administrator of the account (policy `*`), for the test's own reads and writes.
    pub admin: SdkConfig,
    /// Role ARN → the credentials of a session of that role.
    pub role_credentials: BTreeMap<String, Credentials>,
    pub functions: BTreeMap<String, Arc<LocalFunction>>,
    pub lambda_api: LambdaApi,
    /// A queue subscribed to the topic (the test's, like an operator's mailbox).
    pub subscriber_queue_url: String,
    pub converge_time: Duration,
    seen_objects: Mutex<BTreeSet<String>>,
    seen_executions: Mutex<BTreeSet<String>>,
    request_ids: AtomicU64,
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().ok()?.modified().ok()
        };
        newest = newest.max(time);
    }
    newest
}

/// A workspace binary that is not older than its sources (a stale one would test old code).
pub fn fresh_binary(name: &str, sources: &[&str]) -> anyhow::Result<PathBuf> {
    let binary = workspace_binary(name)?;
    let built = std::fs::metadata(&binary)?.modified()?;
    let root = workspace_root();
    for source in sources {
        if let Some(changed) = newest_mtime(&root.join(source)) {
            ensure!(
                changed <= built,
                "{} is older than {source}: rebuild it (`cargo build -p {name}`; `cargo test --workspace` does)",
                binary.display()
            );
        }
    }
    Ok(binary)
}

fn sdk_config(endpoint: &str, region: &str, credentials: Credentials) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(endpoint)
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .build()
}

fn s3_client(config: &SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(config)
            .force_path_style(true)
            .build(),
    )
}

async fn run_cli(
    binary: &Path,
    manifest: &Path,
    emulator: &Emulator,
) -> anyhow::Result<(i32, Value)> {
    let out = tokio::process::Command::new(binary)
        .args(["apply", "-f"])
        .arg(manifest)
        .args(["--output", "json", "--timeout-seconds", "60"])
        .env("AWS_ENDPOINT_URL", &emulator.endpoint)
        .env("AWS_REGION", &emulator.region)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .env("RUST_BACKTRACE", "0")
        .output()
        .await
        .with_context(|| format!("running {}", binary.display()))?;
    let code = out.status.code().unwrap_or(-1);
    let status = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "tap-controller apply exited {code} without a JSON status: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((code, status))
}

/// Whether a resource-based policy lets `service` invoke `function_arn` for `source_arn`.
pub fn policy_allows_invoke(
    policy: &Value,
    service: &str,
    function_arn: &str,
    source_arn: &str,
    source_account: &str,
) -> bool {
    let as_list = |v: &Value| -> Vec<String> {
        match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => vec![],
        }
    };
    let statements = policy["Statement"].as_array().cloned().unwrap_or_default();
    statements.iter().any(|s| {
        let condition = &s["Condition"];
        let arn_condition = ["ArnLike", "ArnEquals"].iter().all(|op| {
            as_list(&condition[op]["AWS:SourceArn"])
                .iter()
                .all(|pattern| WildMatch::new(pattern).matches(source_arn))
        });
        let account_condition = as_list(&condition["StringEquals"]["AWS:SourceAccount"])
            .iter()
            .all(|a| a == source_account);
        s["Effect"] == "Allow"
            && as_list(&s["Action"])
                .iter()
                .any(|a| WildMatch::new(a).matches("lambda:InvokeFunction"))
            && as_list(&s["Principal"]["Service"])
                .iter()
                .any(|p| p == service)
            && as_list(&s["Resource"])
                .iter()
                .any(|r| WildMatch::new(r).matches(function_arn))
            && arn_condition
            && account_condition
    })
}

impl DataPath {
    /// Converges the pipeline with the CLI on a new moto, reads the deployed stack back, enforces IAM and
    /// starts the functions.
    pub async fn start(options: PipelineOptions) -> anyhow::Result<DataPath> {
        let controller = fresh_binary("tap-controller", &["controller/src"])?;
        let mut binaries = BTreeMap::new();
        for f in FUNCTIONS {
            let sources = [format!("lambdas/{f}/src"), "lambdas/shared/src".to_string()];
            let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
            binaries.insert(f, fresh_binary(f, &sources)?);
        }
        let emulator = Emulator::start_kind(EmulatorKind::Moto).await?;
        // Step Functions here is the local interpreter: moto only records executions.
        emulator
            .post_json(
                "/moto-api/config",
                r#"{"stepfunctions":{"execute_state_machine":false}}"#,
            )
            .await?;
        let workdir = std::env::temp_dir().join(format!(
            "tap-datapath-{}-{}",
            std::process::id(),
            emulator.endpoint.rsplit(':').next().unwrap_or_default()
        ));
        std::fs::create_dir_all(&workdir)?;
        let manifest = workdir.join("pipeline.yaml");
        std::fs::write(&manifest, options.manifest())?;

        // 1. Converge: apply waits for the images, they are pushed, apply converges.
        let started = Instant::now();
        let (code, status) = run_cli(&controller, &manifest, &emulator).await?;
        ensure!(
            code == 3,
            "the first apply should wait for images (exit 3), got {code}: {status}"
        );
        let setup = emulator.sdk_config();
        let ecr = aws_sdk_ecr::Client::new(&setup);
        for f in FUNCTIONS {
            ecr.put_image()
                .repository_name(format!("tap-{}-{f}", options.suffix))
                .image_tag("v1")
                .image_manifest(fake_image_manifest("v1"))
                .send()
                .await
                .with_context(|| format!("pushing the {f} image"))?;
        }
        let (code, status) = run_cli(&controller, &manifest, &emulator).await?;
        ensure!(
            code == 0 && status["phase"] == "Ready",
            "the second apply should converge (exit 0, Ready), got {code}: {status}"
        );
        let converge_time = started.elapsed();

        // 2. The deployed configuration, read back through the SDK.
        let deployed = read_deployed(&setup, &status).await?;

        // 3. Principals: an administrator for the test, and a session of each role, as Lambda and Step
        //    Functions assume them (the emulator cannot act as their service principals, so the test does,
        //    before enforcement starts).
        let iam = aws_sdk_iam::Client::new(&setup);
        iam.create_user().user_name("datapath-admin").send().await?;
        iam.put_user_policy()
            .user_name("datapath-admin")
            .policy_name("administrator")
            .policy_document(
                json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
                    .to_string(),
            )
            .send()
            .await?;
        let key = iam
            .create_access_key()
            .user_name("datapath-admin")
            .send()
            .await?
            .access_key
            .context("CreateAccessKey returned no key")?;
        let admin_credentials = Credentials::new(
            key.access_key_id(),
            key.secret_access_key(),
            None,
            None,
            "datapath-admin",
        );
        let admin = sdk_config(&emulator.endpoint, &emulator.region, admin_credentials);
        let sts = aws_sdk_sts::Client::new(&setup);
        let mut roles: BTreeSet<String> = deployed
            .functions
            .values()
            .map(|f| f.role_arn.clone())
            .collect();
        roles.insert(deployed.state_machine.role_arn.clone());
        let mut role_credentials = BTreeMap::new();
        for role in roles {
            let c = sts
                .assume_role()
                .role_arn(&role)
                .role_session_name("datapath")
                .send()
                .await
                .with_context(|| format!("assuming {role}"))?
                .credentials
                .context("AssumeRole returned no credentials")?;
            role_credentials.insert(
                role.clone(),
                Credentials::new(
                    c.access_key_id(),
                    c.secret_access_key(),
                    Some(c.session_token().to_string()),
                    None,
                    "assumed-role",
                ),
            );
        }
        // The operator's subscription to the topic.
        let sqs = aws_sdk_sqs::Client::new(&setup);
        let subscriber_queue_url = sqs
            .create_queue()
            .queue_name("datapath-operator")
            .send()
            .await?
            .queue_url
            .context("CreateQueue returned no URL")?;
        let subscriber_arn = format!(
            "arn:aws:sqs:{}:{}:datapath-operator",
            emulator.region, deployed.account
        );
        aws_sdk_sns::Client::new(&setup)
            .subscribe()
            .topic_arn(&deployed.topic_arn)
            .protocol("sqs")
            .endpoint(&subscriber_arn)
            .send()
            .await?;

        // 4. IAM enforcement from here on: every call is checked against its principal's policies.
        emulator.post_json("/moto-api/reset-auth", "0").await?;

        // 5. The functions, each with its deployed environment and its role.
        let mut functions = BTreeMap::new();
        for (crate_name, f) in &deployed.functions {
            let credentials = role_credentials[&f.role_arn].clone();
            let function = LocalFunction::start(FunctionSpec {
                name: f.name.clone(),
                arn: f.arn.clone(),
                binary: binaries[crate_name.as_str()].clone(),
                environment: f.environment.clone(),
                memory_mb: f.memory_mb,
                timeout: Duration::from_secs(u64::try_from(f.timeout_seconds).unwrap_or(3)),
                credentials,
                region: emulator.region.clone(),
                endpoint: emulator.endpoint.clone(),
                log_file: workdir.join(format!("{crate_name}.log")),
            })
            .await?;
            functions.insert(crate_name.clone(), function);
        }
        let lambda_api = LambdaApi::start(
            functions.values().cloned().collect(),
            vec![role_credentials[&deployed.state_machine.role_arn].clone()],
            &emulator.region,
            &emulator.endpoint,
        )
        .await?;
        Ok(DataPath {
            emulator,
            workdir,
            options,
            status,
            deployed,
            admin,
            role_credentials,
            functions,
            lambda_api,
            subscriber_queue_url,
            converge_time,
            seen_objects: Mutex::default(),
            seen_executions: Mutex::default(),
            request_ids: AtomicU64::new(1),
        })
    }

    /// SDK configuration for the emulator with `credentials`.
    pub fn sdk_config(&self, credentials: &Credentials) -> SdkConfig {
        sdk_config(
            &self.emulator.endpoint,
            &self.emulator.region,
            credentials.clone(),
        )
    }

    /// SDK configuration with the credentials of a function's role (by crate name).
    pub fn function_role_config(&self, function: &str) -> SdkConfig {
        let role = &self.deployed.functions[function].role_arn;
        self.sdk_config(&self.role_credentials[role])
    }

    pub fn s3(&self) -> aws_sdk_s3::Client {
        s3_client(&self.admin)
    }

    pub fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.admin)
    }

    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.admin)
    }

    pub fn sfn(&self) -> aws_sdk_sfn::Client {
        aws_sdk_sfn::Client::new(&self.admin)
    }

    pub fn function(&self, name: &str) -> &Arc<LocalFunction> {
        &self.functions[name]
    }

    /// The invoke path of the upload method: `/<stage><resource>`.
    pub fn upload_path(&self) -> String {
        format!(
            "/{}{}",
            self.deployed.api.stage, self.deployed.api.resource_path
        )
    }

    /// An API key bound to the stage through a usage plan (value), if any.
    pub fn api_key(&self) -> Option<String> {
        self.deployed
            .api
            .stage_keys
            .iter()
            .find(|(_, _, enabled)| *enabled)
            .map(|(_, value, _)| value.clone())
    }

    /// API Gateway for the deployed REST API.
    pub async fn post(&self, request: &HttpRequest) -> anyhow::Result<HttpResponse> {
        let api = &self.deployed.api;
        if request.body.len() > MAX_API_PAYLOAD_BYTES {
            return Ok(HttpResponse::gateway(413, "Request Too Long"));
        }
        if request.path != self.upload_path()
            || !request.method.eq_ignore_ascii_case(&api.http_method)
        {
            return Ok(HttpResponse::gateway(403, "Missing Authentication Token"));
        }
        let mut api_key_id = None;
        if api.api_key_required {
            let sent = request.header_value("x-api-key");
            match api
                .stage_keys
                .iter()
                .find(|(_, value, enabled)| *enabled && Some(value.as_str()) == sent)
            {
                Some((id, _, _)) => api_key_id = Some(id.clone()),
                None => return Ok(HttpResponse::gateway(403, "Forbidden")),
            }
        }
        if let Some((validate_body, validate_parameters)) = api.validator {
            if validate_parameters {
                let missing: Vec<String> = api
                    .request_parameters
                    .iter()
                    .filter(|(_, required)| **required)
                    .filter_map(|(name, _)| name.strip_prefix("method.request.header."))
                    .filter(|header| request.header_value(header).is_none())
                    .map(str::to_string)
                    .collect();
                if !missing.is_empty() {
                    return Ok(HttpResponse::gateway(
                        400,
                        &format!(
                            "Missing required request parameters: [{}]",
                            missing.join(", ")
                        ),
                    ));
                }
            }
            if validate_body {
                let media_type = request
                    .header_value("content-type")
                    .unwrap_or("application/json")
                    .split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase();
                let model = api
                    .request_models
                    .get(&media_type)
                    .or_else(|| api.request_models.get("$default"));
                if let Some(model) = model {
                    let schema = api.models.get(model).with_context(|| {
                        format!("the method names model {model}, which the API does not have")
                    })?;
                    let validator = jsonschema::validator_for(schema)
                        .map_err(|e| anyhow::anyhow!("model {model}'s schema is invalid: {e}"))?;
                    let valid = serde_json::from_str::<Value>(&request.body)
                        .is_ok_and(|body| validator.is_valid(&body));
                    if !valid {
                        return Ok(HttpResponse::gateway(400, "Invalid request body"));
                    }
                }
            }
        }
        ensure!(
            api.integration_type == "AWS_PROXY",
            "the integration is {}, not a Lambda proxy",
            api.integration_type
        );
        let function_arn = api
            .integration_uri
            .split("/functions/")
            .nth(1)
            .and_then(|rest| rest.strip_suffix("/invocations"))
            .with_context(|| {
                format!("integration URI {} names no function", api.integration_uri)
            })?;
        let Some((_, function)) = self
            .functions
            .iter()
            .find(|(_, f)| f.spec.arn == function_arn)
        else {
            // API Gateway cannot invoke a function that does not exist.
            return Ok(HttpResponse::gateway(500, "Internal server error"));
        };
        let deployed = &self
            .deployed
            .functions
            .values()
            .find(|f| f.arn == function_arn)
            .expect("same set");
        let source_arn = format!(
            "arn:aws:execute-api:{}:{}:{}/{}/{}{}",
            self.emulator.region,
            self.deployed.account,
            api.id,
            api.stage,
            api.http_method,
            api.resource_path
        );
        if !policy_allows_invoke(
            &deployed.policy,
            "apigateway.amazonaws.com",
            function_arn,
            &source_arn,
            &self.deployed.account,
        ) {
            // "Execution failed due to configuration error: Invalid permissions on Lambda function".
            return Ok(HttpResponse::gateway(500, "Internal server error"));
        }
        let mut headers = serde_json::Map::new();
        let mut multi: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in &request.headers {
            headers.insert(name.clone(), json!(value));
            multi.entry(name.clone()).or_default().push(value.clone());
        }
        let request_id = format!(
            "{:08x}-dp00-4000-8000-{:012x}",
            std::process::id(),
            self.request_ids.fetch_add(1, Ordering::SeqCst)
        );
        let event = json!({
            "resource": api.resource_path,
            "path": api.resource_path,
            "httpMethod": api.http_method,
            "headers": headers,
            "multiValueHeaders": multi,
            "queryStringParameters": null,
            "multiValueQueryStringParameters": null,
            "pathParameters": null,
            "stageVariables": null,
            "requestContext": {
                "accountId": self.deployed.account,
                "apiId": api.id,
                "resourceId": api.resource_id,
                "resourcePath": api.resource_path,
                "httpMethod": api.http_method,
                "stage": api.stage,
                "path": request.path,
                "protocol": "HTTP/1.1",
                "requestId": request_id,
                "requestTimeEpoch": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_millis() as i64,
                "domainName": format!("{}.execute-api.{}.amazonaws.com", api.id, self.emulator.region),
                "identity": {"sourceIp": "127.0.0.1", "apiKey": request.header_value("x-api-key"), "apiKeyId": api_key_id},
            },
            "body": request.body,
            "isBase64Encoded": false,
        });
        // The shape the aws_lambda_events crate defines for a REST API proxy request.
        let event: ApiGatewayProxyRequest =
            serde_json::from_value(event).context("building the API Gateway proxy event")?;
        let outcome = match function.invoke(&serde_json::to_value(&event)?).await {
            Ok(outcome) => outcome,
            Err(_) => return Ok(HttpResponse::gateway(500, "Internal server error")),
        };
        let Outcome::Response(value) = outcome else {
            let mut response = HttpResponse::gateway(502, "Internal server error");
            response.invoked = true;
            return Ok(response);
        };
        let Ok(proxy) = serde_json::from_value::<ApiGatewayProxyResponse>(value) else {
            // "Execution failed due to configuration error: Malformed Lambda proxy response".
            let mut response = HttpResponse::gateway(502, "Internal server error");
            response.invoked = true;
            return Ok(response);
        };
        let body = match proxy.body {
            Some(Body::Text(text)) => text,
            Some(Body::Binary(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            _ => String::new(),
        };
        Ok(HttpResponse {
            status: u16::try_from(proxy.status_code).unwrap_or(502),
            headers: proxy
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
                .collect(),
            body,
            invoked: true,
        })
    }

    /// Object keys in the bucket now.
    pub async fn object_keys(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut pages = self
            .s3()
            .list_objects_v2()
            .bucket(&self.deployed.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for object in page?.contents() {
                keys.extend(object.key().map(str::to_string));
            }
        }
        Ok(keys)
    }

    /// S3's notifications for the objects created since the last call.
    pub async fn deliver_s3_notifications(&self) -> anyhow::Result<Vec<Delivery>> {
        let s3 = self.s3();
        let bucket = &self.deployed.bucket;
        let mut new_objects = Vec::new();
        {
            let listed = s3.list_objects_v2().bucket(bucket).send().await?;
            let mut seen = self.seen_objects.lock().expect("not poisoned");
            for object in listed.contents() {
                let key = object.key().unwrap_or_default().to_string();
                if seen.insert(key.clone()) {
                    new_objects.push((
                        key,
                        object.size().unwrap_or(0),
                        object.e_tag().unwrap_or_default().to_string(),
                    ));
                }
            }
        }
        let mut deliveries = Vec::new();
        for (key, size, etag) in new_objects {
            for target in &self.deployed.notifications {
                let event_matches = target
                    .events
                    .iter()
                    .any(|e| WildMatch::new(e).matches("s3:ObjectCreated:Put"));
                if !event_matches
                    || !key.starts_with(&target.prefix)
                    || !key.ends_with(&target.suffix)
                {
                    continue;
                }
                let Some((crate_name, function)) = self
                    .functions
                    .iter()
                    .find(|(_, f)| f.spec.arn == target.function_arn)
                else {
                    bail!(
                        "the notification {} names {}, which is not a function of the stack",
                        target.id,
                        target.function_arn
                    );
                };
                let deployed = &self.deployed.functions[crate_name];
                let bucket_arn = format!("arn:aws:s3:::{bucket}");
                ensure!(
                    policy_allows_invoke(&deployed.policy, "s3.amazonaws.com", &deployed.arn, &bucket_arn, &self.deployed.account),
                    "{} does not allow s3.amazonaws.com to invoke it for {bucket_arn} (S3 would not deliver): {}",
                    deployed.name,
                    deployed.policy
                );
                let encoded_key: String = percent_encoding::utf8_percent_encode(&key, S3_KEY)
                    .to_string()
                    .replace("%20", "+");
                let event = json!({"Records": [{
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "awsRegion": self.emulator.region,
                    "eventTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "eventName": "ObjectCreated:Put",
                    "userIdentity": {"principalId": "AWS:DATAPATH"},
                    "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                    "responseElements": {"x-amz-request-id": "DATAPATH", "x-amz-id-2": "DATAPATH"},
                    "s3": {
                        "s3SchemaVersion": "1.0",
                        "configurationId": target.id,
                        "bucket": {"name": bucket, "ownerIdentity": {"principalId": "DATAPATH"}, "arn": bucket_arn},
                        "object": {"key": encoded_key, "size": size, "eTag": etag.trim_matches('"'), "sequencer": "0"},
                    },
                }]});
                let event: S3Event =
                    serde_json::from_value(event).context("building the S3 event")?;
                let event = serde_json::to_value(&event)?;
                // Asynchronous invocation: two retries, then the function's dead-letter queue.
                let mut attempts = Vec::new();
                for _ in 0..3 {
                    let outcome = function.invoke(&event).await?;
                    let ok = matches!(outcome, Outcome::Response(_));
                    attempts.push(outcome);
                    if ok {
                        break;
                    }
                }
                let mut dead_letter = None;
                if let (Some(Outcome::Error(error)), Some(dlq)) =
                    (attempts.last(), &deployed.dead_letter_arn)
                {
                    let queue = dlq.rsplit(':').next().unwrap_or_default();
                    let sqs = aws_sdk_sqs::Client::new(&self.function_role_config(crate_name));
                    let url = sqs
                        .get_queue_url()
                        .queue_name(queue)
                        .send()
                        .await?
                        .queue_url
                        .unwrap_or_default();
                    let attribute = |v: &str| {
                        aws_sdk_sqs::types::MessageAttributeValue::builder()
                            .data_type("String")
                            .string_value(v)
                            .build()
                            .expect("fields set")
                    };
                    let sent = sqs
                        .send_message()
                        .queue_url(url)
                        .message_body(event.to_string())
                        .message_attributes("ErrorCode", attribute("200"))
                        .message_attributes("ErrorMessage", attribute(&error.to_string()))
                        .send()
                        .await
                        .with_context(|| {
                            format!(
                                "{} sending a failed event to its dead-letter queue {dlq}",
                                deployed.name
                            )
                        })?;
                    dead_letter = sent.message_id;
                }
                deliveries.push(Delivery {
                    key: key.clone(),
                    function: crate_name.clone(),
                    attempts,
                    dead_letter,
                });
            }
        }
        Ok(deliveries)
    }

    /// Executions of the deployed state machine on the emulator, in order of start.
    pub async fn execution_arns(&self) -> anyhow::Result<Vec<String>> {
        let out = self
            .sfn()
            .list_executions()
            .state_machine_arn(&self.deployed.state_machine.arn)
            .send()
            .await?;
        let mut executions: Vec<_> = out
            .executions()
            .iter()
            .map(|e| (e.start_date().secs(), e.execution_arn().to_string()))
            .collect();
        executions.sort();
        Ok(executions.into_iter().map(|(_, arn)| arn).collect())
    }

    /// Runs the deployed definition for each execution started since the last call.
    pub async fn run_new_executions(&self) -> anyhow::Result<Vec<ExecutionRun>> {
        let mut runs = Vec::new();
        for arn in self.execution_arns().await? {
            if !self
                .seen_executions
                .lock()
                .expect("not poisoned")
                .insert(arn.clone())
            {
                continue;
            }
            // What Step Functions received with StartExecution (moto keeps it).
            let execution = self
                .sfn()
                .describe_execution()
                .execution_arn(&arn)
                .send()
                .await?;
            ensure!(
                execution.state_machine_arn() == self.deployed.state_machine.arn,
                "execution {arn} is of {}, not the stack's state machine",
                execution.state_machine_arn()
            );
            let input: Value = serde_json::from_str(execution.input().unwrap_or("{}"))?;
            let mut run = self.run_state_machine(&input).await?;
            run.execution_arn = arn;
            runs.push(run);
        }
        Ok(runs)
    }

    /// Runs the deployed definition on `input` with the state machine role's credentials.
    pub async fn run_state_machine(&self, input: &Value) -> anyhow::Result<ExecutionRun> {
        use tokio::io::AsyncWriteExt;
        let dir = workspace_root().join("tests/datapath");
        ensure!(
            dir.join("node_modules/aws-local-stepfunctions").is_dir(),
            "{}/node_modules is missing: run `npm ci` there (scripts/setup.sh does)",
            dir.display()
        );
        let credentials = &self.role_credentials[&self.deployed.state_machine.role_arn];
        let mut child = tokio::process::Command::new("node")
            .arg("run-state-machine.mjs")
            .current_dir(&dir)
            .env("AWS_REGION", &self.emulator.region)
            .env("AWS_ACCESS_KEY_ID", credentials.access_key_id())
            .env("AWS_SECRET_ACCESS_KEY", credentials.secret_access_key())
            .env(
                "AWS_SESSION_TOKEN",
                credentials.session_token().unwrap_or_default(),
            )
            .env("AWS_ENDPOINT_URL", &self.emulator.endpoint)
            .env("AWS_ENDPOINT_URL_LAMBDA", &self.lambda_api.endpoint)
            .env("NODE_NO_WARNINGS", "1")
            .env_remove("AWS_PROFILE")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting node (Node.js 20+ is needed: scripts/setup.sh)")?;
        let request = json!({"definition": self.deployed.state_machine.definition, "input": input});
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(request.to_string().as_bytes()).await?;
        drop(stdin);
        let out = child.wait_with_output().await?;
        ensure!(
            out.status.success(),
            "run-state-machine.mjs failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let mut run: ExecutionRun = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "run-state-machine.mjs printed no result: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        run.input = input.clone();
        Ok(run)
    }

    /// One upload through the whole path: the API, S3's notification, the state machine.
    pub async fn upload(&self, request: &HttpRequest) -> anyhow::Result<Flow> {
        let response = self.post(request).await?;
        let deliveries = self.deliver_s3_notifications().await?;
        let runs = self.run_new_executions().await?;
        Ok(Flow {
            response,
            deliveries,
            runs,
        })
    }

    /// A `POST /upload` of a CSV with the API key and `Content-Type: text/csv`.
    pub fn csv_request(&self, csv: &str) -> HttpRequest {
        let mut request =
            HttpRequest::post(&self.upload_path(), csv).header("Content-Type", "text/csv");
        if let Some(key) = self.api_key() {
            request = request.header("x-api-key", &key);
        }
        request
    }

    /// The transactions table's items of one upload.
    pub async fn transactions_of(
        &self,
        upload_id: &str,
    ) -> anyhow::Result<Vec<BTreeMap<String, AttributeValue>>> {
        let mut items = Vec::new();
        let mut pages = self
            .dynamodb()
            .scan()
            .table_name(&self.deployed.transactions_table)
            .filter_expression("upload_id = :u")
            .expression_attribute_values(":u", AttributeValue::S(upload_id.into()))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for item in page?.items() {
                items.push(item.clone().into_iter().collect());
            }
        }
        Ok(items)
    }

    /// The status item of an upload.
    pub async fn status_of(
        &self,
        upload_id: &str,
    ) -> anyhow::Result<Option<BTreeMap<String, AttributeValue>>> {
        let out = self
            .dynamodb()
            .get_item()
            .table_name(&self.deployed.status_table)
            .key("upload_id", AttributeValue::S(upload_id.into()))
            .consistent_read(true)
            .send()
            .await?;
        Ok(out.item.map(|i| i.into_iter().collect()))
    }

    /// Receives (and deletes) every message on a queue.
    pub async fn drain(&self, queue_url: &str) -> anyhow::Result<Vec<String>> {
        let sqs = self.sqs();
        let mut bodies = Vec::new();
        loop {
            let out = sqs
                .receive_message()
                .queue_url(queue_url)
                .max_number_of_messages(10)
                .send()
                .await?;
            if out.messages().is_empty() {
                return Ok(bodies);
            }
            for m in out.messages() {
                bodies.push(m.body().unwrap_or_default().to_string());
                if let Some(handle) = m.receipt_handle() {
                    sqs.delete_message()
                        .queue_url(queue_url)
                        .receipt_handle(handle)
                        .send()
                        .await?;
                }
            }
        }
    }

    /// The notifications published to the topic since the last call (the SNS envelopes of the subscriber).
    pub async fn notifications(&self) -> anyhow::Result<Vec<Value>> {
        let url = self.subscriber_queue_url.clone();
        Ok(self
            .drain(&url)
            .await?
            .iter()
            .filter_map(|b| serde_json::from_str(b).ok())
            .collect())
    }

    /// The dead-letter queue's messages since the last call.
    pub async fn dead_letters(&self) -> anyhow::Result<Vec<String>> {
        let url = self.deployed.dlq_url.clone();
        self.drain(&url).await
    }
}

impl Drop for DataPath {
    fn drop(&mut self) {
        if std::env::var_os("TAP_KEEP_DATAPATH").is_none() {
            let _ = std::fs::remove_dir_all(&self.workdir);
        }
    }
}

/// Characters S3 leaves as they are in an event's object key.
const S3_KEY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'*');

async fn read_deployed(config: &SdkConfig, status: &Value) -> anyhow::Result<Deployed> {
    let outputs = &status["outputs"];
    let output = |name: &str| -> anyhow::Result<String> {
        outputs[name]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("apply's outputs have no {name}: {outputs}"))
    };
    let account = aws_sdk_sts::Client::new(config)
        .get_caller_identity()
        .send()
        .await?
        .account
        .unwrap_or_default();
    let lambda = aws_sdk_lambda::Client::new(config);
    let mut functions = BTreeMap::new();
    for arn in outputs["functionArns"]
        .as_object()
        .context("apply's outputs have no functionArns")?
        .values()
        .filter_map(Value::as_str)
    {
        let f = lambda.get_function().function_name(arn).send().await?;
        let c = f
            .configuration
            .context("GetFunction returned no configuration")?;
        let image_uri = f
            .code
            .and_then(|code| code.image_uri)
            .context("the function has no image")?;
        // The image's repository names the crate it is built from: tap-<suffix>-<crate>:<tag>.
        let repository = image_uri
            .rsplit('/')
            .next()
            .and_then(|r| r.split([':', '@']).next())
            .unwrap_or_default();
        let crate_name = FUNCTIONS
            .iter()
            .find(|f| repository.ends_with(&format!("-{f}")))
            .with_context(|| {
                format!("image {image_uri} is not one of the stack's function images")
            })?;
        let policy = match lambda.get_policy().function_name(arn).send().await {
            Ok(p) => serde_json::from_str(p.policy().unwrap_or("{}"))?,
            Err(_) => json!({}),
        };
        let deployed = DeployedFunction {
            name: c.function_name().unwrap_or_default().to_string(),
            arn: c.function_arn().unwrap_or_default().to_string(),
            role_arn: c.role().unwrap_or_default().to_string(),
            environment: c
                .environment()
                .and_then(|e| e.variables())
                .map(|v| v.clone().into_iter().collect())
                .unwrap_or_default(),
            timeout_seconds: c.timeout().unwrap_or(3),
            memory_mb: c.memory_size().unwrap_or(128),
            image_uri,
            dead_letter_arn: c
                .dead_letter_config()
                .and_then(|d| d.target_arn())
                .map(str::to_string),
            policy,
        };
        ensure!(
            functions.insert(crate_name.to_string(), deployed).is_none(),
            "two functions run the {crate_name} image"
        );
    }
    let sfn = aws_sdk_sfn::Client::new(config);
    let machine = sfn
        .describe_state_machine()
        .state_machine_arn(output("stateMachineArn")?)
        .send()
        .await?;
    let state_machine = DeployedStateMachine {
        arn: machine.state_machine_arn().to_string(),
        definition: machine.definition().to_string(),
        role_arn: machine.role_arn().to_string(),
        machine_type: machine.r#type().as_str().to_string(),
    };
    let bucket = output("bucketName")?;
    let notification = s3_client(config)
        .get_bucket_notification_configuration()
        .bucket(&bucket)
        .send()
        .await?;
    let notifications = notification
        .lambda_function_configurations()
        .iter()
        .map(|c| {
            let rule = |name: &str| {
                c.filter()
                    .and_then(|f| f.key())
                    .map(|k| k.filter_rules())
                    .unwrap_or_default()
                    .iter()
                    .find(|r| {
                        r.name()
                            .is_some_and(|n| n.as_str().eq_ignore_ascii_case(name))
                    })
                    .and_then(|r| r.value())
                    .unwrap_or_default()
                    .to_string()
            };
            NotificationTarget {
                id: c.id().unwrap_or_default().to_string(),
                function_arn: c.lambda_function_arn().to_string(),
                events: c.events().iter().map(|e| e.as_str().to_string()).collect(),
                prefix: rule("prefix"),
                suffix: rule("suffix"),
            }
        })
        .collect();
    let api = read_api(config, &output("apiEndpoint")?).await?;
    let dlq_name = output("dlqUrl")?
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let dlq_url = aws_sdk_sqs::Client::new(config)
        .get_queue_url()
        .queue_name(&dlq_name)
        .send()
        .await?
        .queue_url
        .unwrap_or_default();
    Ok(Deployed {
        account,
        functions,
        state_machine,
        bucket,
        notifications,
        api,
        transactions_table: output("transactionsTable")?,
        status_table: output("statusTable")?,
        topic_arn: output("topicArn")?,
        dlq_url,
    })
}

/// The REST API behind `endpoint` (`https://<id>.execute-api.<region>.amazonaws.com/<stage><path>`).
async fn read_api(config: &SdkConfig, endpoint: &str) -> anyhow::Result<DeployedApi> {
    let rest = endpoint
        .strip_prefix("https://")
        .with_context(|| format!("API endpoint {endpoint} is not https"))?;
    let (host, path) = rest
        .split_once('/')
        .context("the API endpoint has no stage")?;
    let id = host.split('.').next().unwrap_or_default().to_string();
    let (stage, resource) = path
        .split_once('/')
        .context("the API endpoint has no resource")?;
    let resource_path = format!("/{resource}");
    let apigw = aws_sdk_apigateway::Client::new(config);
    apigw
        .get_stage()
        .rest_api_id(&id)
        .stage_name(stage)
        .send()
        .await
        .with_context(|| format!("stage {stage} of API {id}"))?;
    let resources = apigw.get_resources().rest_api_id(&id).send().await?;
    let resource = resources
        .items()
        .iter()
        .find(|r| r.path() == Some(resource_path.as_str()))
        .with_context(|| format!("API {id} has no resource {resource_path}"))?;
    let resource_id = resource.id().unwrap_or_default().to_string();
    let method = apigw
        .get_method()
        .rest_api_id(&id)
        .resource_id(&resource_id)
        .http_method("POST")
        .send()
        .await
        .with_context(|| format!("POST {resource_path} of API {id}"))?;
    let validator = match method.request_validator_id() {
        Some(vid) => {
            let v = apigw
                .get_request_validator()
                .rest_api_id(&id)
                .request_validator_id(vid)
                .send()
                .await?;
            Some((v.validate_request_body(), v.validate_request_parameters()))
        }
        None => None,
    };
    let mut models = BTreeMap::new();
    for m in apigw.get_models().rest_api_id(&id).send().await?.items() {
        let schema: Value = serde_json::from_str(m.schema().unwrap_or("{}"))
            .with_context(|| format!("model {:?}'s schema is not JSON", m.name()))?;
        models.insert(m.name().unwrap_or_default().to_string(), schema);
    }
    let integration = method
        .method_integration()
        .context("the method has no integration")?;
    let mut stage_keys = Vec::new();
    for plan in apigw.get_usage_plans().send().await?.items() {
        let bound = plan
            .api_stages()
            .iter()
            .any(|s| s.api_id() == Some(id.as_str()) && s.stage() == Some(stage));
        if !bound {
            continue;
        }
        let keys = apigw
            .get_usage_plan_keys()
            .usage_plan_id(plan.id().unwrap_or_default())
            .send()
            .await?;
        for k in keys.items() {
            let key = apigw
                .get_api_key()
                .api_key(k.id().unwrap_or_default())
                .include_value(true)
                .send()
                .await?;
            stage_keys.push((
                key.id().unwrap_or_default().to_string(),
                key.value().unwrap_or_default().to_string(),
                key.enabled(),
            ));
        }
    }
    Ok(DeployedApi {
        id,
        stage: stage.to_string(),
        resource_id,
        resource_path,
        http_method: method.http_method().unwrap_or_default().to_string(),
        api_key_required: method.api_key_required().unwrap_or(false),
        validator,
        request_parameters: method
            .request_parameters()
            .map(|p| p.clone().into_iter().collect())
            .unwrap_or_default(),
        request_models: method
            .request_models()
            .map(|m| m.clone().into_iter().collect())
            .unwrap_or_default(),
        models,
        integration_type: integration
            .r#type()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        integration_uri: integration.uri().unwrap_or_default().to_string(),
        stage_keys,
    })
}

/// A CSV of `rows` valid transactions with known exact amounts: see [`expected_amount`].
pub fn transactions_csv(rows: usize, tag: &str) -> String {
    let mut out = String::with_capacity(rows * 48 + 64);
    out.push_str("transaction_id,account_id,amount,currency,timestamp\n");
    for i in 0..rows {
        let (amount, currency, _, _) = row_amount(i);
        out.push_str(&format!(
            "{tag}-{i:06},a{:03},{amount},{currency},{}\n",
            i % 997,
            row_timestamp(i)
        ));
    }
    out
}

/// Row `i`'s amount as written, its currency, and the amount and minor units the table must hold.
fn row_amount(i: usize) -> (String, &'static str, String, i128) {
    let units = (i * 7919) % 100_000;
    match i % 4 {
        // USD written with one decimal: stored with the currency's two.
        0 => (
            format!("{units}.{}", i % 10),
            "usd",
            format!("{units}.{}0", i % 10),
            (units * 100 + (i % 10) * 10) as i128,
        ),
        1 => (
            format!("{units}.{:02}", i % 100),
            "EUR",
            format!("{units}.{:02}", i % 100),
            (units * 100 + i % 100) as i128,
        ),
        2 => (format!("{units}"), "JPY", format!("{units}"), units as i128),
        _ => (
            format!("-{units}.{:03}", i % 1000),
            "BHD",
            format!("-{units}.{:03}", i % 1000),
            -((units * 1000 + i % 1000) as i128),
        ),
    }
}

/// Row `i`'s timestamp as written: local time at +02:00.
fn row_timestamp(i: usize) -> String {
    format!(
        "2024-05-01T{:02}:{:02}:{:02}+02:00",
        (i / 3600) % 24,
        (i / 60) % 60,
        i % 60
    )
}

/// What the transactions table must hold for row `i` of [`transactions_csv`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedRow {
    pub amount: String,
    pub currency: String,
    pub amount_minor: i128,
    /// UTC, RFC 3339 with `Z`.
    pub timestamp: String,
}

pub fn expected_row(i: usize) -> ExpectedRow {
    let (_, currency, amount, amount_minor) = row_amount(i);
    let timestamp = chrono::DateTime::parse_from_rfc3339(&row_timestamp(i))
        .expect("a valid timestamp")
        .with_timezone(&chrono::Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    ExpectedRow {
        amount,
        currency: currency.to_ascii_uppercase(),
        amount_minor,
        timestamp,
    }
}
