//! Counts every AWS operation by service and operation, through an SDK interceptor. Tests use it to prove
//! that a converged stack reconciles with zero write calls; `/metrics` exports it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// `(service, operation)`, e.g. `("Lambda", "GetFunction")`.
pub type CallKey = (String, String);

type Observer = Arc<dyn Fn(&str, &str) + Send + Sync>;

#[derive(Clone, Default)]
pub struct CallCounter {
    counts: Arc<Mutex<BTreeMap<CallKey, u64>>>,
    observer: Option<Observer>,
}

impl std::fmt::Debug for CallCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallCounter").field("counts", &self.snapshot()).finish()
    }
}

/// Whether an operation only reads. Everything else counts as a write.
pub fn is_read(operation: &str) -> bool {
    ["Get", "List", "Describe", "Head"].iter().any(|p| operation.starts_with(p))
}

impl CallCounter {
    /// A counter that also reports each call to `observer` (the metrics registry).
    pub fn with_observer(observer: impl Fn(&str, &str) + Send + Sync + 'static) -> Self {
        Self { counts: Default::default(), observer: Some(Arc::new(observer)) }
    }

    pub fn snapshot(&self) -> BTreeMap<CallKey, u64> {
        self.counts.lock().expect("call counter poisoned").clone()
    }

    pub fn reset(&self) {
        self.counts.lock().expect("call counter poisoned").clear();
    }

    /// Write calls only, by `(service, operation)`.
    pub fn writes(&self) -> BTreeMap<CallKey, u64> {
        self.snapshot().into_iter().filter(|((_, op), _)| !is_read(op)).collect()
    }

    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }

    fn record(&self, service: &str, operation: &str) {
        *self
            .counts
            .lock()
            .expect("call counter poisoned")
            .entry((service.to_string(), operation.to_string()))
            .or_default() += 1;
        if let Some(observer) = &self.observer {
            observer(service, operation);
        }
    }
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "tap-call-counter"
    }

    // Once per operation, before retries: a retried call is still one call. Not `read_before_execution`:
    // client-level interceptors run that hook before the operation's `Metadata` is in the config bag, so
    // it would never see which call it is (and nothing would be counted).
    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(metadata) = cfg.load::<Metadata>() {
            self.record(metadata.service(), metadata.name());
        }
        Ok(())
    }
}
