//! A small in-memory Kubernetes API server for tests of the whole controller (`serve`, leader
//! election, shutdown): TransactionPipelines with list, watch (a real event stream), JSON patches
//! (finalizers), status apply and deletion through finalizers; Secrets, Events and Leases, where a
//! server-side apply that would take `holderIdentity` from another holder is refused with 409, as a
//! real API server's field ownership does.
//!
//! The same router serves in-process (`client()`, an axum `Router` as the kube client's service) and
//! over TCP (`serve_tcp()` plus `kubeconfig()`, for the `tap-controller` binary). Every request is
//! recorded (`requests()`), so a test can tell exactly which verbs the controller used.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use crate::api::TransactionPipeline;

/// One request the API server answered.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    /// Whether the object addressed existed before the request (for a server-side apply that
    /// creates it, which the API server also authorizes as `create`).
    pub existed: bool,
}

impl Recorded {
    /// The RBAC verb the API server checks for this request, and the `(group, resource)` it checks it
    /// on (the resource with its subresource, e.g. `transactionpipelines/status`).
    pub fn authorization(&self) -> Vec<(String, String, &'static str)> {
        let segments: Vec<&str> = self.path.trim_matches('/').split('/').collect();
        let (group, rest) = match segments.as_slice() {
            ["api", _version, rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => return Vec::new(),
        };
        let rest = match rest {
            ["namespaces", _ns, rest @ ..] => rest,
            rest => rest,
        };
        let (resource, named) = match rest {
            [resource] => (resource.to_string(), false),
            [resource, _name] => (resource.to_string(), true),
            [resource, _name, sub] => (format!("{resource}/{sub}"), true),
            _ => return Vec::new(),
        };
        let watch = self.query.split('&').any(|kv| kv == "watch=true");
        let verb = match (self.method.as_str(), named) {
            ("GET", false) if watch => "watch",
            ("GET", false) => "list",
            ("GET", true) => "get",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            _ => return Vec::new(),
        };
        let mut checks = vec![(group.to_string(), resource.clone(), verb)];
        if verb == "patch" && self.content_type.contains("apply-patch") && !self.existed {
            checks.push((group.to_string(), resource, "create"));
        }
        checks
    }
}

type Key = (String, String, String);

#[derive(Default)]
struct Inner {
    /// (collection, namespace, name) -> object; collection is `group/resource` (`/secrets` for core).
    objects: BTreeMap<Key, Value>,
    resource_version: u64,
    /// Pipeline watch events so far: (resourceVersion, type, object).
    history: Vec<(u64, String, Value)>,
    requests: Vec<Recorded>,
    /// Lease -> the field manager that last set its `spec.holderIdentity`.
    holder_managers: BTreeMap<Key, String>,
}

/// The fake API server. Cheap to clone (shared state).
#[derive(Clone)]
pub struct FakeApi {
    inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<(u64, String, Value)>,
    /// While true, pipeline list requests wait (a test can look at the controller before its
    /// watchers have listed).
    hold_lists: Arc<watch::Sender<bool>>,
    /// Number of pipeline list requests received so far.
    lists: Arc<watch::Sender<usize>>,
}

impl Default for FakeApi {
    fn default() -> Self {
        Self::new()
    }
}

const PIPELINES: &str = "tap.dev/transactionpipelines";

/// (collection, namespace, name, subresource) of a request path.
type Address = (String, Option<String>, Option<String>, Option<String>);

fn collection_of(segments: &[&str]) -> Option<Address> {
    let (group, rest) = match segments {
        ["api", _v, rest @ ..] => ("", rest),
        ["apis", group, _v, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let (resource, name, sub) = match rest {
        [r] => (*r, None, None),
        [r, n] => (*r, Some(n.to_string()), None),
        [r, n, s] => (*r, Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    Some((format!("{group}/{resource}"), namespace, name, sub))
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "reason": reason, "message": message, "code": code,
    });
    (
        StatusCode::from_u16(code).expect("status code"),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(code: u16, body: &Value) -> Response {
    (
        StatusCode::from_u16(code).expect("status code"),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Merges `patch` into `target` the way a strategic merge / apply of plain fields does: objects
/// recursively, `null` removes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn kind_of(collection: &str) -> (&'static str, &'static str) {
    match collection {
        PIPELINES => ("tap.dev/v1alpha1", "TransactionPipeline"),
        "/secrets" => ("v1", "Secret"),
        "events.k8s.io/events" => ("events.k8s.io/v1", "Event"),
        "coordination.k8s.io/leases" => ("coordination.k8s.io/v1", "Lease"),
        _ => ("v1", "Unknown"),
    }
}

impl FakeApi {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            inner: Default::default(),
            events,
            hold_lists: Arc::new(watch::channel(false).0),
            lists: Arc::new(watch::channel(0).0),
        }
    }

    /// A kube client whose requests this server answers in-process.
    pub fn client(&self) -> Client {
        Client::new(self.router(), "default")
    }

    pub fn router(&self) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }

    /// Serves over TCP on a free loopback port; returns the base URL.
    pub async fn serve_tcp(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API server");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let app = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        url
    }

    /// A kubeconfig naming `url` (plain HTTP, no credentials).
    pub fn kubeconfig(url: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
        )
    }

    /// Pipeline list requests wait until [`FakeApi::release_lists`].
    pub fn hold_lists(&self) {
        self.hold_lists.send_replace(true);
    }

    pub fn release_lists(&self) {
        self.hold_lists.send_replace(false);
    }

    /// Resolves once at least `n` pipeline list requests arrived.
    pub async fn lists_requested(&self, n: usize) {
        let mut rx = self.lists.subscribe();
        let _ = rx.wait_for(|seen| *seen >= n).await;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().expect("fake api").requests.clone()
    }

    /// Adds (or replaces) a pipeline, as `kubectl apply` would; returns its resourceVersion.
    pub fn put_pipeline(&self, pipeline: &TransactionPipeline) -> u64 {
        let mut value = serde_json::to_value(pipeline).expect("pipeline JSON");
        let ns = value["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let name = value["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_string();
        value["metadata"]["namespace"] = json!(ns);
        let mut inner = self.inner.lock().expect("fake api");
        let key = (PIPELINES.to_string(), ns, name);
        let kind = if inner.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.store(&mut inner, key, value, kind)
    }

    /// The stored pipeline, if any.
    pub fn pipeline(&self, namespace: &str, name: &str) -> Option<Value> {
        let inner = self.inner.lock().expect("fake api");
        inner
            .objects
            .get(&(PIPELINES.to_string(), namespace.into(), name.into()))
            .cloned()
    }

    /// Any stored object: `collection` is `group/resource` (`/secrets` for a core Secret).
    pub fn object(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        let inner = self.inner.lock().expect("fake api");
        inner
            .objects
            .get(&(collection.into(), namespace.into(), name.into()))
            .cloned()
    }

    /// Deletes a pipeline as the API server does: with finalizers it only gets a deletionTimestamp.
    pub fn delete_pipeline(&self, namespace: &str, name: &str) {
        let mut inner = self.inner.lock().expect("fake api");
        let key = (
            PIPELINES.to_string(),
            namespace.to_string(),
            name.to_string(),
        );
        self.delete(&mut inner, key);
    }

    fn delete(&self, inner: &mut Inner, key: Key) -> Option<Value> {
        let mut object = inner.objects.get(&key)?.clone();
        let has_finalizers = object["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if object["metadata"]["deletionTimestamp"].is_null() {
                object["metadata"]["deletionTimestamp"] =
                    json!(k8s_openapi::jiff::Timestamp::now()
                        .strftime("%Y-%m-%dT%H:%M:%SZ")
                        .to_string());
                let generation = object["metadata"]["generation"].as_i64().unwrap_or(1);
                object["metadata"]["generation"] = json!(generation + 1);
                self.store(inner, key.clone(), object, "MODIFIED");
            }
            inner.objects.get(&key).cloned()
        } else {
            inner.objects.remove(&key);
            inner.resource_version += 1;
            let rv = inner.resource_version;
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            if key.0 == PIPELINES {
                inner.history.push((rv, "DELETED".into(), object.clone()));
                let _ = self.events.send((rv, "DELETED".into(), object.clone()));
            }
            Some(object)
        }
    }

    fn store(&self, inner: &mut Inner, key: Key, mut object: Value, kind: &str) -> u64 {
        inner.resource_version += 1;
        let rv = inner.resource_version;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        object["metadata"]["namespace"] = json!(key.1);
        object["metadata"]["name"] = json!(key.2);
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("uid-{}-{}", key.2, rv));
        }
        let (api_version, k) = kind_of(&key.0);
        object["apiVersion"] = json!(api_version);
        object["kind"] = json!(k);
        let deleting = !object["metadata"]["deletionTimestamp"].is_null();
        let finalized = object["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
        if key.0 == PIPELINES && deleting && finalized {
            inner.objects.remove(&key);
            inner.history.push((rv, "DELETED".into(), object.clone()));
            let _ = self.events.send((rv, "DELETED".into(), object));
            return rv;
        }
        inner.objects.insert(key.clone(), object.clone());
        if key.0 == PIPELINES {
            inner.history.push((rv, kind.into(), object.clone()));
            let _ = self.events.send((rv, kind.into(), object));
        }
        rv
    }

    async fn answer(&self, request: Request) -> Response {
        let method = request.method().to_string();
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or_default().to_string();
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = axum::body::to_bytes(request.into_body(), 16 << 20)
            .await
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let Some((collection, namespace, name, sub)) = collection_of(&segments) else {
            return status(404, "NotFound", &format!("no route {path}"));
        };
        let watch = query.split('&').any(|kv| kv == "watch=true");
        let existed = match (&namespace, &name) {
            (Some(ns), Some(n)) => self.inner.lock().expect("fake api").objects.contains_key(&(
                collection.clone(),
                ns.clone(),
                n.clone(),
            )),
            _ => false,
        };
        self.inner
            .lock()
            .expect("fake api")
            .requests
            .push(Recorded {
                method: method.clone(),
                path: path.clone(),
                query: query.clone(),
                content_type: content_type.clone(),
                existed,
            });

        match (method.as_str(), name) {
            ("GET", None) if collection == PIPELINES && watch => self.watch(namespace, &query),
            ("GET", None) if collection == PIPELINES => {
                self.lists.send_modify(|n| *n += 1);
                let mut held = self.hold_lists.subscribe();
                let _ = held.wait_for(|h| !*h).await;
                self.list(namespace)
            }
            ("GET", None) => {
                // Any other collection: what is stored (e.g. nothing: no nodes, no Deployments).
                let inner = self.inner.lock().expect("fake api");
                let items: Vec<&Value> = inner
                    .objects
                    .iter()
                    .filter(|((c, ns, _), _)| {
                        *c == collection && namespace.as_ref().is_none_or(|n| n == ns)
                    })
                    .map(|(_, o)| o)
                    .collect();
                ok(
                    200,
                    &json!({
                        "apiVersion": "v1", "kind": "List",
                        "metadata": {"resourceVersion": inner.resource_version.to_string()},
                        "items": items,
                    }),
                )
            }
            ("GET", Some(name)) => {
                let key = (collection, namespace.unwrap_or_default(), name);
                match self.inner.lock().expect("fake api").objects.get(&key) {
                    Some(o) => ok(200, o),
                    None => status(404, "NotFound", &format!("{} not found", key.2)),
                }
            }
            ("POST", None) => {
                let ns = namespace.unwrap_or_default();
                let mut inner = self.inner.lock().expect("fake api");
                let name = body["metadata"]["name"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| {
                        let prefix = body["metadata"]["generateName"].as_str().unwrap_or("obj-");
                        format!("{prefix}{}", inner.resource_version + 1)
                    });
                let key = (collection, ns, name);
                if inner.objects.contains_key(&key) {
                    return status(409, "AlreadyExists", &format!("{} already exists", key.2));
                }
                self.store(&mut inner, key.clone(), body, "ADDED");
                ok(201, &inner.objects[&key])
            }
            ("PATCH", Some(name)) => {
                let key = (collection, namespace.unwrap_or_default(), name);
                let mut inner = self.inner.lock().expect("fake api");
                let current = inner.objects.get(&key).cloned();
                let apply = content_type.contains("apply-patch");
                let mut object = match current {
                    Some(o) => o,
                    None if apply => json!({"metadata": {}}),
                    None => return status(404, "NotFound", &format!("{} not found", key.2)),
                };
                if key.0 == "coordination.k8s.io/leases" {
                    // Field ownership of spec.holderIdentity, as the API server keeps it: an apply by
                    // another manager that would change it is a conflict; whoever sets it owns it;
                    // removing it (null) frees it.
                    let manager = query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("fieldManager="))
                        .unwrap_or_default()
                        .to_string();
                    let holder = object["spec"]["holderIdentity"].as_str();
                    let wanted = &body["spec"]["holderIdentity"];
                    let owner = inner.holder_managers.get(&key).cloned();
                    if apply {
                        if let (Some(h), Some(w), Some(o)) = (holder, wanted.as_str(), &owner) {
                            if h != w && *o != manager {
                                return status(
                                    409,
                                    "Conflict",
                                    &format!("Apply failed with 1 conflict: conflict with {o:?}: .spec.holderIdentity"),
                                );
                            }
                        }
                    }
                    if wanted.is_string() {
                        inner.holder_managers.insert(key.clone(), manager);
                    } else if body["spec"].get("holderIdentity").is_some() {
                        inner.holder_managers.remove(&key);
                    }
                }
                if content_type.contains("json-patch") {
                    // A `test` for null passes on a missing field, as it does on the API server.
                    let ops: Vec<Value> = body
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|op| {
                            !(op["op"] == "test"
                                && op["value"].is_null()
                                && op["path"]
                                    .as_str()
                                    .is_some_and(|p| object.pointer(p).is_none()))
                        })
                        .collect();
                    let patch: json_patch::Patch = match serde_json::from_value(Value::Array(ops)) {
                        Ok(p) => p,
                        Err(e) => return status(400, "BadRequest", &e.to_string()),
                    };
                    if let Err(e) = json_patch::patch(&mut object, &patch) {
                        return status(422, "Invalid", &e.to_string());
                    }
                } else if sub.as_deref() == Some("status") {
                    object["status"] = body["status"].clone();
                } else {
                    let mut body = body;
                    if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.remove("resourceVersion");
                    }
                    let spec_before = object["spec"].clone();
                    merge(&mut object, &body);
                    if key.0 == PIPELINES && object["spec"] != spec_before {
                        let generation = object["metadata"]["generation"].as_i64().unwrap_or(1);
                        object["metadata"]["generation"] = json!(generation + 1);
                    }
                }
                let kind = if existed { "MODIFIED" } else { "ADDED" };
                self.store(&mut inner, key.clone(), object.clone(), kind);
                let answer = inner.objects.get(&key).cloned().unwrap_or(object);
                ok(if existed { 200 } else { 201 }, &answer)
            }
            ("DELETE", Some(name)) => {
                let key = (collection, namespace.unwrap_or_default(), name);
                let mut inner = self.inner.lock().expect("fake api");
                match self.delete(&mut inner, key.clone()) {
                    Some(o) => ok(200, &o),
                    None => status(404, "NotFound", &format!("{} not found", key.2)),
                }
            }
            _ => status(405, "MethodNotAllowed", &format!("{method} {path}")),
        }
    }

    fn list(&self, namespace: Option<String>) -> Response {
        let inner = self.inner.lock().expect("fake api");
        let items: Vec<Value> = inner
            .objects
            .iter()
            .filter(|((c, ns, _), _)| c == PIPELINES && namespace.as_ref().is_none_or(|n| n == ns))
            .map(|(_, o)| o.clone())
            .collect();
        ok(
            200,
            &json!({
                "apiVersion": "tap.dev/v1alpha1",
                "kind": "TransactionPipelineList",
                "metadata": {"resourceVersion": inner.resource_version.to_string()},
                "items": items,
            }),
        )
    }

    fn watch(&self, namespace: Option<String>, query: &str) -> Response {
        let since: u64 = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("resourceVersion="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let receiver = self.events.subscribe();
        let backlog: Vec<(u64, String, Value)> = self
            .inner
            .lock()
            .expect("fake api")
            .history
            .iter()
            .filter(|(rv, _, _)| *rv > since)
            .cloned()
            .collect();
        let last = backlog.last().map(|(rv, _, _)| *rv).unwrap_or(since);
        let in_scope = move |object: &Value| {
            namespace
                .as_ref()
                .is_none_or(|ns| object["metadata"]["namespace"] == json!(ns))
        };
        let backlog = futures::stream::iter(backlog);
        let live = futures::stream::unfold(receiver, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(event) => return Some((event, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        use futures::StreamExt as _;
        let stream = backlog
            .chain(live.filter(move |(rv, _, _)| std::future::ready(*rv > last)))
            .filter(move |(_, _, object)| std::future::ready(in_scope(object)))
            .map(|(_, kind, object)| {
                let line = json!({"type": kind, "object": object}).to_string() + "\n";
                Ok::<_, std::convert::Infallible>(Bytes::from(line))
            });
        Response::builder()
            .status(200)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(stream))
            .expect("watch response")
    }
}

async fn handle(State(api): State<FakeApi>, request: Request) -> Response {
    api.answer(request).await
}
