//! What every reconcile shares: the Kubernetes client, the engine (behind [`Backend`]), metrics, the Event
//! recorder, the duplicate-suffix guard, and per pipeline its drift memory and failure backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder, Reporter};
use kube::{Client, Resource};

use super::heap::IdleTrim;
use super::metrics::Metrics;
use super::suffix_guard::SuffixGuard;
use super::FIELD_MANAGER;
use crate::api::TransactionPipeline;
use crate::engine::{DriftMemory, Engine, EngineError, Mode, Pipeline, Report};

/// First retry after a transient error; doubles per consecutive failure up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(5);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What the reconciler needs from the engine: converge or tear down one pipeline. [`Engine`] is the
/// implementation; tests substitute their own.
pub trait Backend: Send + Sync {
    /// Converges the pipeline, taking account-wide answers read at or after `as_of` (see
    /// `drivers::batch`).
    fn reconcile<'a>(
        &'a self,
        pipeline: Pipeline<'a>,
        memory: &'a mut DriftMemory,
        as_of: Instant,
    ) -> BoxFuture<'a, Result<Report, EngineError>>;
    fn teardown<'a>(&'a self, pipeline: Pipeline<'a>)
        -> BoxFuture<'a, Result<Report, EngineError>>;
}

impl Backend for Engine {
    fn reconcile<'a>(
        &'a self,
        pipeline: Pipeline<'a>,
        memory: &'a mut DriftMemory,
        as_of: Instant,
    ) -> BoxFuture<'a, Result<Report, EngineError>> {
        Box::pin(async move {
            Engine::reconcile_as_of(self, &pipeline, Mode::Apply, memory, as_of).await
        })
    }

    fn teardown<'a>(
        &'a self,
        pipeline: Pipeline<'a>,
    ) -> BoxFuture<'a, Result<Report, EngineError>> {
        Box::pin(async move { Engine::teardown(self, &pipeline, Mode::Apply).await })
    }
}

/// The backoff after consecutive transient failures: 5 s, 10 s, 20 s … at most 5 min.
pub fn failure_backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(MIN_BACKOFF)
        .with_max_delay(MAX_BACKOFF)
        .with_factor(2.0)
        .without_max_times()
        .build()
}

/// `requeue`, shortened at random by up to `fraction` of it if it is the full resync period.
pub fn jittered(requeue: Duration, resync: Duration, fraction: f64) -> Duration {
    if requeue == resync && fraction > 0.0 {
        requeue.mul_f64(1.0 - fastrand::f64() * fraction)
    } else {
        requeue
    }
}

/// What a reconcile was asked for: the spec's generation and the reconcile request annotation's value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Handled {
    pub generation: Option<i64>,
    pub request: Option<String>,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub backend: Arc<dyn Backend>,
    pub metrics: Metrics,
    pub recorder: Recorder,
    /// Requeue period of a converged pipeline (drift detection).
    pub resync: Duration,
    /// Fraction of `resync` taken off at random from each converged pipeline's next resync (0: none).
    pub resync_jitter: f64,
    pub suffixes: SuffixGuard,
    /// Trims the heap whenever the last running reconcile ends.
    pub heap: IdleTrim,
    /// Drift memory per pipeline (by uid), between reconciles.
    memories: Mutex<HashMap<String, DriftMemory>>,
    /// What each pipeline's last reconcile was asked for (by uid): tells a spec change or a reconcile
    /// request from a resync.
    handled: Mutex<HashMap<String, Handled>>,
    /// Backoff per pipeline (`namespace/name`) while it keeps failing transiently.
    failures: Mutex<HashMap<String, ExponentialBackoff>>,
}

impl Context {
    pub fn new(
        client: Client,
        backend: Arc<dyn Backend>,
        metrics: Metrics,
        resync: Duration,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            backend,
            metrics,
            resync,
            resync_jitter: 0.0,
            suffixes: SuffixGuard::default(),
            heap: IdleTrim::default(),
            memories: Default::default(),
            handled: Default::default(),
            failures: Default::default(),
        }
    }

    /// Spreads resyncs: `fraction` of the period taken off at random from each next resync.
    pub fn with_resync_jitter(mut self, fraction: f64) -> Self {
        self.resync_jitter = fraction.clamp(0.0, 0.9);
        self
    }

    /// The requeue of a converged pipeline: a full resync period comes earlier by up to
    /// `resync_jitter` of it (never later: drift is still looked for at least once a period), so that
    /// pipelines created together drift apart instead of resyncing all at once; shorter requeues
    /// (provisioning, verifying a correction, a retry) are kept as they are.
    pub fn jittered(&self, requeue: Duration) -> Duration {
        jittered(requeue, self.resync, self.resync_jitter)
    }

    pub fn take_memory(&self, key: &str) -> DriftMemory {
        self.memories
            .lock()
            .expect("memory lock poisoned")
            .remove(key)
            .unwrap_or_default()
    }

    pub fn put_memory(&self, key: &str, memory: DriftMemory) {
        self.memories
            .lock()
            .expect("memory lock poisoned")
            .insert(key.to_string(), memory);
    }

    /// Records what a reconcile of pipeline `key` was asked for; returns what the previous one was.
    pub fn handle(&self, key: &str, now: Handled) -> Option<Handled> {
        self.handled
            .lock()
            .expect("handled lock poisoned")
            .insert(key.to_string(), now)
    }

    /// Everything kept about a pipeline that is gone.
    pub fn forget(&self, key: &str, owner: &str) {
        self.memories
            .lock()
            .expect("memory lock poisoned")
            .remove(key);
        self.handled
            .lock()
            .expect("handled lock poisoned")
            .remove(key);
        self.succeeded(owner);
        self.metrics.set_phase(owner, None);
    }

    /// The delay before retrying a pipeline that failed again.
    pub fn next_backoff(&self, owner: &str) -> Duration {
        self.failures
            .lock()
            .expect("failures lock poisoned")
            .entry(owner.to_string())
            .or_insert_with(failure_backoff)
            .next()
            .unwrap_or(MAX_BACKOFF)
    }

    pub fn succeeded(&self, owner: &str) {
        self.failures
            .lock()
            .expect("failures lock poisoned")
            .remove(owner);
    }

    pub async fn publish(&self, pipeline: &TransactionPipeline, event: &Event) {
        let reference: ObjectReference = pipeline.object_ref(&());
        if let Err(e) = self.recorder.publish(event, &reference).await {
            tracing::warn!(pipeline = %pipeline.owner_key(), reason = %event.reason, error = %e, "publishing an event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resync_jitter_only_shortens_a_full_period() {
        let resync = Duration::from_secs(100);
        let spread: std::collections::BTreeSet<_> = (0..100)
            .map(|_| jittered(resync, resync, 0.1))
            .inspect(|d| assert!(*d <= resync && *d >= Duration::from_secs(90), "{d:?}"))
            .collect();
        assert!(
            spread.len() > 50,
            "spread: {} distinct of 100",
            spread.len()
        );
        let short = Duration::from_secs(15);
        assert_eq!(jittered(short, resync, 0.1), short);
        assert_eq!(jittered(resync, resync, 0.0), resync);
    }

    #[test]
    fn backoff_doubles_from_5s_to_5min() {
        let seconds: Vec<u64> = failure_backoff().take(8).map(|d| d.as_secs()).collect();
        assert_eq!(seconds, [5, 10, 20, 40, 80, 160, 300, 300]);
    }
}
