//! A recording HTTP proxy between the controller and its AWS endpoint (moto, or microburst in front of
//! it). It answers exactly what the upstream answers, and records every request: when it arrived, how
//! long the upstream took, the signing service, the operation, whether it only reads, the status and
//! whether it was a not-found answer (404, or a 400 whose error code says NotFound / NoSuch… /
//! DoesNotExist: DynamoDB, ECR, SQS and CloudWatch Logs answer a missing resource that way).
//!
//! It also plays the user who pushes the function images: when an ECR `CreateRepository` succeeds, it
//! pushes the placeholder image to the new repository (directly to moto, not through the proxy, so it is
//! not counted as a controller call) before it hands the answer back. The image therefore exists as
//! soon as the repository does, and a fresh pipeline converges in one walk, as it would when CI pushes
//! right after the repository appears; without that, every pipeline would wait for the controller's
//! 15 s provisioning requeue and the figures would measure that constant.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, Uri};
use axum::response::Response;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use crate::emulator::fake_image_manifest;

/// One request the proxy forwarded.
#[derive(Clone, Debug, Serialize)]
pub struct Call {
    /// When it arrived, since the proxy started.
    pub at: Duration,
    /// How long the upstream took to answer it (the image push after a `CreateRepository` excluded).
    pub latency: Duration,
    /// The SigV4 signing name (`s3`, `lambda`, `apigateway`, `iam`, …).
    pub service: String,
    /// The operation (`DescribeTable`, `GetRole`, …); for REST protocols `METHOD /path/with/*`.
    pub operation: String,
    pub read: bool,
    pub status: u16,
    pub not_found: bool,
    /// The SDK's attempt number (`amz-sdk-request: attempt=N`): above 1 is a retry.
    pub attempt: u32,
}

/// Pushes the placeholder image `tag` to every repository as soon as it is created.
pub struct ImagePush {
    pub ecr: aws_sdk_ecr::Client,
    pub tag: String,
}

#[derive(Clone)]
struct Shared {
    upstream: String,
    client: Client<HttpConnector, Full<Bytes>>,
    started: Instant,
    calls: Arc<Mutex<Vec<Call>>>,
    push: Option<Arc<ImagePush>>,
    pushed: Arc<Mutex<Vec<String>>>,
}

/// The running proxy; stops when dropped.
pub struct AwsTap {
    /// `http://127.0.0.1:PORT`: the endpoint to give the controller.
    pub endpoint: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl AwsTap {
    /// Starts a proxy to `upstream` (`http://host:port`) on a free loopback port.
    pub async fn start(upstream: &str, push: Option<ImagePush>) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let shared = Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            client,
            started: Instant::now(),
            calls: Default::default(),
            push: push.map(Arc::new),
            pushed: Default::default(),
        };
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            endpoint,
            shared,
            task,
        })
    }

    /// Time since the proxy started, on the clock of [`Call::at`].
    pub fn now(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// Every call recorded so far.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.calls.lock().expect("tap calls").clone()
    }

    /// How many calls were recorded so far (a mark to slice [`AwsTap::calls`] by phase).
    pub fn mark(&self) -> usize {
        self.shared.calls.lock().expect("tap calls").len()
    }

    /// The calls recorded since `mark`.
    pub fn calls_since(&self, mark: usize) -> Vec<Call> {
        self.shared.calls.lock().expect("tap calls")[mark..].to_vec()
    }

    /// Repositories an image was pushed to.
    pub fn pushed(&self) -> Vec<String> {
        self.shared.pushed.lock().expect("tap pushes").clone()
    }
}

impl Drop for AwsTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "expect"
    )
}

/// The SigV4 signing name: `Credential=AKID/DATE/REGION/SERVICE/aws4_request`.
fn signing_service(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|auth| auth.split("Credential=").nth(1))
        .and_then(|cred| cred.split('/').nth(3))
        .unwrap_or("unsigned")
        .to_string()
}

fn attempt(headers: &HeaderMap) -> u32 {
    headers
        .get("amz-sdk-request")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(';')
                .find_map(|kv| kv.trim().strip_prefix("attempt="))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(1)
}

