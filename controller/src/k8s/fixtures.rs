//! Test fixtures: a mocked Kubernetes API server (every request is asserted and answered in order), a
//! sentinel AWS endpoint that counts connections (proof that no AWS call was made), a scripted engine
//! backend, and pipelines.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sts::config::{Credentials, SharedCredentialsProvider};
use futures::future::BoxFuture;
use http::{Request, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::client::Body;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::Client;
use serde_json::{json, Value};

use super::context::{Backend, Context};
use super::metrics::Metrics;
use crate::api::{TransactionPipeline, TransactionPipelineSpec, FINALIZER};
use crate::desired::{Kind, ResourceId};
use crate::drivers::Outputs;
use crate::engine::{Action, DriftMemory, Engine, EngineError, Pipeline, Report, ResourceReport};

pub const RESYNC: Duration = Duration::from_secs(300);
/// How long a test waits for the next request or the reconcile's end.
pub const PATIENCE: Duration = Duration::from_secs(20);

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A Kubernetes client whose API server is the returned verifier.
pub fn mock_client() -> (Client, ApiServerVerifier) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServerVerifier(handle))
}

/// One request the controller made: method, path with query, JSON body.
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub body: Value,
    respond: tower_test::mock::SendResponse<Response<Body>>,
}

impl Seen {
    pub fn respond(self, status: u16, body: Value) {
        self.respond.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&body).expect("json")))
                .expect("response"),
        );
    }

    pub fn ok(self, body: Value) {
        self.respond(200, body)
    }

    pub fn not_found(self) {
        self.respond(
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
        )
    }

    /// Answers a status apply: `pipeline` with the applied status.
    pub fn applied(self, pipeline: &TransactionPipeline) {
        let mut answer = to_json(pipeline);
        answer["status"] = self.body["status"].clone();
        self.ok(answer)
    }

    /// Answers an Event creation by echoing it.
    pub fn echo(self) {
        let body = self.body.clone();
        self.respond(201, body)
    }
}

pub struct ApiServerVerifier(pub Handle);

impl ApiServerVerifier {
    /// The next request, failing the test if none comes within [`PATIENCE`].
    pub async fn next(&mut self) -> Seen {
        let (request, respond) = tokio::time::timeout(PATIENCE, self.0.next_request())
            .await
            .expect("the controller made no further request")
            .expect("the client was dropped");
        let method = request.method().to_string();
        let uri = request.uri().to_string();
        let bytes = request.into_body().collect_bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("request body is JSON")
        };
        Seen {
            method,
            uri,
            body,
            respond,
        }
    }

    /// The next request, or `None` once the client is gone.
    pub async fn next_request_opt(&mut self) -> Option<Seen> {
        let (request, respond) = self.0.next_request().await?;
        let method = request.method().to_string();
        let uri = request.uri().to_string();
        let bytes = request.into_body().collect_bytes().await.ok()?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Some(Seen {
            method,
            uri,
            body,
            respond,
        })
    }

    /// The next request, asserting its method and path (with query).
    pub async fn expect(&mut self, method: &str, uri: &str) -> Seen {
        let seen = self.next().await;
        assert_eq!(
            (seen.method.as_str(), seen.uri.as_str()),
            (method, uri),
            "unexpected request; body: {}",
            seen.body
        );
        seen
    }

    /// The next request must be an Event POST in `default`; returns its body after answering.
    pub async fn expect_event(&mut self) -> Value {
        let seen = self
            .expect("POST", "/apis/events.k8s.io/v1/namespaces/default/events?")
            .await;
        let body = seen.body.clone();
        seen.echo();
        body
    }
}

/// Everything a reconcile asked of the API server, answered leniently.
pub struct Served {
    /// `(method, uri, body)` in order.
    pub requests: Vec<(String, String, Value)>,
}

impl Served {
    pub fn find(&self, method: &str, uri: &str) -> Vec<&Value> {
        self.requests
            .iter()
            .filter(|(m, u, _)| m == method && u == uri)
            .map(|(_, _, b)| b)
            .collect()
    }

