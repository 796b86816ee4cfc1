//! A local Lambda for the data-path tests: each function's real binary (the crate its image is built from,
//! compiled for this host) runs its own `lambda_runtime` loop against a Lambda Runtime API served here
//! (`/2018-06-01/runtime/invocation/next`, `/{id}/response`, `/{id}/error`, `/init/error`, on the address
//! in `AWS_LAMBDA_RUNTIME_API`), with exactly the deployed environment and the credentials of its role.
//!
//! What Lambda does and this does too: one sandbox per function, invocations one at a time; the reserved
//! variables (`AWS_LAMBDA_FUNCTION_NAME`, `AWS_REGION`, the role's `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/
//! `AWS_SESSION_TOKEN`, ...); the deployed timeout (`Sandbox.Timedout`); a process that exits is a
//! `Runtime.ExitError` and is started again on the next invocation; the 6 MB synchronous payload limit.
//! What it does not: memory limits, the container image itself, concurrency scaling. The one addition is
//! `AWS_ENDPOINT_URL` (the emulator).
//!
//! [`LambdaApi`] serves Lambda's `Invoke` (`POST /2015-03-31/functions/{name}/invocations`) in front of the
//! functions, for the state machine interpreter: callers are identified by the access key of their SigV4
//! signature, authorized by the emulator's IAM enforcement (an `Invoke` with `InvocationType=DryRun` there,
//! with the caller's credentials), and faults can be injected (a Lambda service error after the function
//! ran: an outcome the caller cannot know).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_credential_types::Credentials;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, Notify};

/// Lambda's limit for a synchronous invocation's request and response payloads.
pub const MAX_SYNC_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;

/// A function as deployed, and the binary that runs it here.
#[derive(Clone, Debug)]
pub struct FunctionSpec {
    pub name: String,
    pub arn: String,
    pub binary: PathBuf,
    /// The deployed `Environment.Variables`.
    pub environment: BTreeMap<String, String>,
    pub memory_mb: i32,
    pub timeout: Duration,
    /// The credentials of the function's role (what Lambda gives the function).
    pub credentials: Credentials,
    pub region: String,
    /// The emulator's endpoint (`AWS_ENDPOINT_URL`).
    pub endpoint: String,
    /// Where the function's stdout and stderr go.
    pub log_file: PathBuf,
}

/// The result of one invocation.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The function's response payload.
    Response(Value),
    /// A function error: `{"errorType", "errorMessage", ...}` as Lambda returns it.
    Error(Value),
}

impl Outcome {
    pub fn error_type(&self) -> Option<&str> {
        match self {
            Outcome::Response(_) => None,
            Outcome::Error(e) => e.get("errorType").and_then(Value::as_str),
        }
    }
}

struct Pending {
    id: String,
    payload: Bytes,
    deadline_ms: u128,
}

#[derive(Default)]
struct RuntimeState {
    arn: String,
    queue: Mutex<VecDeque<Pending>>,
    ready: Notify,
    waiting: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    init_errors: Mutex<Vec<Value>>,
}

/// One function: its Runtime API server and its sandbox (the binary's process).
pub struct LocalFunction {
    pub spec: FunctionSpec,
    runtime_api: SocketAddr,
    state: Arc<RuntimeState>,
    sandbox: tokio::sync::Mutex<Option<Child>>,
    server: tokio::task::JoinHandle<()>,
    invocations: AtomicU64,
    starts: AtomicU64,
    next_id: AtomicU64,
}

