//! The Kubernetes front end: a `kube::runtime::Controller` on `TransactionPipeline`s, leader election,
//! and the HTTP server for `/metrics`, `/healthz` and `/readyz`.
//!
//! Readiness (`/readyz`): without leader election, 200 once every watcher has listed its
//! TransactionPipelines (seen on the watch stream: its first `InitDone`). With leader election, 200
//! once this process takes part in the election: a standby waiting for the Lease is ready (it can take
//! over at once), and the leader is ready too. `/healthz` is 200 while the process runs.
//!
//! Shutdown (SIGTERM or Ctrl-C): no new reconcile starts, the in-flight ones get `shutdown_timeout`
//! (default 5 s) and are then abandoned, the Lease is released; a second signal exits at once, and the
//! process exits by itself at the latest `shutdown_timeout + SHUTDOWN_SLACK` after the first.
//!
//! RBAC the controller uses: [`rbac`] (the chart's rules are tested against it, and it against the
//! requests the controller makes).

pub mod context;
pub mod error;
pub mod events;
#[cfg(any(test, feature = "testing"))]
pub mod fake_api;
#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
pub mod heap;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod process_metrics;
pub mod rbac;
pub mod reconcile;
#[cfg(test)]
mod run_tests;
pub mod secret;
pub mod shutdown;
pub mod status;
pub mod suffix_guard;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use kube::api::Api;
use kube::runtime::{predicates, reflector, watcher, Controller, Predicate, WatchStreamExt};
use kube::{Client, ResourceExt};
use tokio::sync::{oneshot, watch};

pub use context::{Backend, Context};
pub use error::{Error, ErrorCategory};
pub use http::{router, Health};
pub use metrics::Metrics;
pub use reconcile::{error_policy, reconcile};
pub use shutdown::{
    Shutdown, ShutdownTrigger, HTTP_STOP_TIMEOUT, LEASE_RELEASE_TIMEOUT, SHUTDOWN_SLACK,
};

use crate::api::TransactionPipeline;
use crate::engine::Engine;

/// Field manager of every server-side apply, and the Events' reporting controller.
pub const FIELD_MANAGER: &str = "tap-controller";
/// What `kubectl apply` keeps of the last manifest it applied (a second copy of the spec).
const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// How `tap-controller run` runs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Requeue period of a converged pipeline (drift detection) and retry period of terminal errors.
    pub resync: Duration,
    /// AWS resources worked on at once within one pipeline.
    pub concurrency: usize,
    /// Address of `/metrics`, `/healthz`, `/readyz`.
    pub metrics_addr: SocketAddr,
    /// Namespaces to watch; empty = all.
    pub namespaces: Vec<String>,
    pub leader_election: bool,
    /// Name of the Lease.
    pub lease_name: String,
    /// Namespace of the Lease (`POD_NAMESPACE`, default `default`).
    pub lease_namespace: String,
    /// This process's identity in the Lease.
    pub identity: String,
    /// How long the Lease stays valid without renewal: a standby takes over at most this long after
    /// the leader stopped renewing (at once after a release, as soon as it looks again).
    pub lease_duration_seconds: u64,
    /// How long in-flight reconciles may run on after a termination signal before they are abandoned.
    pub shutdown_timeout: Duration,
    /// Tags added to every AWS resource.
    pub extra_tags: BTreeMap<String, String>,
    /// Pipelines reconciled at once across the whole controller (the kube `Controller`'s concurrency;
    /// 0: no limit). With `concurrency` per pipeline this bounds the AWS calls in flight, hence the
    /// sockets and the memory, and keeps a fleet created together from bursting the account's limits.
    pub max_concurrent_reconciles: u16,
    /// Fraction of the resync period taken off each converged pipeline's next resync, at random
    /// (0.1: between 0.9 and 1.0 × `resync`), so that pipelines created together do not resync together.
    pub resync_jitter: f64,
    /// Outbound AWS requests per second, per service.
    pub aws_rate_limits: crate::aws::RateLimits,
}