    /// The reasons of the Events created, in order.
    pub fn event_reasons(&self) -> Vec<String> {
        self.requests
            .iter()
            .filter(|(m, u, _)| m == "POST" && u.contains("/events"))
            .map(|(_, _, b)| b["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

impl ApiServerVerifier {
    /// Answers every request until `task` ends: status applies with `pipeline` plus the status, Events
    /// by echo, Secret reads with 404, anything else by echoing the body. For reconciles whose exact
    /// sequence depends on what AWS answers.
    pub async fn serve_until<T>(
        &mut self,
        pipeline: &TransactionPipeline,
        task: tokio::task::JoinHandle<T>,
    ) -> (Served, T) {
        let mut served = Served {
            requests: Vec::new(),
        };
        tokio::pin!(task);
        loop {
            tokio::select! {
                result = &mut task => {
                    return (served, result.expect("the reconcile panicked"));
                }
                next = self.0.next_request() => {
                    let Some((request, respond)) = next else {
                        continue;
                    };
                    let method = request.method().to_string();
                    let uri = request.uri().to_string();
                    let bytes = request.into_body().collect_bytes().await.expect("body");
                    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    served.requests.push((method.clone(), uri.clone(), body.clone()));
                    let seen = Seen { method, uri, body, respond };
                    if seen.uri.contains("/status?") {
                        seen.applied(pipeline);
                    } else if seen.method == "GET" && seen.uri.contains("/secrets/") {
                        seen.not_found();
                    } else if seen.method == "POST" {
                        seen.echo();
                    } else {
                        let body = seen.body.clone();
                        seen.ok(body);
                    }
                }
            }
        }
    }
}

pub const PIPELINES: &str = "/apis/tap.dev/v1alpha1/namespaces/default/transactionpipelines";

pub fn pipeline_uri(name: &str) -> String {
    format!("{PIPELINES}/{name}?")
}

pub fn status_uri(name: &str) -> String {
    format!("{PIPELINES}/{name}/status?&force=true&fieldManager=tap-controller")
}

pub fn spec(suffix: &str) -> TransactionPipelineSpec {
    let function = json!({"image": {"tag": "v1"}});
    serde_json::from_value(json!({
        "environmentSuffix": suffix,
        "functions": {
            "csvValidator": function,
            "dataTransformer": function,
            "notificationSender": function,
        }
    }))
    .expect("valid spec JSON")
}

/// A pipeline in `default`, generation 1, without finalizer; `age_seconds` ago.
pub fn pipeline(name: &str, suffix: &str, age_seconds: i64) -> TransactionPipeline {
    let mut p = TransactionPipeline::new(name, spec(suffix));
    p.metadata.namespace = Some("default".into());
    p.metadata.uid = Some(format!("uid-{name}"));
    p.metadata.generation = Some(1);
    p.metadata.resource_version = Some("1".into());
    p.metadata.creation_timestamp = Some(Time(
        k8s_openapi::jiff::Timestamp::now()
            - k8s_openapi::jiff::SignedDuration::from_secs(age_seconds),
    ));
    p
}

pub fn finalized(mut p: TransactionPipeline) -> TransactionPipeline {
    p.metadata.finalizers = Some(vec![FINALIZER.into()]);
    p
}

pub fn deleting(mut p: TransactionPipeline) -> TransactionPipeline {
    p.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    p.metadata.generation = Some(2);
    p
}

pub fn to_json(p: &TransactionPipeline) -> Value {
    serde_json::to_value(p).expect("pipeline JSON")
}

/// A store holding `pipelines`, as the controller's reflector would.
pub fn store_of(pipelines: &[TransactionPipeline]) -> Store<TransactionPipeline> {
    let (reader, mut writer) = reflector::store();
    for p in pipelines {
        writer.apply_watcher_event(&watcher::Event::Apply(p.clone()));
    }
    reader
}

/// An AWS endpoint that accepts and drops connections, counting them: any AWS call, even the STS call
/// that precedes all others, shows up as a connection.
pub struct AwsSentinel {
    pub endpoint: String,
    connections: Arc<AtomicUsize>,
}

impl AwsSentinel {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Self {
            endpoint,
            connections,
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn sdk_config(&self) -> SdkConfig {
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "tap-tests",
            )))
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(Duration::from_secs(5))
                    .build(),
            )
            .build()
    }

    /// The real engine, pointed at this sentinel.
    pub fn engine(&self, metrics: &Metrics) -> Engine {
        let observer = metrics.clone();
        Engine::new(self.sdk_config(), 4, Default::default())
            .with_call_observer(move |s, o| observer.aws_call(s, o))
    }
}

/// A backend that answers with scripted reports and counts its calls.
#[derive(Default)]
pub struct ScriptedBackend {
    pub reconciles: Mutex<VecDeque<Result<Report, EngineError>>>,
    pub teardowns: Mutex<VecDeque<Result<Report, EngineError>>>,
    pub reconcile_calls: AtomicUsize,
    pub teardown_calls: AtomicUsize,
}

impl ScriptedBackend {
    pub fn reconciling(report: Report) -> Self {
        let b = Self::default();
        b.reconciles.lock().unwrap().push_back(Ok(report));
        b
    }

    pub fn tearing_down(report: Report) -> Self {
        let b = Self::default();
        b.teardowns.lock().unwrap().push_back(Ok(report));
        b
    }

    pub fn teardown_calls(&self) -> usize {
        self.teardown_calls.load(Ordering::SeqCst)
    }
}

impl Backend for ScriptedBackend {
    fn reconcile<'a>(
        &'a self,
        _: Pipeline<'a>,
        _: &'a mut DriftMemory,
        _: std::time::Instant,
    ) -> BoxFuture<'a, Result<Report, EngineError>> {
        self.reconcile_calls.fetch_add(1, Ordering::SeqCst);
        let next = self
            .reconciles
            .lock()
            .unwrap()
            .pop_front()
            .expect("an unscripted reconcile");
        Box::pin(async move { next })
    }

    fn teardown<'a>(&'a self, _: Pipeline<'a>) -> BoxFuture<'a, Result<Report, EngineError>> {
        self.teardown_calls.fetch_add(1, Ordering::SeqCst);
        let next = self
            .teardowns
            .lock()
            .unwrap()
            .pop_front()
            .expect("an unscripted teardown");
        Box::pin(async move { next })
    }
}

pub fn resource(kind: Kind, name: &str, action: Action, applied: bool) -> ResourceReport {
    ResourceReport {
        id: ResourceId {
            kind,
            name: name.into(),
        },
        action,
        applied,
        outputs: Outputs::default(),
        remembered: false,
        elapsed: Duration::ZERO,
    }
}

pub fn report(resources: Vec<ResourceReport>) -> Report {
    Report {
        resources,
        ..Default::default()
    }
}

pub fn context(client: Client, backend: Arc<dyn Backend>, metrics: Metrics) -> Arc<Context> {
    Arc::new(Context::new(client, backend, metrics, RESYNC))
}

/// The condition `type_` of a status JSON.
pub fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}