/// A path segment that names or identifies one resource (kept out of the operation's name).
fn is_identifier(segment: &str) -> bool {
    let version = segment.len() == 10
        && segment.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    !version && (segment.contains("tap-") || segment.bytes().any(|b| b.is_ascii_digit()))
}

/// The operation and whether it only reads.
fn operation(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> (String, bool) {
    let named = |op: &str| (op.to_string(), tap_controller::aws::is_read(op));
    // JSON protocols (DynamoDB, ECR, Step Functions, CloudWatch Logs, SQS).
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        return named(target.rsplit('.').next().unwrap_or(target));
    }
    // RPC v2 CBOR (CloudWatch): /service/<service>/operation/<operation>.
    if let Some((_, op)) = uri.path().split_once("/operation/") {
        return named(op);
    }
    // Query protocol (IAM, SNS, STS): Action=… in the form body.
    let form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if form {
        if let Some(action) = std::str::from_utf8(body).ok().and_then(|b| {
            b.split('&')
                .find_map(|kv| kv.strip_prefix("Action="))
                .map(str::to_string)
        }) {
            return named(&action);
        }
    }
    // REST protocols (S3, Lambda, API Gateway): the method and the path without identifiers.
    let path: Vec<&str> = uri
        .path()
        .split('/')
        .map(|s| if is_identifier(s) { "*" } else { s })
        .collect();
    let mut op = format!("{method} {}", path.join("/"));
    if let Some(query) = uri.query() {
        let keys: Vec<&str> = query
            .split('&')
            .map(|kv| kv.split('=').next().unwrap_or(kv))
            .filter(|k| !k.is_empty() && !k.starts_with("x-id"))
            .collect();
        if !keys.is_empty() {
            op.push('?');
            op.push_str(&keys.join("&"));
        }
    }
    let read = matches!(*method, Method::GET | Method::HEAD);
    (op, read)
}

fn is_not_found(status: u16, headers: &HeaderMap, body: &[u8]) -> bool {
    if status == 404 {
        return true;
    }
    if status < 400 {
        return false;
    }
    let says = |text: &str| {
        text.contains("NotFound") || text.contains("NoSuch") || text.contains("DoesNotExist")
    };
    let error_type = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .is_some_and(says);
    let head = &body[..body.len().min(2048)];
    error_type || says(&String::from_utf8_lossy(head))
}

fn bad_gateway(message: String) -> Response {
    Response::builder()
        .status(StatusCode::BAD_GATEWAY)
        .body(Body::from(message))
        .expect("502 response")
}

async fn forward(State(s): State<Shared>, request: Request) -> Response {
    let arrived = s.started.elapsed();
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return bad_gateway(format!("reading the request: {e}")),
    };
    let service = signing_service(&parts.headers);
    let (operation, read) = operation(&parts.method, &parts.uri, &parts.headers, &body);
    let attempt = attempt(&parts.headers);
    let target = format!(
        "{}{}",
        s.upstream,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut upstream = axum::http::Request::builder()
        .method(parts.method.clone())
        .uri(target);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            upstream = upstream.header(name, value);
        }
    }
    let upstream = match upstream.body(Full::new(body.clone())) {
        Ok(r) => r,
        Err(e) => return bad_gateway(format!("building the request: {e}")),
    };
    let sent = Instant::now();
    let answer = s.client.request(upstream).await;
    let (rparts, rbody) = match answer {
        Ok(r) => {
            let (rparts, rbody) = r.into_parts();
            match rbody.collect().await {
                Ok(b) => (rparts, b.to_bytes()),
                Err(e) => return bad_gateway(format!("reading the answer: {e}")),
            }
        }
        Err(e) => {
            record(
                &s,
                arrived,
                sent.elapsed(),
                service,
                operation,
                read,
                502,
                false,
                attempt,
            );
            return bad_gateway(format!("upstream: {e}"));
        }
    };
    let latency = sent.elapsed();
    let status = rparts.status.as_u16();
    let not_found = is_not_found(status, &rparts.headers, &rbody);
    if status < 300 && operation == "CreateRepository" {
        if let Some(push) = &s.push {
            push_image(&s, push, &body).await;
        }
    }
    record(
        &s, arrived, latency, service, operation, read, status, not_found, attempt,
    );
    let mut response = Response::builder().status(rparts.status);
    for (name, value) in &rparts.headers {
        if !hop_by_hop(name) {
            response = response.header(name, value);
        }
    }
    response
        .body(Body::from(rbody))
        .unwrap_or_else(|e| bad_gateway(format!("building the answer: {e}")))
}

