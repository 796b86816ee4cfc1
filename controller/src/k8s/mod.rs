//! The Kubernetes front end: a `kube::runtime::Controller` on `TransactionPipeline`s, leader election,
//! and the HTTP server for `/metrics`, `/healthz` and `/readyz`.
//!
//! Readiness (`/readyz`): without leader election, 200 once every watcher has listed its
//! TransactionPipelines (the reflector stores are ready). With leader election, 200 once this process
//! takes part in the election: a standby waiting for the Lease is ready (it can take over at once), and
//! the leader is ready too. `/healthz` is 200 while the process runs.
//!
//! RBAC the controller uses:
//! - `tap.dev` `transactionpipelines`: list, watch (the watcher), patch (finalizer JSON patches);
//!   `transactionpipelines/status`: patch (server-side apply).
//! - core `secrets`: get, create, patch (server-side apply of `<pipeline>-api-key`; an apply that
//!   creates the object is also authorized as `create`).
//! - `events.k8s.io` `events`: create, patch (a repeated event becomes a series).
//! - `coordination.k8s.io` `leases` (with leader election): get, create, patch.

pub mod context;
pub mod error;
pub mod events;
#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod secret;
pub mod status;
pub mod suffix_guard;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::{predicates, reflector, watcher, Controller, Predicate, WatchStreamExt};
use kube::Client;
use tokio::sync::{oneshot, watch};

pub use context::{Backend, Context};
pub use error::{Error, ErrorCategory};
pub use metrics::Metrics;
pub use reconcile::{error_policy, reconcile};

use crate::api::TransactionPipeline;
use crate::engine::Engine;

/// Field manager of every server-side apply, and the Events' reporting controller.
pub const FIELD_MANAGER: &str = "tap-controller";

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
    /// Name of the Lease (namespace: `POD_NAMESPACE`, default `default`).
    pub lease_name: String,
    /// Tags added to every AWS resource.
    pub extra_tags: BTreeMap<String, String>,
}

/// Liveness and readiness as the HTTP server reports them.
#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Metrics,
    health: Health,
}

/// The router of the HTTP server.
pub fn router(metrics: Metrics, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(serve_ready))
        .with_state(HttpState { metrics, health })
}

async fn serve_metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn serve_ready(State(state): State<HttpState>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn termination() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn until_true(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Runs the controller until SIGTERM: HTTP server, leader election (optional), Controller(s).
pub async fn run(config: RunConfig, sdk: aws_config::SdkConfig) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let metrics = Metrics::new();
    let observer = metrics.clone();
    let engine = Engine::new(sdk, config.concurrency, config.extra_tags.clone())
        .with_call_observer(move |service, operation| observer.aws_call(service, operation));
    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::new(engine),
        metrics.clone(),
        config.resync,
    ));
    let health = Health::default();

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        termination().await;
        tracing::info!("termination signal: shutting down");
        let _ = shutdown_tx.send(true);
    });

    let listener = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .with_context(|| format!("binding {}", config.metrics_addr))?;
    tracing::info!(addr = %config.metrics_addr, "serving /metrics, /healthz, /readyz");
    let server = {
        let app = router(metrics, health.clone());
        let stop = until_true(shutdown_rx.clone());
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
        lead(&config, client, ctx, health.clone(), shutdown_rx.clone()).await
    } else {
        run_controllers(
            client,
            &config.namespaces,
            ctx,
            health.clone(),
            true,
            until_true(shutdown_rx.clone()),
        )
        .await;
        Ok(())
    };
    health.set_ready(false);
    // The server stops on the same signal; if the controller ended on its own (error), stop it too.
    if !*shutdown_rx.borrow() {
        server.abort();
    }
    let _ = server.await;
    result
}