/// Default of [`RunConfig::max_concurrent_reconciles`]: 10 pipelines × 8 resources = at most 80 AWS calls
/// in flight.
pub const DEFAULT_MAX_CONCURRENT_RECONCILES: u16 = 10;
/// Default of [`RunConfig::resync_jitter`].
pub const DEFAULT_RESYNC_JITTER: f64 = 0.1;
/// How long the Controller waits after a change before reconciling (further changes inside it restart
/// the wait): changes made together (an apply and another tool's finalizer right after it) cost one
/// reconcile, not two. Short, because a new pipeline waits it before its first walk.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// What of a pipeline triggers a reconcile when it changes: its spec (generation, which the API server
/// also bumps when deletion starts) and its control annotations (pausing, resuming, asking for a
/// reconcile now). Not our own status patches, nor the finalizer the first reconcile adds before it
/// walks (that would walk a new stack twice); a finalizer someone removes by hand is put back by the
/// next reconcile, at most one resync period later.
pub fn reconcile_trigger(pipeline: &TransactionPipeline) -> Option<u64> {
    predicates::generation
        .combine(|p: &TransactionPipeline| {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            p.control_annotations().hash(&mut hasher);
            Some(hasher.finish())
        })
        .hash_property(pipeline)
}

impl RunConfig {
    /// The most a shutdown takes from the first termination signal to the exit.
    pub fn shutdown_deadline(&self) -> Duration {
        self.shutdown_timeout + SHUTDOWN_SLACK
    }
}

/// Runs the controller until `shutdown`: connects with the default kube configuration (in-cluster
/// or `KUBECONFIG`), binds the HTTP server, then [`serve`].
pub async fn run(
    config: RunConfig,
    sdk: aws_config::SdkConfig,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let metrics = Metrics::new();
    let observer = metrics.clone();
    let errors = metrics.clone();
    // One identity for every replica: the Lease already makes one of them active, and a restarted
    // controller takes its own lock back at once. It never waits for someone else's: it requeues.
    let lock = crate::engine::LockOptions {
        holder: format!(
            "controller {}/{}",
            config.lease_namespace, config.lease_name
        ),
        timeout: std::time::Duration::ZERO,
        ..Default::default()
    };
    let engine = Engine::new(sdk, config.concurrency, config.extra_tags.clone())
        .with_lock(lock)
        .with_client_options(crate::aws::ClientOptions {
            rate_limits: config.aws_rate_limits.clone(),
            ..Default::default()
        })
        .with_call_observer(move |service, operation| observer.aws_call(service, operation))
        .with_error_observer(move |service, operation, code| {
            errors.aws_error(service, operation, code)
        });
    let listener = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .with_context(|| format!("binding {}", config.metrics_addr))?;
    serve(
        client,
        &config,
        Arc::new(engine),
        metrics,
        listener,
        shutdown,
    )
    .await
}

/// The controller on a given client, backend and listener, until `shutdown`: the HTTP server,
/// leader election (optional) and the Controller(s).
///
/// On shutdown: no new reconcile starts; in-flight ones get `config.shutdown_timeout` to finish and are
/// then abandoned (dropped at their next await point: a walk only ever moves AWS towards the spec,
/// and the next start observes where it stopped); the Lease is released (bounded by
/// [`LEASE_RELEASE_TIMEOUT`]); the HTTP server stops (bounded by [`HTTP_STOP_TIMEOUT`]).
pub async fn serve(
    client: Client,
    config: &RunConfig,
    backend: Arc<dyn Backend>,
    metrics: Metrics,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let ctx = Arc::new(
        Context::new(client.clone(), backend, metrics.clone(), config.resync)
            .with_resync_jitter(config.resync_jitter),
    );
    let health = Health::default();
    let addr = listener
        .local_addr()
        .context("the HTTP listener's address")?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    let server = {
        let app = router(metrics, health.clone());
        let stop = shutdown.requested();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(error = %e, "HTTP server");
            }
        })
    };

    let result = if config.leader_election {
        lead(config, client, ctx, health.clone(), shutdown.clone()).await
    } else {
        let stop = shutdown.requested();
        run_controllers(
            client,
            &config.namespaces,
            ctx,
            Some(health.clone()),
            async move {
                stop.await;
                Stop::Shutdown
            },
            config.shutdown_timeout,
            config.max_concurrent_reconciles,
        )
        .await;
        Ok(())
    };
    health.set_ready(false);
    // The server stops on the same request; if the controller ended on its own (error), stop it too.
    if shutdown.is_requested() {
        let abort = server.abort_handle();
        if tokio::time::timeout(HTTP_STOP_TIMEOUT, server)
            .await
            .is_err()
        {
            abort.abort();
        }
    } else {
        server.abort();
    }
    tracing::info!("stopped");
    result
}