impl LocalFunction {
    /// Serves the Runtime API for `spec` on a free loopback port; the binary starts on the first invocation.
    pub async fn start(spec: FunctionSpec) -> anyhow::Result<Arc<Self>> {
        anyhow::ensure!(
            spec.binary.is_file(),
            "{} does not exist: build the Lambda binaries (cargo build -p csv-validator -p data-transformer -p notification-sender)",
            spec.binary.display()
        );
        let state = Arc::new(RuntimeState {
            arn: spec.arn.clone(),
            ..Default::default()
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the Runtime API")?;
        let runtime_api = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Arc::new(LocalFunction {
            spec,
            runtime_api,
            state,
            sandbox: tokio::sync::Mutex::new(None),
            server,
            invocations: AtomicU64::new(0),
            starts: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
        }))
    }

    /// How many invocations reached this function.
    pub fn invocations(&self) -> u64 {
        self.invocations.load(Ordering::SeqCst)
    }

    /// How many times its process was started (cold starts).
    pub fn starts(&self) -> u64 {
        self.starts.load(Ordering::SeqCst)
    }

    /// Errors the runtime reported through `/init/error`.
    pub fn init_errors(&self) -> Vec<Value> {
        self.state.init_errors.lock().expect("not poisoned").clone()
    }

    /// The last `lines` lines the function wrote (stdout and stderr), for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.spec.log_file).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn spawn(&self) -> anyhow::Result<Child> {
        let spec = &self.spec;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_file)
            .with_context(|| format!("opening {}", spec.log_file.display()))?;
        let mut command = Command::new(&spec.binary);
        command
            .env_clear()
            // The deployed environment, then what Lambda itself sets (reserved names win, as in Lambda).
            .envs(&spec.environment)
            .env("AWS_LAMBDA_RUNTIME_API", self.runtime_api.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", &spec.name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                spec.memory_mb.to_string(),
            )
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", spec.name),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "local/[$LATEST]datapath")
            .env("AWS_REGION", &spec.region)
            .env("AWS_DEFAULT_REGION", &spec.region)
            .env("AWS_ACCESS_KEY_ID", spec.credentials.access_key_id())
            .env(
                "AWS_SECRET_ACCESS_KEY",
                spec.credentials.secret_access_key(),
            )
            .env("TZ", ":UTC")
            // Plain log lines (no ANSI colours) for the failure messages' log tails.
            .env("NO_COLOR", "1")
            .env("AWS_ENDPOINT_URL", &spec.endpoint)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if let Some(token) = spec.credentials.session_token() {
            command.env("AWS_SESSION_TOKEN", token);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", spec.binary.display()))?;
        self.starts.fetch_add(1, Ordering::SeqCst);
        Ok(child)
    }

    /// Invokes the function synchronously (RequestResponse) and waits for its outcome.
    pub async fn invoke(&self, payload: &Value) -> anyhow::Result<Outcome> {
        let bytes = serde_json::to_vec(payload)?;
        anyhow::ensure!(
            bytes.len() <= MAX_SYNC_PAYLOAD_BYTES,
            "RequestEntityTooLargeException: the payload of {} bytes exceeds Lambda's limit of {MAX_SYNC_PAYLOAD_BYTES} bytes",
            bytes.len()
        );
        let mut sandbox = self.sandbox.lock().await;
        let alive = match sandbox.as_mut() {
            Some(child) => child.try_wait()?.is_none(),
            None => false,
        };
        if !alive {
            *sandbox = Some(self.spawn()?);
        }
        self.invocations.fetch_add(1, Ordering::SeqCst);
        let id = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            std::process::id(),
            self.next_id.fetch_add(1, Ordering::SeqCst)
        );
        let (tx, mut rx) = oneshot::channel();
        self.state
            .waiting
            .lock()
            .expect("not poisoned")
            .insert(id.clone(), tx);
        let deadline = std::time::SystemTime::now() + self.spec.timeout;
        self.state
            .queue
            .lock()
            .expect("not poisoned")
            .push_back(Pending {
                id: id.clone(),
                payload: Bytes::from(bytes),
                deadline_ms: deadline.duration_since(std::time::UNIX_EPOCH)?.as_millis(),
            });
        self.state.ready.notify_one();

