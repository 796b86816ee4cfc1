//! The whole controller ([`serve`]) against the in-memory API server ([`fake_api`]): readiness, the
//! API access it uses (the RBAC contract), two replicas under leader election, process metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::fake_api::FakeApi;
use super::fixtures::{finalized, pipeline};
use super::*;
use crate::drivers::SecretValue;
use crate::engine::{DriftMemory, EngineError, Pipeline, Report};

/// Bound of every wait in these tests.
const WAIT: Duration = Duration::from_secs(20);

fn config(leader_election: bool, identity: &str) -> RunConfig {
    // RUST_LOG=debug shows what the controller did.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    RunConfig {
        resync: Duration::from_millis(200),
        concurrency: 1,
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        namespaces: Vec::new(),
        leader_election,
        lease_name: "tap-controller".into(),
        lease_namespace: "tap-system".into(),
        identity: identity.into(),
        lease_duration_seconds: 2,
        shutdown_timeout: Duration::from_secs(5),
        extra_tags: Default::default(),
        max_concurrent_reconciles: DEFAULT_MAX_CONCURRENT_RECONCILES,
        resync_jitter: 0.0,
        aws_rate_limits: crate::aws::RateLimits::none(),
    }
}

/// What every replica's backend reports: reconcile and teardown intervals per replica, and how
/// often two reconciles overlapped.
#[derive(Default)]
struct Probe {
    /// Walks in progress, per replica.
    active: Mutex<BTreeMap<String, usize>>,
    overlaps: AtomicUsize,
    log: Mutex<Vec<(String, Instant, Instant)>>,
    done: Option<watch::Sender<usize>>,
}

impl Probe {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            done: Some(watch::channel(0).0),
            ..Default::default()
        })
    }

    fn count(&self, replica: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _, _)| r == replica)
            .count()
    }

    /// Resolves once `replica` has finished `n` walks.
    async fn walks(&self, replica: &str, n: usize) {
        let mut rx = self.done.as_ref().unwrap().subscribe();
        tokio::time::timeout(WAIT, async {
            while self.count(replica) < n {
                let _ = rx.changed().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{replica} did not finish {n} walks within {WAIT:?}"));
    }

    fn first_start(&self, replica: &str) -> Option<Instant> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _, _)| r == replica)
            .map(|(_, s, _)| *s)
            .min()
    }

    fn last_end(&self, replica: &str) -> Option<Instant> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _, _)| r == replica)
            .map(|(_, _, e)| *e)
            .max()
    }
}

/// A backend whose every walk takes `walk` and reports a converged stack (with an API key).
struct ProbeBackend {
    replica: String,
    probe: Arc<Probe>,
    walk: Duration,
}

impl ProbeBackend {
    fn walk(&self) -> BoxFuture<'_, Result<Report, EngineError>> {
        Box::pin(async move {
            let start = Instant::now();
            {
                let mut active = self.probe.active.lock().unwrap();
                if active.iter().any(|(r, n)| *r != self.replica && *n > 0) {
                    self.probe.overlaps.fetch_add(1, Ordering::SeqCst);
                }
                *active.entry(self.replica.clone()).or_default() += 1;
            }
            tokio::time::sleep(self.walk).await;
            *self
                .probe
                .active
                .lock()
                .unwrap()
                .get_mut(&self.replica)
                .unwrap() -= 1;
            self.probe
                .log
                .lock()
                .unwrap()
                .push((self.replica.clone(), start, Instant::now()));
            if let Some(done) = &self.probe.done {
                done.send_modify(|n| *n += 1);
            }
            Ok(Report {
                api_key: Some(SecretValue("key-value".into())),
                ..Default::default()
            })
        })
    }
}

impl Backend for ProbeBackend {
    fn reconcile<'a>(
        &'a self,
        _: Pipeline<'a>,
        _: &'a mut DriftMemory,
        _: std::time::Instant,
    ) -> BoxFuture<'a, Result<Report, EngineError>> {
        self.walk()
    }

    fn teardown<'a>(&'a self, _: Pipeline<'a>) -> BoxFuture<'a, Result<Report, EngineError>> {
        self.walk()
    }
}