/// Why [`run_controllers`] is asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The process shuts down: in-flight reconciles may finish within the drain period.
    Shutdown,
    /// The Lease is lost: another replica may be reconciling already, so stop at once.
    LeadershipLost,
}

/// Contends for the Lease; runs the controllers while holding it; stops them when it is lost; releases
/// it on shutdown.
async fn lead(
    config: &RunConfig,
    client: Client,
    ctx: Arc<Context>,
    health: Health,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let namespace = config.lease_namespace.as_str();
    let identity = config.identity.as_str();
    let join = leader::Leadership::join(
        client.clone(),
        &config.lease_name,
        namespace,
        identity,
        config.lease_duration_seconds,
    );
    let mut leadership = tokio::select! {
        joined = join => joined?,
        _ = shutdown.requested() => {
            tracing::info!("shutting down before joining the leader election");
            return Ok(());
        }
    };
    health.set_ready(true);
    tracing::info!(lease = %config.lease_name, %namespace, %identity, "joined leader election");
    let result = loop {
        tokio::select! {
            acquired = leadership.acquired() => {
                if let Err(e) = acquired {
                    break Err(e);
                }
            }
            _ = shutdown.requested() => break Ok(()),
        }
        tracing::info!(%identity, "acquired the lease: starting the controller");
        let stop = {
            let shutdown = shutdown.requested();
            let lost = leadership.lost();
            async move {
                tokio::select! {
                    _ = shutdown => Stop::Shutdown,
                    _ = lost => Stop::LeadershipLost,
                }
            }
        };
        let why = run_controllers(
            client.clone(),
            &config.namespaces,
            ctx.clone(),
            None,
            stop,
            config.shutdown_timeout,
            config.max_concurrent_reconciles,
        )
        .await;
        if why == Some(Stop::LeadershipLost) {
            tracing::warn!(%identity, "lost the lease: the controller stopped");
        }
        if shutdown.is_requested() {
            break Ok(());
        }
    };
    match tokio::time::timeout(LEASE_RELEASE_TIMEOUT, leadership.release()).await {
        Ok(()) => {}
        Err(_) => tracing::warn!(
            timeout = ?LEASE_RELEASE_TIMEOUT,
            "the Lease was not released in time: it expires after its duration"
        ),
    }
    result
}

/// Reconciles in flight (started and neither finished nor dropped).
#[derive(Clone)]
struct InFlight(Arc<watch::Sender<usize>>);

struct InFlightGuard(Arc<watch::Sender<usize>>);

impl InFlight {
    fn new() -> Self {
        Self(Arc::new(watch::channel(0).0))
    }

    fn enter(&self) -> InFlightGuard {
        self.0.send_modify(|n| *n += 1);
        InFlightGuard(self.0.clone())
    }

    fn count(&self) -> usize {
        *self.0.borrow()
    }