        enum Ended {
            Outcome(Result<Outcome, oneshot::error::RecvError>),
            Exited(std::io::Result<std::process::ExitStatus>),
            TimedOut,
        }
        let ended = {
            let child = sandbox.as_mut().expect("started above");
            tokio::select! {
                outcome = &mut rx => Ended::Outcome(outcome),
                status = child.wait() => Ended::Exited(status),
                _ = tokio::time::sleep(self.spec.timeout) => Ended::TimedOut,
            }
        };
        self.state.waiting.lock().expect("not poisoned").remove(&id);
        self.state
            .queue
            .lock()
            .expect("not poisoned")
            .retain(|p| p.id != id);
        Ok(match ended {
            Ended::Outcome(Ok(outcome)) => outcome,
            Ended::Outcome(Err(_)) => anyhow::bail!("the Runtime API dropped invocation {id}"),
            Ended::Exited(status) => {
                *sandbox = None;
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                Outcome::Error(json!({
                    "errorType": "Runtime.ExitError",
                    "errorMessage": format!("RequestId: {id} Error: Runtime exited with error: {status}"),
                }))
            }
            Ended::TimedOut => {
                if let Some(mut child) = sandbox.take() {
                    let _ = child.kill().await;
                }
                Outcome::Error(json!({
                    "errorType": "Sandbox.Timedout",
                    "errorMessage": format!(
                        "RequestId: {id} Error: Task timed out after {:.2} seconds",
                        self.spec.timeout.as_secs_f64()
                    ),
                }))
            }
        })
    }

    /// Stops the function's process (the next invocation starts it again).
    pub async fn stop(&self) {
        if let Some(mut child) = self.sandbox.lock().await.take() {
            let _ = child.kill().await;
        }
    }
}

impl Drop for LocalFunction {
    fn drop(&mut self) {
        self.server.abort();
        if let Ok(mut sandbox) = self.sandbox.try_lock() {
            if let Some(child) = sandbox.as_mut() {
                let _ = child.start_kill();
            }
        }
    }
}

async fn next(State(state): State<Arc<RuntimeState>>) -> Response {
    loop {
        let pending = state.queue.lock().expect("not poisoned").pop_front();
        if let Some(p) = pending {
            let mut headers = HeaderMap::new();
            let mut set = |name: &'static str, value: &str| {
                if let Ok(v) = HeaderValue::from_str(value) {
                    headers.insert(name, v);
                }
            };
            set("lambda-runtime-aws-request-id", &p.id);
            set("lambda-runtime-deadline-ms", &p.deadline_ms.to_string());
            set("lambda-runtime-invoked-function-arn", &state.arn);
            set(
                "lambda-runtime-trace-id",
                &format!("Root=1-00000000-{:024x};Sampled=0", p.deadline_ms),
            );
            set("content-type", "application/json");
            return (StatusCode::OK, headers, p.payload).into_response();
        }
        state.ready.notified().await;
    }
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, axum::Json(json!({"status": "OK"}))).into_response()
}

async fn response(
    State(state): State<Arc<RuntimeState>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let outcome = if body.len() > MAX_SYNC_PAYLOAD_BYTES {
        Outcome::Error(json!({
            "errorType": "Function.ResponseSizeTooLarge",
            "errorMessage": format!("Response payload size ({} bytes) exceeded maximum allowed payload size ({MAX_SYNC_PAYLOAD_BYTES} bytes).", body.len()),
        }))
    } else {
        match serde_json::from_slice(&body) {
            Ok(value) => Outcome::Response(value),
            Err(e) => Outcome::Error(json!({
                "errorType": "Runtime.InvalidResponsePayload",
                "errorMessage": format!("the function's response is not JSON: {e}"),
            })),
        }
    };
    deliver(&state, &id, outcome)
}

async fn error(
    State(state): State<Arc<RuntimeState>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut payload: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| json!({"errorMessage": String::from_utf8_lossy(&body)}));
    if payload.get("errorType").is_none() {
        let header = headers
            .get("lambda-runtime-function-error-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("Unhandled");
        payload["errorType"] = json!(header);
    }
    deliver(&state, &id, Outcome::Error(payload))
}

fn deliver(state: &RuntimeState, id: &str, outcome: Outcome) -> Response {
    match state.waiting.lock().expect("not poisoned").remove(id) {
        Some(tx) => {
            let _ = tx.send(outcome);
            accepted()
        }
        None => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"errorType": "InvalidRequestID", "errorMessage": format!("unknown or finished request id {id}")})),
        )
            .into_response(),
    }
}

