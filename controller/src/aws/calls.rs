//! Counts every AWS operation by service and operation, through an SDK interceptor. Tests use it to prove
//! that a converged stack reconciles with zero write calls; `/metrics` exports it, and the failed
//! attempts by error code. A walk counts its own calls in a [`scope`]: clients are shared by every
//! pipeline, so the shared totals say nothing about one of them.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// `(service, operation)`, e.g. `("Lambda", "GetFunction")`.
pub type CallKey = (String, String);

/// Told of every operation (service, operation).
pub type Observer = Arc<dyn Fn(&str, &str) + Send + Sync>;
/// Told of every failed attempt (service, operation, error code or `HTTP <status>`).
pub type ErrorObserver = Arc<dyn Fn(&str, &str, &str) + Send + Sync>;

/// Calls by `(service, operation)`.
#[derive(Clone, Default)]
pub struct Tally(Arc<Mutex<BTreeMap<CallKey, u64>>>);

impl Tally {
    fn add(&self, service: &str, operation: &str) {
        *self
            .0
            .lock()
            .expect("call tally poisoned")
            .entry((service.to_string(), operation.to_string()))
            .or_default() += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<CallKey, u64> {
        self.0.lock().expect("call tally poisoned").clone()
    }
}

tokio::task_local! {
    static SCOPE: Tally;
}

/// Runs `work` with its own tally: every AWS call made while polling it (a walk's steps run in its task)
/// is counted there too.
pub async fn scope<F: Future>(work: F) -> (F::Output, BTreeMap<CallKey, u64>) {
    let tally = Tally::default();
    let output = SCOPE.scope(tally.clone(), work).await;
    (output, tally.snapshot())
}

#[derive(Clone, Default)]
pub struct CallCounter {
    counts: Tally,
    observer: Arc<RwLock<Option<Observer>>>,
    errors: Arc<RwLock<Option<ErrorObserver>>>,
}

impl std::fmt::Debug for CallCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallCounter")
            .field("counts", &self.snapshot())
            .finish()
    }
}

/// Whether an operation only reads. Everything else counts as a write.
pub fn is_read(operation: &str) -> bool {
    ["Get", "List", "Describe", "Head"]
        .iter()
        .any(|p| operation.starts_with(p))
}

impl CallCounter {
    /// Also report each call to `observer` (the metrics registry).
    pub fn set_observer(&self, observer: Observer) {
        *self.observer.write().expect("observer lock poisoned") = Some(observer);
    }

    /// Also report each failed attempt to `observer`.
    pub fn set_error_observer(&self, observer: ErrorObserver) {
        *self.errors.write().expect("observer lock poisoned") = Some(observer);
    }

    pub fn snapshot(&self) -> BTreeMap<CallKey, u64> {
        self.counts.snapshot()
    }

    pub fn reset(&self) {
        self.counts.0.lock().expect("call tally poisoned").clear();
    }

    /// Write calls only, by `(service, operation)`.
    pub fn writes(&self) -> BTreeMap<CallKey, u64> {
        self.snapshot()
            .into_iter()
            .filter(|((_, op), _)| !is_read(op))
            .collect()
    }

    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }

    fn record(&self, service: &str, operation: &str) {
        self.counts.add(service, operation);
        let _ = SCOPE.try_with(|scope| scope.add(service, operation));
        if let Some(observer) = self
            .observer
            .read()
            .expect("observer lock poisoned")
            .as_ref()
        {
            observer(service, operation);
        }
    }
}

/// The error code of a failed response, from the headers AWS's protocols put it in (JSON protocols:
/// `x-amzn-ErrorType`; query-compatible ones: `x-amzn-query-error`), else its HTTP status.
fn error_code(response: &aws_smithy_runtime_api::http::Response) -> String {
    let headers = response.headers();
    headers
        .get("x-amzn-errortype")
        .or_else(|| headers.get("x-amzn-query-error"))
        .map(|v| {
            v.split([':', ';'])
                .next()
                .unwrap_or(v)
                .rsplit('#')
                .next()
                .unwrap_or(v)
                .to_string()
        })
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| format!("HTTP {}", response.status().as_u16()))
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

    // Every attempt, retries included: throttling the SDK absorbed still shows in the metrics.
    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let observer = self.errors.read().expect("observer lock poisoned");
        let (Some(observer), Some(metadata)) = (observer.as_ref(), cfg.load::<Metadata>()) else {
            return Ok(());
        };
        let code = match context.response() {
            Some(response) if response.status().is_success() => return Ok(()),
            Some(response) => error_code(response),
            None => "NoResponse".to_string(),
        };
        observer(metadata.service(), metadata.name(), &code);
        Ok(())
    }
}