#[allow(clippy::too_many_arguments)]
fn record(
    s: &Shared,
    at: Duration,
    latency: Duration,
    service: String,
    operation: String,
    read: bool,
    status: u16,
    not_found: bool,
    attempt: u32,
) {
    s.calls.lock().expect("tap calls").push(Call {
        at,
        latency,
        service,
        operation,
        read,
        status,
        not_found,
        attempt,
    });
}

async fn push_image(s: &Shared, push: &ImagePush, request_body: &[u8]) {
    let Some(repository) = serde_json::from_slice::<serde_json::Value>(request_body)
        .ok()
        .and_then(|v| v["repositoryName"].as_str().map(str::to_string))
    else {
        return;
    };
    let pushed = push
        .ecr
        .put_image()
        .repository_name(&repository)
        .image_tag(&push.tag)
        .image_manifest(fake_image_manifest(&push.tag))
        .send()
        .await;
    match pushed {
        Ok(_) => s.pushed.lock().expect("tap pushes").push(repository),
        Err(e) => eprintln!(
            "tap: pushing {repository}:{}: {}",
            push.tag,
            aws_sdk_ecr::error::DisplayErrorContext(&e)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_operations_of_every_protocol() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-amz-target",
            "DynamoDB_20120810.DescribeTable".parse().unwrap(),
        );
        let uri: Uri = "/".parse().unwrap();
        assert_eq!(
            operation(&Method::POST, &uri, &h, b""),
            ("DescribeTable".into(), true)
        );

        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            operation(
                &Method::POST,
                &uri,
                &h,
                b"Action=CreateRole&Version=2010-05-08"
            ),
            ("CreateRole".into(), false)
        );

        let uri: Uri = "/service/GraniteServiceVersion20100801/operation/DescribeAlarms"
            .parse()
            .unwrap();
        assert_eq!(
            operation(&Method::POST, &uri, &HeaderMap::new(), b""),
            ("DescribeAlarms".into(), true)
        );

        let uri: Uri = "/2015-03-31/functions/tap-s1-csv-validator/configuration"
            .parse()
            .unwrap();
        assert_eq!(
            operation(&Method::GET, &uri, &HeaderMap::new(), b""),
            ("GET /2015-03-31/functions/*/configuration".into(), true)
        );
        let uri: Uri = "/tap-s1-uploads-123456789012?versioning".parse().unwrap();
        assert_eq!(
            operation(&Method::PUT, &uri, &HeaderMap::new(), b""),
            ("PUT /*?versioning".into(), false)
        );
    }

    #[test]
    fn reads_the_signing_service_and_attempt() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20250101/us-east-1/apigateway/aws4_request, SignedHeaders=host, Signature=x"
                .parse()
                .unwrap(),
        );
        h.insert("amz-sdk-request", "attempt=2; max=3".parse().unwrap());
        assert_eq!(signing_service(&h), "apigateway");
        assert_eq!(attempt(&h), 2);
    }

    #[test]
    fn tells_not_found_answers() {
        let h = HeaderMap::new();
        assert!(is_not_found(404, &h, b""));
        assert!(is_not_found(
            400,
            &h,
            br#"{"__type":"com.amazonaws.dynamodb.v20120810#ResourceNotFoundException"}"#
        ));
        assert!(!is_not_found(
            400,
            &h,
            br#"{"__type":"ValidationException"}"#
        ));
        assert!(!is_not_found(200, &h, b"NotFound"));
    }
}