async fn init_error(State(state): State<Arc<RuntimeState>>, body: Bytes) -> Response {
    let payload: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| json!({"errorMessage": String::from_utf8_lossy(&body)}));
    state
        .init_errors
        .lock()
        .expect("not poisoned")
        .push(payload);
    accepted()
}

/// A fault injected at the Lambda service, before the caller sees the outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The function runs, then the service answers 500 `ServiceException` (the outcome is unknown to the
    /// caller, who retries).
    ServiceExceptionAfterRun,
}

/// One call that reached [`LambdaApi`].
#[derive(Clone, Debug)]
pub struct ApiCall {
    pub function: String,
    pub status: u16,
    pub error_type: Option<String>,
    pub at: Instant,
}

struct ApiState {
    functions: Vec<Arc<LocalFunction>>,
    /// Access key id → credentials of the principals allowed to call (their signatures name the key).
    callers: HashMap<String, Credentials>,
    /// The emulator, to authorize each call with the caller's credentials.
    authorizers: HashMap<String, aws_sdk_lambda::Client>,
    faults: Mutex<HashMap<String, VecDeque<Fault>>>,
    calls: Mutex<Vec<ApiCall>>,
}

/// Lambda's Invoke API in front of local functions (for the state machine interpreter).
pub struct LambdaApi {
    pub endpoint: String,
    state: Arc<ApiState>,
    server: tokio::task::JoinHandle<()>,
}

impl LambdaApi {
    /// Serves Invoke for `functions`; `callers` may call it, each authorized by the emulator at `endpoint`.
    pub async fn start(
        functions: Vec<Arc<LocalFunction>>,
        callers: Vec<Credentials>,
        region: &str,
        endpoint: &str,
    ) -> anyhow::Result<Self> {
        let mut authorizers = HashMap::new();
        let mut by_key = HashMap::new();
        for credentials in callers {
            let config = aws_sdk_lambda::Config::builder()
                .behavior_version(aws_sdk_lambda::config::BehaviorVersion::latest())
                .region(aws_sdk_lambda::config::Region::new(region.to_string()))
                .endpoint_url(endpoint)
                .credentials_provider(credentials.clone())
                .build();
            let key = credentials.access_key_id().to_string();
            authorizers.insert(key.clone(), aws_sdk_lambda::Client::from_conf(config));
            by_key.insert(key, credentials);
        }
        let state = Arc::new(ApiState {
            functions,
            callers: by_key,
            authorizers,
            faults: Mutex::default(),
            calls: Mutex::default(),
        });
        let app = Router::new()
            .route("/2015-03-31/functions/{name}/invocations", post(invoke))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(LambdaApi {
            endpoint,
            state,
            server,
        })
    }

    /// The next `count` invocations of `function` (name) meet `fault`.
    pub fn inject(&self, function: &str, fault: Fault, count: usize) {
        let mut faults = self.state.faults.lock().expect("not poisoned");
        let queue = faults.entry(function.to_string()).or_default();
        queue.extend(std::iter::repeat_n(fault, count));
    }

    /// Clears injected faults that were not met.
    pub fn clear_faults(&self) {
        self.state.faults.lock().expect("not poisoned").clear();
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<ApiCall> {
        self.state.calls.lock().expect("not poisoned").clone()
    }
}

impl Drop for LambdaApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn service_error(status: StatusCode, error_type: &str, message: &str) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-amzn-errortype",
        HeaderValue::from_str(error_type).expect("ascii"),
    );
    (
        status,
        headers,
        axum::Json(json!({"Type": "User", "message": message})),
    )
        .into_response()
}

/// The access key id of a SigV4 `Authorization` header.
fn signing_key(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let credential = auth.split("Credential=").nth(1)?;
    Some(credential.split('/').next()?.to_string())
}