/// A running `serve`: its HTTP address, its shutdown trigger and its task.
struct Replica {
    addr: SocketAddr,
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Replica {
    async fn start(api: &FakeApi, config: RunConfig, probe: &Arc<Probe>, walk: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (trigger, shutdown) = Shutdown::manual();
        let backend = Arc::new(ProbeBackend {
            replica: config.identity.clone(),
            probe: probe.clone(),
            walk,
        });
        let client = api.client();
        let task = tokio::spawn(async move {
            serve(client, &config, backend, Metrics::new(), listener, shutdown).await
        });
        Self {
            addr,
            trigger,
            task,
        }
    }

    /// Requests the shutdown and waits for `serve` to return; how long that took.
    async fn stop(self) -> Duration {
        let started = Instant::now();
        self.trigger.trigger();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("serve returns after the shutdown request")
            .expect("serve panicked")
            .expect("serve failed");
        started.elapsed()
    }
}

/// The status code of `GET path`.
async fn status_of(addr: SocketAddr, path: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

async fn scrape(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
}

/// Polls `/readyz` (every 20 ms, bounded) until it answers 200; how long that took.
async fn ready_within(addr: SocketAddr, bound: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if status_of(addr, "/readyz").await == 200 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "/readyz is not 200 after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) for a condition on the fake API server's state.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < WAIT, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_200_once_the_initial_list_is_served_without_leader_election() {
    let api = FakeApi::new();
    api.put_pipeline(&finalized(pipeline("payments", "pay1", 60)));
    api.hold_lists();
    let probe = Probe::new();
    let replica = Replica::start(&api, config(false, "solo"), &probe, Duration::ZERO).await;

    tokio::time::timeout(WAIT, api.lists_requested(1))
        .await
        .expect("the watcher lists the pipelines");
    assert_eq!(status_of(replica.addr, "/healthz").await, 200);
    assert_eq!(
        status_of(replica.addr, "/readyz").await,
        503,
        "not ready before the list is answered"
    );
    api.release_lists();
    let took = ready_within(replica.addr, Duration::from_secs(10)).await;
    eprintln!("/readyz 200 {took:?} after the initial list was served");
    // And the controller does reconcile (the Controller's own wait on the store is not starved).
    probe.walks("solo", 1).await;
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_200_with_leader_election_for_the_leader_after_its_list() {
    let api = FakeApi::new();
    api.put_pipeline(&finalized(pipeline("payments", "pay1", 60)));
    api.hold_lists();
    let probe = Probe::new();
    let replica = Replica::start(&api, config(true, "leader"), &probe, Duration::ZERO).await;

    // Lists come only once the Lease is held: the leader is ready whether or not they are served.
    tokio::time::timeout(WAIT, api.lists_requested(1))
        .await
        .expect("the leader's watcher lists the pipelines");
    ready_within(replica.addr, Duration::from_secs(1)).await;
    api.release_lists();
    probe.walks("leader", 1).await;
    assert_eq!(status_of(replica.addr, "/readyz").await, 200);
    replica.stop().await;
}

/// `(group, resource) -> verbs` of a set of rules.
fn verbs_of(rules: &[rbac::Rule]) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut map: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for (group, resource, verbs) in rules {
        map.entry((group.to_string(), resource.to_string()))
            .or_default()
            .extend(verbs.iter().map(|v| v.to_string()));
    }
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelines_whole_life_uses_exactly_the_rbac_contract() {
    let api = FakeApi::new();
    let probe = Probe::new();
    let replica = Replica::start(&api, config(true, "rbac"), &probe, Duration::ZERO).await;

    // Created without finalizer: finalizer, walk, status, Secret, Events.
    api.put_pipeline(&pipeline("payments", "pay1", 60));
    until("the API key Secret is written", || {
        api.object("/secrets", "default", "payments-api-key")
            .is_some()
    })
    .await;
    let secret = api
        .object("/secrets", "default", "payments-api-key")
        .unwrap();
    let owner = &secret["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "TransactionPipeline");
    assert_eq!(owner["controller"], true);
    assert!(
        owner.get("blockOwnerDeletion").is_none(),
        "blockOwnerDeletion would need update on transactionpipelines/finalizers: {owner}"
    );
    // Deleted: teardown through the finalizer, which the controller then removes.
    api.delete_pipeline("default", "payments");
    until("the pipeline is gone", || {
        api.pipeline("default", "payments").is_none()
    })
    .await;
    replica.stop().await;

    let mut used: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for request in api.requests() {
        for (group, resource, verb) in request.authorization() {
            used.entry((group, resource))
                .or_default()
                .insert(verb.to_string());
        }
    }
    let mut contract = verbs_of(rbac::WORKLOAD_RULES);
    contract.extend(verbs_of(rbac::LEASE_RULES));
    for (group, resource, verb, _why) in rbac::NOT_CALLED {
        let verbs = contract
            .get_mut(&(group.to_string(), resource.to_string()))
            .unwrap_or_else(|| panic!("NOT_CALLED names {group}/{resource}, not in the rules"));
        assert!(verbs.remove(*verb), "NOT_CALLED {verb} is not in the rules");
    }
    assert_eq!(
        used, contract,
        "the verbs the controller used (left) differ from the RBAC contract less NOT_CALLED (right)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_replica_waits_then_takes_over_within_the_lease_duration_never_both() {
    let api = FakeApi::new();
    api.put_pipeline(&finalized(pipeline("payments", "pay1", 60)));
    api.put_pipeline(&finalized(pipeline("risk", "risk1", 50)));
    let probe = Probe::new();
    let walk = Duration::from_millis(150);
    let a = Replica::start(&api, config(true, "replica-a"), &probe, walk).await;
    probe.walks("replica-a", 1).await;
    let b = Replica::start(&api, config(true, "replica-b"), &probe, walk).await;
    // The standby joins the election (ready) and waits while the leader keeps working, across more
    // than one Lease term (2 s), so past the leader's renewals.
    ready_within(b.addr, Duration::from_secs(10)).await;
    let a_walks = probe.count("replica-a");
    let term = Duration::from_secs(2);
    let watch_from = Instant::now();
    probe.walks("replica-a", a_walks + 10).await;
    if watch_from.elapsed() < term + Duration::from_millis(500) {
        tokio::time::sleep(term + Duration::from_millis(500) - watch_from.elapsed()).await;
    }
    assert_eq!(probe.count("replica-b"), 0, "the standby reconciled");

    // The leader stops (SIGTERM): it finishes its walk, releases the Lease; B takes over.
    let stopped_at = Instant::now();
    let a_stop = a.stop().await;
    probe.walks("replica-b", 1).await;
    let takeover = probe.first_start("replica-b").unwrap() - stopped_at;
    eprintln!("leader stopped in {a_stop:?}; the standby's first walk began {takeover:?} after the stop request");
    assert!(
        takeover <= term + Duration::from_secs(1),
        "takeover took {takeover:?}, more than the Lease duration {term:?} (+1 s)"
    );
    assert!(
        probe.last_end("replica-a").unwrap() <= probe.first_start("replica-b").unwrap(),
        "B started before A's last walk ended"
    );
    assert_eq!(
        probe.overlaps.load(Ordering::SeqCst),
        0,
        "the two replicas walked at the same time"
    );
    let lease = api
        .object("coordination.k8s.io/leases", "tap-system", "tap-controller")
        .expect("the Lease");
    assert_eq!(lease["spec"]["holderIdentity"], "replica-b");
    // The lock is the API server's field ownership of holderIdentity: it refuses another manager's
    // apply only if each replica applies under a field manager of its own.
    let managers: BTreeSet<String> = api
        .requests()
        .iter()
        .filter(|r| r.path.contains("/leases/") && r.content_type.contains("apply-patch"))
        .filter_map(|r| {
            r.query
                .split('&')
                .find_map(|kv| kv.strip_prefix("fieldManager="))
                .map(str::to_string)
        })
        .collect();
    assert_eq!(
        managers.len(),
        2,
        "one field manager per replica: {managers:?}"
    );
    b.stop().await;
    let lease = api
        .object("coordination.k8s.io/leases", "tap-system", "tap-controller")
        .expect("the Lease");
    assert!(
        lease["spec"].get("holderIdentity").is_none(),
        "released on shutdown: {lease}"
    );
}

/// The value of the first sample of `name` in an OpenMetrics scrape.
fn sample(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| {
            let (metric, value) = line.split_once(' ')?;
            (metric == name).then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {name} in the scrape:\n{scrape}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_include_process_rss_cpu_and_open_fds() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(Metrics::new(), Health::default());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let before = scrape(addr).await;
    let rss = sample(&before, "process_resident_memory_bytes");
    assert!(rss > 1_000_000.0, "RSS {rss} bytes");
    let fds = sample(&before, "process_open_fds");
    let cpu = sample(&before, "process_cpu_seconds_total");
    assert!(sample(&before, "process_max_fds") >= fds);
    assert!(sample(&before, "process_start_time_seconds") > 1.0e9);
    assert!(
        before.contains("# TYPE process_cpu_seconds counter"),
        "{before}"
    );

    // 32 more open files and some CPU work show up in the next scrape.
    let files: Vec<std::fs::File> = (0..32)
        .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
        .collect();
    let busy = Instant::now();
    let mut x = 0u64;
    while busy.elapsed() < Duration::from_millis(300) {
        x = x.wrapping_mul(31).wrapping_add(7);
    }
    std::hint::black_box(x);
    let after = scrape(addr).await;
    assert!(
        sample(&after, "process_open_fds") >= fds + 32.0,
        "open fds {fds} -> {}",
        sample(&after, "process_open_fds")
    );
    assert!(
        sample(&after, "process_cpu_seconds_total") >= cpu + 0.1,
        "cpu seconds {cpu} -> {}",
        sample(&after, "process_cpu_seconds_total")
    );
    drop(files);
}

/// What starts a reconcile: a spec change and the control annotations (a reconcile request, a pause, a
/// resume); not the controller's own finalizer and status writes, nor another tool's finalizer or a
/// label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_changes_and_control_annotations_start_a_reconcile_other_metadata_does_not() {
    let api = FakeApi::new();
    let probe = Probe::new();
    let mut config = config(false, "triggers");
    // No periodic resync inside the test: every walk is one a change started.
    config.resync = Duration::from_secs(3600);
    let replica = Replica::start(&api, config, &probe, Duration::ZERO).await;
    let current = || -> TransactionPipeline {
        serde_json::from_value(api.pipeline("default", "payments").expect("stored")).unwrap()
    };
    // Quiet for ten debounces: no walk started.
    let no_walk_after = |n: usize, what: &'static str| {
        let probe = probe.clone();
        async move {
            tokio::time::sleep(DEBOUNCE * 10).await;
            assert_eq!(probe.count("triggers"), n, "{what} started a walk");
        }
    };

    // Created: one walk (the finalizer it adds first is not a second one).
    api.put_pipeline(&pipeline("payments", "pay1", 60));
    probe.walks("triggers", 1).await;
    until("the status is written", || {
        api.pipeline("default", "payments").unwrap()["status"]["phase"] == "Ready"
    })
    .await;
    no_walk_after(1, "the controller's own finalizer and status").await;

    let mut p = current();
    p.metadata
        .finalizers
        .get_or_insert_default()
        .push("other.example/hold".into());
    p.labels_mut().insert("team".into(), "payments".into());
    api.put_pipeline(&p);
    no_walk_after(1, "another tool's finalizer, or a label,").await;

    let mut p = current();
    p.annotations_mut()
        .insert(crate::api::RECONCILE_REQUEST_ANNOTATION.into(), "1".into());
    api.put_pipeline(&p);
    probe.walks("triggers", 2).await;

    let mut p = current();
    p.annotations_mut()
        .insert(crate::api::PAUSED_ANNOTATION.into(), "true".into());
    api.put_pipeline(&p);
    until("the status says Paused", || {
        api.pipeline("default", "payments").unwrap()["status"]["phase"] == "Paused"
    })
    .await;
    assert_eq!(
        probe.count("triggers"),
        2,
        "a paused pipeline is not walked"
    );

    let mut p = current();
    p.annotations_mut().remove(crate::api::PAUSED_ANNOTATION);
    api.put_pipeline(&p);
    probe.walks("triggers", 3).await;

    let mut p = current();
    p.spec.functions.csv_validator.memory_mb += 128;
    p.metadata.generation = Some(2);
    api.put_pipeline(&p);
    probe.walks("triggers", 4).await;
    no_walk_after(4, "the walk's own status").await;
    replica.stop().await;
}
