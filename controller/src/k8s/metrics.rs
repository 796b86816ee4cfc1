//! Prometheus metrics of the controller, served as OpenMetrics text on `/metrics`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::error::ErrorCategory;
use crate::api::Phase;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    service: String,
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AwsErrorLabels {
    service: String,
    operation: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriftLabels {
    resource_kind: String,
    field: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

const PHASES: [Phase; 6] = [
    Phase::Provisioning,
    Phase::Ready,
    Phase::Drifted,
    Phase::WaitingForImages,
    Phase::Deleting,
    Phase::Failed,
];

/// Observes a reconcile's duration when dropped.
pub struct ReconcileTimer {
    started: Instant,
    duration: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.duration.observe(self.started.elapsed().as_secs_f64());
    }
}

/// The controller's metrics. Cheap to clone (shared registry).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    reconciles: Counter,
    errors: Family<KindLabel, Counter>,
    duration: Histogram,
    aws_calls: Family<CallLabels, Counter>,
    aws_errors: Family<AwsErrorLabels, Counter>,
    drift: Family<DriftLabels, Counter>,
    pipelines: Family<PhaseLabel, Gauge>,
    phases: Arc<Mutex<HashMap<String, Phase>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Counter::default();
        registry.register(
            "tap_reconciles",
            "Reconciles of TransactionPipelines started",
            reconciles.clone(),
        );
        let errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "tap_reconcile_errors",
            "Reconciles that ended in an error, by kind (invalid_spec, aws_transient, aws_terminal, conflict, kube)",
            errors.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.05, 2.0, 14));
        registry.register(
            "tap_reconcile_duration_seconds",
            "Duration of one reconcile, in seconds",
            duration.clone(),
        );
        let aws_calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "tap_aws_calls",
            "AWS API operations made, by service and operation",
            aws_calls.clone(),
        );
        let aws_errors = Family::<AwsErrorLabels, Counter>::default();
        registry.register(
            "tap_aws_errors",
            "Failed AWS attempts (retries included), by service, operation and AWS error code",
            aws_errors.clone(),
        );
        let drift = Family::<DriftLabels, Counter>::default();
        registry.register(
            "tap_drift_detected",
            "Drifted fields detected, by resource kind and field",
            drift.clone(),
        );
        let pipelines = Family::<PhaseLabel, Gauge>::default();
        registry.register(
            "tap_pipelines",
            "TransactionPipelines handled by this controller, by phase",
            pipelines.clone(),
        );
        for phase in PHASES {
            pipelines
                .get_or_create(&PhaseLabel {
                    phase: phase.as_str().into(),
                })
                .set(0);
        }
        // RSS, CPU seconds, open file descriptors, … of this process, read at each scrape.
        registry.register_collector(Box::new(super::process_metrics::ProcessCollector));
        Self {
            registry: Arc::new(registry),
            reconciles,
            errors,
            duration,
            aws_calls,
            aws_errors,
            drift,
            pipelines,
            phases: Default::default(),
        }
    }

    /// Counts a reconcile; its duration is observed when the returned guard drops, whichever way the
    /// reconcile ends.
    pub fn reconcile_timer(&self) -> ReconcileTimer {
        self.reconciles.inc();
        ReconcileTimer {
            started: Instant::now(),
            duration: self.duration.clone(),
        }
    }

    pub fn error(&self, category: ErrorCategory) {
        self.errors
            .get_or_create(&KindLabel {
                kind: category.as_str().into(),
            })
            .inc();
    }

    /// The engine's call observer.
    pub fn aws_call(&self, service: &str, operation: &str) {
        self.aws_calls
            .get_or_create(&CallLabels {
                service: service.into(),
                operation: operation.into(),
            })
            .inc();
    }

    /// The engine's error observer.
    pub fn aws_error(&self, service: &str, operation: &str, code: &str) {
        self.aws_errors
            .get_or_create(&AwsErrorLabels {
                service: service.into(),
                operation: operation.into(),
                code: code.into(),
            })
            .inc();
    }

    pub fn drift_detected(&self, resource_kind: &str, field: &str) {
        self.drift
            .get_or_create(&DriftLabels {
                resource_kind: resource_kind.into(),
                field: field.into(),
            })
            .inc();
    }

    /// Records the phase of one pipeline (`namespace/name`); `None` forgets it (deleted).
    pub fn set_phase(&self, pipeline: &str, phase: Option<Phase>) {
        let mut phases = self.phases.lock().expect("phase map poisoned");
        match phase {
            Some(p) => phases.insert(pipeline.to_string(), p),
            None => phases.remove(pipeline),
        };
        for phase in PHASES {
            let count = phases.values().filter(|p| **p == phase).count();
            self.pipelines
                .get_or_create(&PhaseLabel {
                    phase: phase.as_str().into(),
                })
                .set(count as i64);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_documented_names() {
        let m = Metrics::new();
        drop(m.reconcile_timer());
        m.error(ErrorCategory::AwsTransient);
        m.aws_call("Lambda", "GetFunction");
        m.drift_detected("Function", "memoryMb");
        m.aws_error("API Gateway", "GetRestApis", "TooManyRequestsException");
        m.set_phase("default/a", Some(Phase::Ready));
        let text = m.encode();
        for needle in [
            "tap_reconciles_total 1",
            "tap_reconcile_errors_total{kind=\"aws_transient\"} 1",
            "tap_reconcile_duration_seconds_count 1",
            "tap_aws_calls_total{service=\"Lambda\",operation=\"GetFunction\"} 1",
            "tap_aws_errors_total{service=\"API Gateway\",operation=\"GetRestApis\",code=\"TooManyRequestsException\"} 1",
            "tap_drift_detected_total{resource_kind=\"Function\",field=\"memoryMb\"} 1",
            "tap_pipelines{phase=\"Ready\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