async fn invoke(
    State(state): State<Arc<ApiState>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let function = state
        .functions
        .iter()
        .find(|f| f.spec.arn == name || f.spec.name == name)
        .cloned();
    let record = |status: u16, error_type: Option<String>| {
        state.calls.lock().expect("not poisoned").push(ApiCall {
            function: name.clone(),
            status,
            error_type,
            at: Instant::now(),
        });
    };
    let Some(key) = signing_key(&headers).filter(|k| state.callers.contains_key(k)) else {
        record(403, Some("UnrecognizedClientException".into()));
        return service_error(
            StatusCode::FORBIDDEN,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        );
    };
    let Some(function) = function else {
        record(404, Some("ResourceNotFoundException".into()));
        return service_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Function not found: {name}"),
        );
    };
    // Authorization: the emulator evaluates the caller's policies for lambda:InvokeFunction on the function
    // (by name: moto checks the signature of an ARN in the path against the decoded path).
    let dry_run = state.authorizers[&key]
        .invoke()
        .function_name(&function.spec.name)
        .invocation_type(aws_sdk_lambda::types::InvocationType::DryRun)
        .payload(aws_sdk_lambda::primitives::Blob::new(b"{}".to_vec()))
        .send()
        .await;
    if let Err(e) = dry_run {
        let code = e
            .as_service_error()
            .and_then(aws_sdk_lambda::error::ProvideErrorMetadata::code)
            .unwrap_or("AccessDeniedException")
            .to_string();
        let message = aws_sdk_lambda::error::DisplayErrorContext(&e).to_string();
        let (status, error_type) = if code.contains("NotFound") {
            (StatusCode::NOT_FOUND, "ResourceNotFoundException")
        } else {
            (StatusCode::FORBIDDEN, "AccessDeniedException")
        };
        record(status.as_u16(), Some(error_type.into()));
        return service_error(status, error_type, &message);
    }
    if body.len() > MAX_SYNC_PAYLOAD_BYTES {
        record(413, Some("RequestEntityTooLargeException".into()));
        return service_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLargeException",
            &format!("Request must be smaller than {MAX_SYNC_PAYLOAD_BYTES} bytes for the InvokeFunction operation"),
        );
    }
    let payload: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            record(400, Some("InvalidRequestContentException".into()));
            return service_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                &format!("Could not parse request body into json: {e}"),
            );
        }
    };
    let fault = state
        .faults
        .lock()
        .expect("not poisoned")
        .get_mut(&function.spec.name)
        .and_then(VecDeque::pop_front);
    let outcome = match function.invoke(&payload).await {
        Ok(outcome) => outcome,
        Err(e) => {
            record(500, Some("ServiceException".into()));
            return service_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                &format!("{e:#}"),
            );
        }
    };
    if fault == Some(Fault::ServiceExceptionAfterRun) {
        record(500, Some("ServiceException".into()));
        return service_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceException",
            "injected: the Lambda service failed after the function ran",
        );
    }
    match outcome {
        Outcome::Response(value) => {
            record(200, None);
            (StatusCode::OK, axum::Json(value)).into_response()
        }
        Outcome::Error(error) => {
            let error_type = error
                .get("errorType")
                .and_then(Value::as_str)
                .map(str::to_string);
            record(200, error_type);
            let mut headers = HeaderMap::new();
            headers.insert(
                "x-amz-function-error",
                HeaderValue::from_static("Unhandled"),
            );
            (StatusCode::OK, headers, axum::Json(error)).into_response()
        }
    }
}

/// The binary of a workspace crate, next to the running test or bench executable (`target/<profile>/`).
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>; benches run from target/release/deps
    // too, but the Lambda binaries are built by `cargo test`/`cargo build` into target/debug.
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test executable has no target/<profile>/deps parent")?;
    let target = profile_dir.parent().context("no target dir")?;
    let candidates = [profile_dir.join(name), target.join("debug").join(name)];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "no {name} binary in {} or {}: run `cargo build -p {name}` (cargo test --workspace builds it)",
                candidates[0].display(),
                candidates[1].display()
            )
        })
}