    async fn idle(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Marks the process ready once every watcher has listed its objects (its first `InitDone`, after
/// which its reflector store holds them). Observed on the watch stream itself: the store's own
/// readiness signal wakes one waiter only, and the Controller is already waiting on it.
struct Readiness {
    health: Health,
    pending: AtomicUsize,
}

impl Readiness {
    fn listed(&self) {
        if self.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.health.set_ready(true);
            tracing::info!("watchers are running: ready");
        }
    }
}

/// Runs one Controller over all namespaces (or one per listed namespace) until `stop` resolves.
/// With `readiness`, marks the process ready once every watcher has listed its objects. At most
/// `max_concurrent` pipelines are reconciled at once (0: no limit), across all the Controllers.
///
/// On [`Stop::Shutdown`] no new reconcile starts and the in-flight ones get `drain` to finish; on
/// [`Stop::LeadershipLost`] (or once `drain` is over) they are abandoned. Returns why it stopped
/// (`None`: the controllers ended on their own).
pub async fn run_controllers(
    client: Client,
    namespaces: &[String],
    ctx: Arc<Context>,
    readiness: Option<Health>,
    stop: impl std::future::Future<Output = Stop> + Send,
    drain: Duration,
    max_concurrent: u16,
) -> Option<Stop> {
    let apis: Vec<Api<TransactionPipeline>> = if namespaces.is_empty() {
        vec![Api::all(client)]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    let readiness = readiness.map(|health| {
        Arc::new(Readiness {
            health,
            pending: AtomicUsize::new(apis.len()),
        })
    });
    let in_flight = InFlight::new();
    // One Controller per namespace: each gets its own limit from the kube runtime, and a semaphore
    // shared by all of them keeps the total bounded too.
    let permits = (max_concurrent > 0)
        .then(|| Arc::new(tokio::sync::Semaphore::new(usize::from(max_concurrent))));
    let controller_config = kube::runtime::controller::Config::default()
        .concurrency(max_concurrent)
        .debounce(DEBOUNCE);
    let mut stores = Vec::new();
    let mut wakers = Vec::new();
    let mut stoppers = Vec::new();
    let mut runs = Vec::new();
    for api in apis {
        let (waker, woken) = futures::channel::mpsc::unbounded();
        wakers.push((api.namespace().map(str::to_string), waker));
        let (reader, writer) = reflector::store();
        let readiness = readiness.clone();
        let mut listed = false;
        // What triggers a reconcile: see `reconcile_trigger`.
        let stream = watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            // The store holds every pipeline for the life of the process: not the parts only the API
            // server and kubectl use (the controller applies with its own field manager).
            .modify(|pipeline: &mut TransactionPipeline| {
                pipeline.managed_fields_mut().clear();
                if let Some(annotations) = pipeline.metadata.annotations.as_mut() {
                    annotations.remove(LAST_APPLIED_ANNOTATION);
                }
            })
            .reflect(writer)
            .inspect_ok(move |event| {
                if matches!(event, watcher::Event::InitDone) && !listed {
                    listed = true;
                    if let Some(readiness) = &readiness {
                        readiness.listed();
                    }
                }
            })
            .applied_objects()
            .predicate_filter(reconcile_trigger, Default::default());
        let (tx, rx) = oneshot::channel::<()>();
        stoppers.push(tx);
        stores.push(reader.clone());
        let in_flight = in_flight.clone();
        let permits = permits.clone();
        let run = Controller::for_stream(stream, reader)
            .with_config(controller_config.clone())
            .reconcile_on(woken)
            .graceful_shutdown_on(async move {
                let _ = rx.await;
            })
            .run(
                move |pipeline, ctx| {
                    let guard = in_flight.enter();
                    let permits = permits.clone();
                    async move {
                        let _guard = guard;
                        let _permit = match &permits {
                            Some(p) => Some(p.clone().acquire_owned().await.expect("never closed")),
                            None => None,
                        };
                        reconcile(pipeline, ctx).await
                    }
                },
                error_policy,
                ctx.clone(),
            )
            .for_each(|result| async move {
                match result {
                    Ok((object, _)) => tracing::debug!(pipeline = %object, "reconcile done"),
                    Err(e) => tracing::debug!(error = %e, "reconcile ended in error"),
                }
            });
        runs.push(run);
    }
    ctx.suffixes.set_stores(stores);
    ctx.suffixes.set_wakers(wakers);
    let all = futures::future::join_all(runs);
    tokio::pin!(all);
    let why = tokio::select! {
        _ = &mut all => return None,
        why = stop => why,
    };
    for tx in stoppers {
        let _ = tx.send(());
    }
    if why == Stop::Shutdown {
        let drained = tokio::time::timeout(drain, async {
            tokio::select! {
                _ = &mut all => {}
                _ = in_flight.idle() => {}
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                in_flight = in_flight.count(),
                drain = ?drain,
                "abandoning the in-flight reconciles: each one resumes from what AWS holds at the next start"
            );
        }
    } else if in_flight.count() > 0 {
        tracing::warn!(
            in_flight = in_flight.count(),
            "abandoning the in-flight reconciles: the Lease is lost"
        );
    }
    // Dropping the controllers aborts whatever still runs.
    Some(why)
}