/// Contends for the Lease; runs the controllers while holding it; stops them when it is lost.
async fn lead(
    config: &RunConfig,
    client: Client,
    ctx: Arc<Context>,
    health: Health,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let namespace = leader::lease_namespace();
    let identity = leader::identity();
    let mut leadership =
        leader::Leadership::join(client.clone(), &config.lease_name, &namespace, &identity).await?;
    health.set_ready(true);
    tracing::info!(lease = %config.lease_name, %namespace, %identity, "joined leader election");
    let result = loop {
        tokio::select! {
            acquired = leadership.acquired() => {
                if let Err(e) = acquired {
                    break Err(e);
                }
            }
            _ = until_true(shutdown.clone()) => break Ok(()),
        }
        tracing::info!(%identity, "acquired the lease: starting the controller");
        let (lost_tx, lost_rx) = oneshot::channel::<()>();
        let stop = {
            let shutdown = shutdown.clone();
            async move {
                tokio::select! {
                    _ = until_true(shutdown) => {}
                    _ = lost_rx => {}
                }
            }
        };
        let controllers = run_controllers(
            client.clone(),
            &config.namespaces,
            ctx.clone(),
            health.clone(),
            false,
            stop,
        );
        tokio::pin!(controllers);
        tokio::select! {
            _ = &mut controllers => {}
            _ = leadership.lost() => {
                tracing::warn!(%identity, "lost the lease: stopping the controller");
                let _ = lost_tx.send(());
                controllers.await;
            }
        }
        if *shutdown.borrow() {
            break Ok(());
        }
    };
    leadership.release().await;
    result
}

/// Runs one Controller over all namespaces (or one per listed namespace) until `stop` resolves, then
/// lets in-flight reconciles finish. With `readiness`, marks the process ready once every store is
/// ready (the watchers have listed their objects).
pub async fn run_controllers(
    client: Client,
    namespaces: &[String],
    ctx: Arc<Context>,
    health: Health,
    readiness: bool,
    stop: impl std::future::Future<Output = ()> + Send,
) {
    let apis: Vec<Api<TransactionPipeline>> = if namespaces.is_empty() {
        vec![Api::all(client)]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    let mut stores = Vec::new();
    let mut wakers = Vec::new();
    let mut stoppers = Vec::new();
    let mut runs = Vec::new();
    for api in apis {
        let (waker, woken) = futures::channel::mpsc::unbounded();
        wakers.push((api.namespace().map(str::to_string), waker));
        let (reader, writer) = reflector::store();
        // Status-only changes (our own status patches) do not trigger a reconcile: only spec changes
        // (generation, which the API server also bumps when deletion starts) and finalizer changes do.
        let stream = watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .reflect(writer)
            .applied_objects()
            .predicate_filter(
                predicates::generation.combine(predicates::finalizers),
                Default::default(),
            );
        let (tx, rx) = oneshot::channel::<()>();
        stoppers.push(tx);
        stores.push(reader.clone());
        let run = Controller::for_stream(stream, reader)
            .reconcile_on(woken)
            .graceful_shutdown_on(async move {
                let _ = rx.await;
            })
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|result| async move {
                match result {
                    Ok((object, _)) => tracing::debug!(pipeline = %object, "reconcile done"),
                    Err(e) => tracing::debug!(error = %e, "reconcile ended in error"),
                }
            });
        runs.push(run);
    }
    ctx.suffixes.set_stores(stores.clone());
    ctx.suffixes.set_wakers(wakers);
    if readiness {
        let health = health.clone();
        tokio::spawn(async move {
            for store in stores {
                if store.wait_until_ready().await.is_err() {
                    return;
                }
            }
            health.set_ready(true);
            tracing::info!("watchers are running: ready");
        });
    }
    let all = futures::future::join_all(runs);
    tokio::pin!(all);
    tokio::select! {
        _ = &mut all => {}
        _ = stop => {
            for tx in stoppers {
                let _ = tx.send(());
            }
            all.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }

    #[tokio::test]
    async fn health_readiness_and_metrics_are_served() {
        let metrics = Metrics::new();
        drop(metrics.reconcile_timer());
        let health = Health::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(metrics, health.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });

        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        health.set_ready(true);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let scrape = get(addr, "/metrics").await;
        assert!(scrape.starts_with("HTTP/1.1 200"), "{scrape}");
        assert!(scrape.contains("application/openmetrics-text"), "{scrape}");
        assert!(scrape.contains("tap_reconciles_total 1"), "{scrape}");
    }
}
