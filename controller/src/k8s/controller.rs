//! The reconciler: finalizer, duplicate-suffix guard, engine call, status (server-side apply), API key
//! Secret, Events, requeue and error policy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::metrics::{ErrorKind, Metrics};
use super::{secret, FIELD_MANAGER};
use crate::api::{
    DeletionPolicy, Phase, TransactionPipeline, TransactionPipelineStatus, ValidationErrors,
    FINALIZER,
};
use crate::aws::ErrorClass;
use crate::engine::{
    Action as EngineAction, DriftMemory, Engine, EngineError, Mode, Pipeline, Report,
};

/// Sends an extra reconcile request to a running controller.
pub type Waker = futures::channel::mpsc::UnboundedSender<ObjectRef<TransactionPipeline>>;

/// Requeue while resources are being created or wait for images.
pub const PROVISIONING_REQUEUE: Duration = Duration::from_secs(15);
/// Requeue after a correction, to verify it held.
pub const VERIFY_REQUEUE: Duration = Duration::from_secs(10);
/// First retry after a transient error; doubles per consecutive failure up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(5);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What the reconciler needs from the engine: converge or tear down one pipeline. [`Engine`] is the
/// implementation; tests substitute their own.
pub trait Backend: Send + Sync {
    fn reconcile<'a>(
        &'a self,
        pipeline: Pipeline<'a>,
        memory: &'a mut DriftMemory,
    ) -> BoxFuture<'a, Result<Report, EngineError>>;
    fn teardown<'a>(&'a self, pipeline: Pipeline<'a>)
        -> BoxFuture<'a, Result<Report, EngineError>>;
}

impl Backend for Engine {
    fn reconcile<'a>(
        &'a self,
        pipeline: Pipeline<'a>,
        memory: &'a mut DriftMemory,
    ) -> BoxFuture<'a, Result<Report, EngineError>> {
        Box::pin(async move { Engine::reconcile(self, &pipeline, Mode::Apply, memory).await })
    }

    fn teardown<'a>(
        &'a self,
        pipeline: Pipeline<'a>,
    ) -> BoxFuture<'a, Result<Report, EngineError>> {
        Box::pin(async move { Engine::teardown(self, &pipeline, Mode::Apply).await })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    InvalidSpec(String),
    #[error("{message}")]
    Aws { message: String, transient: bool },
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Finalizer(Box<finalizer::Error<Error>>),
}

impl Error {
    /// The error this one stands for, unwrapping the finalizer helper's wrapper.
    fn inner(&self) -> &Error {
        match self {
            Error::Finalizer(f) => match f.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.inner(),
                _ => self,
            },
            e => e,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self.inner() {
            Error::InvalidSpec(_) => ErrorKind::InvalidSpec,
            Error::Aws {
                transient: true, ..
            } => ErrorKind::AwsTransient,
            Error::Aws { .. } => ErrorKind::AwsTerminal,
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::Kube(_) | Error::Finalizer(_) => ErrorKind::Kube,
        }
    }

    /// Whether retrying soon can help (backoff) rather than waiting for the resync period.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind(), ErrorKind::AwsTransient | ErrorKind::Kube)
    }
}

/// What the controller keeps per pipeline between reconciles.
#[derive(Default)]
struct PipelineState {
    memory: DriftMemory,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub backend: Arc<dyn Backend>,
    pub metrics: Metrics,
    pub recorder: Recorder,
    /// Requeue period of a converged pipeline (drift detection).
    pub resync: Duration,
    stores: RwLock<Vec<Store<TransactionPipeline>>>,
    /// Per running controller: the namespace it watches (`None` = all) and a channel that makes it
    /// reconcile an object now.
    wakers: Mutex<Vec<(Option<String>, Waker)>>,
    state: Mutex<HashMap<String, PipelineState>>,
    failures: Mutex<HashMap<String, u32>>,
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
            stores: Default::default(),
            wakers: Default::default(),
            state: Default::default(),
            failures: Default::default(),
        }
    }

    /// The reflector stores of the running controllers (one per watched namespace, or one for all).
    pub fn set_stores(&self, stores: Vec<Store<TransactionPipeline>>) {
        *self.stores.write().expect("stores lock poisoned") = stores;
    }

    /// The channels through which the running controllers (namespace, or `None` for all) take extra
    /// reconcile requests (`Controller::reconcile_on`).
    pub fn set_wakers(&self, wakers: Vec<(Option<String>, Waker)>) {
        *self.wakers.lock().expect("wakers lock poisoned") = wakers;
    }

    /// `pipeline` is going away: the oldest remaining pipeline with the same suffix (held back as a
    /// duplicate until now) is reconciled at once instead of at its next resync.
    fn wake_successor(&self, pipeline: &TransactionPipeline) {
        let successor = {
            let stores = self.stores.read().expect("stores lock poisoned");
            stores
                .iter()
                .flat_map(|s| s.state())
                .filter(|other| {
                    other.spec.environment_suffix == pipeline.spec.environment_suffix
                        && (other.namespace(), other.name_any())
                            != (pipeline.namespace(), pipeline.name_any())
                        && other.metadata.deletion_timestamp.is_none()
                })
                .min_by(|a, b| age_key(a).cmp(&age_key(b)))
        };
        let Some(successor) = successor else {
            return;
        };
        let wakers = self.wakers.lock().expect("wakers lock poisoned");
        for (namespace, waker) in wakers.iter() {
            if namespace.is_none() || *namespace == successor.namespace() {
                tracing::info!(pipeline = %successor.owner_key(), freed_by = %pipeline.owner_key(), "environmentSuffix freed: reconciling the next pipeline");
                let _ = waker.unbounded_send(ObjectRef::from_obj(successor.as_ref()));
            }
        }
    }

    /// The oldest other pipeline with the same `environmentSuffix`, if it is older than `pipeline`
    /// (creationTimestamp, then namespace/name).
    fn older_with_same_suffix(
        &self,
        pipeline: &TransactionPipeline,
    ) -> Option<Arc<TransactionPipeline>> {
        let stores = self.stores.read().expect("stores lock poisoned");
        let me = age_key(pipeline);
        stores
            .iter()
            .flat_map(|s| s.state())
            .filter(|other| {
                other.spec.environment_suffix == pipeline.spec.environment_suffix
                    && (other.namespace(), other.name_any())
                        != (pipeline.namespace(), pipeline.name_any())
                    && age_key(other) < me
            })
            .min_by(|a, b| age_key(a).cmp(&age_key(b)))
    }

    fn take_state(&self, key: &str) -> PipelineState {
        self.state
            .lock()
            .expect("state lock poisoned")
            .remove(key)
            .unwrap_or_default()
    }

    fn put_state(&self, key: &str, state: PipelineState) {
        self.state
            .lock()
            .expect("state lock poisoned")
            .insert(key.to_string(), state);
    }

    fn forget(&self, key: &str, owner: &str) {
        self.state.lock().expect("state lock poisoned").remove(key);
        self.failures
            .lock()
            .expect("failures lock poisoned")
            .remove(owner);
        self.metrics.set_phase(owner, None);
    }

    /// Consecutive failures of a pipeline, counted for the backoff (then incremented).
    fn next_backoff(&self, owner: &str) -> Duration {
        let mut failures = self.failures.lock().expect("failures lock poisoned");
        let n = failures.entry(owner.to_string()).or_default();
        let delay = backoff(*n);
        *n = n.saturating_add(1);
        delay
    }

    fn succeeded(&self, owner: &str) {
        self.failures
            .lock()
            .expect("failures lock poisoned")
            .remove(owner);
    }

    async fn publish(&self, pipeline: &TransactionPipeline, event: Event) {
        let reference: ObjectReference = pipeline.object_ref(&());
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(pipeline = %pipeline.owner_key(), reason = %event.reason, error = %e, "publishing an event");
        }
    }
}

/// Backoff after `failures` consecutive transient failures: 5 s, 10 s, 20 s … at most 5 min.
pub fn backoff(failures: u32) -> Duration {
    MIN_BACKOFF
        .saturating_mul(1u32 << failures.min(10))
        .min(MAX_BACKOFF)
}

type AgeKey = (bool, Option<k8s_openapi::jiff::Timestamp>, String, String);

/// Older sorts first; a pipeline without creationTimestamp counts as the newest.
fn age_key(p: &TransactionPipeline) -> AgeKey {
    let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (
        created.is_none(),
        created,
        p.namespace().unwrap_or_default(),
        p.name_any(),
    )
}

/// The Controller's reconcile function.
pub async fn reconcile(
    pipeline: Arc<TransactionPipeline>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.metrics.reconcile_started();
    let started = Instant::now();
    let owner = pipeline.owner_key();
    let namespace = pipeline.namespace().unwrap_or_else(|| "default".into());
    let api: Api<TransactionPipeline> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, pipeline, |event| async {
        match event {
            finalizer::Event::Apply(p) => apply(&p, &api, &ctx).await,
            finalizer::Event::Cleanup(p) => cleanup(&p, &api, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconcile_finished(started.elapsed());
    if result.is_ok() {
        ctx.succeeded(&owner);
    }
    result
}

/// The Controller's error policy: transient errors back off per object (5 s doubling to 5 min),
/// terminal ones wait for the resync period (or a spec change).
pub fn error_policy(
    pipeline: Arc<TransactionPipeline>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let owner = pipeline.owner_key();
    ctx.metrics.error(error.kind());
    if error.is_transient() {
        let delay = ctx.next_backoff(&owner);
        tracing::warn!(pipeline = %owner, error = %error, retry_in = ?delay, "reconcile failed");
        Action::requeue(delay)
    } else {
        tracing::warn!(pipeline = %owner, error = %error, "reconcile failed");
        Action::requeue(ctx.resync)
    }
}

fn state_key(p: &TransactionPipeline) -> String {
    p.uid().unwrap_or_else(|| p.owner_key())
}

/// Server-side apply of the status subresource under the field manager `tap-controller`.
pub async fn patch_status(
    api: &Api<TransactionPipeline>,
    name: &str,
    status: &TransactionPipelineStatus,
) -> Result<(), kube::Error> {
    let body = json!({
        "apiVersion": TransactionPipeline::api_version(&()),
        "kind": TransactionPipeline::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Sets (or replaces) condition `type_`, keeping its transition time when its status did not change.
fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    });
}

/// A status that keeps what is known from `previous` and records a problem found before (or instead of)
/// walking AWS.
fn problem_status(
    pipeline: &TransactionPipeline,
    phase: Phase,
    reason: &str,
    message: &str,
) -> TransactionPipelineStatus {
    let generation = pipeline.metadata.generation;
    let mut status = pipeline.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    status.phase = Some(phase);
    set_condition(
        &mut status.conditions,
        "Ready",
        false,
        reason,
        message,
        generation,
    );
    set_condition(
        &mut status.conditions,
        "Degraded",
        true,
        reason,
        message,
        generation,
    );
    if !status.conditions.iter().any(|c| c.type_ == "Drifted") {
        set_condition(
            &mut status.conditions,
            "Drifted",
            false,
            "Unknown",
            "AWS was not read",
            generation,
        );
    }
    status
}

fn event(type_: EventType, reason: &str, action: &str, note: String) -> Event {
    Event {
        type_,
        reason: reason.into(),
        note: Some(truncate(note, 1000)),
        action: truncate(action.to_string(), 128),
        secondary: None,
    }
}

/// The `action` of an Event about one AWS resource (or one of its fields). The recorder folds events with
/// the same type, reason, action and object into one series (its note is the first one's), so naming the
/// subject in the action keeps one event per resource or drifted field while a repeat of the same one
/// still folds into its series. `kubectl describe` does not show the action.
fn subject_action(verb: &str, kind: &str, name: &str, field: Option<&str>) -> String {
    match field {
        Some(field) => format!("{verb} {kind} {name} {field}"),
        None => format!("{verb} {kind} {name}"),
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn previous_phase(p: &TransactionPipeline) -> Option<Phase> {
    p.status.as_ref().and_then(|s| s.phase)
}

async fn phase_event(ctx: &Context, p: &TransactionPipeline, phase: Phase, why: &str) {
    let before = previous_phase(p);
    if before == Some(phase) {
        return;
    }
    let from = before.map(Phase::as_str).unwrap_or("(none)");
    let type_ = if phase == Phase::Failed {
        EventType::Warning
    } else {
        EventType::Normal
    };
    let mut note = format!("phase {from} → {}", phase.as_str());
    if !why.is_empty() {
        note.push_str(": ");
        note.push_str(why);
    }
    ctx.publish(p, event(type_, "PhaseChanged", "Reconcile", note))
        .await;
}

/// Apply path: guard, converge, status, Secret, Events, requeue.
async fn apply(
    p: &TransactionPipeline,
    api: &Api<TransactionPipeline>,
    ctx: &Context,
) -> Result<Action, Error> {
    let owner = p.owner_key();
    let name = p.name_any();
    let generation = p.metadata.generation;

    // (1) Another, older pipeline owns this suffix: touch nothing in AWS.
    if let Some(other) = ctx.older_with_same_suffix(p) {
        let message = format!(
            "environmentSuffix {:?} is already used by TransactionPipeline {} (older); this pipeline touches nothing in AWS",
            p.spec.environment_suffix,
            other.owner_key()
        );
        let mut status = problem_status(p, Phase::Failed, "DuplicateSuffix", &message);
        set_condition(
            &mut status.conditions,
            "Conflict",
            true,
            "DuplicateSuffix",
            &message,
            generation,
        );
        patch_status(api, &name, &status).await?;
        ctx.metrics.error(ErrorKind::Conflict);
        ctx.metrics.set_phase(&owner, Some(Phase::Failed));
        let was_conflicted = p.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Conflict" && c.status == "True")
        });
        phase_event(ctx, p, Phase::Failed, "duplicate environmentSuffix").await;
        if !was_conflicted {
            ctx.publish(
                p,
                event(EventType::Warning, "DuplicateSuffix", "Reconcile", message),
            )
            .await;
        }
        return Ok(Action::requeue(ctx.resync));
    }

    // (2) Converge.
    let key = state_key(p);
    let mut state = ctx.take_state(&key);
    let result = ctx
        .backend
        .reconcile(
            Pipeline {
                owner: &owner,
                spec: &p.spec,
            },
            &mut state.memory,
        )
        .await;
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            ctx.put_state(&key, state);
            return engine_failed(p, api, ctx, e).await;
        }
    };
    let phase = report.phase(false);
    let status = report.status(generation, p.status.as_ref(), false);

    // (3) Status. (On any early return from here the drift memory goes back first.)
    if let Err(e) = patch_status(api, &name, &status).await {
        ctx.put_state(&key, state);
        return Err(e.into());
    }
    ctx.metrics.set_phase(&owner, Some(phase));

    // (4) API key Secret.
    if let Some(value) = &report.api_key {
        match secret::ensure(&ctx.client, p, value).await {
            Ok(true) => {
                tracing::info!(pipeline = %owner, secret = %secret::secret_name(&name), "API key Secret written");
            }
            Ok(false) => {}
            Err(e) => {
                ctx.put_state(&key, state);
                return Err(e.into());
            }
        }
    }

    // (5) Events.
    report_events(ctx, p, &report, phase).await;

    // (6) Requeue.
    let requeue = requeue_after(&report, phase, &state.memory, ctx.resync);
    ctx.put_state(&key, state);
    tracing::info!(
        pipeline = %owner,
        phase = phase.as_str(),
        elapsed = ?report.elapsed,
        aws_calls = report.calls.values().sum::<u64>(),
        requeue = ?requeue,
        "reconciled"
    );
    if !report.failures().is_empty() {
        if report.only_transient_failures() {
            return Err(Error::Aws {
                message: first_failure(&report),
                transient: true,
            });
        }
        ctx.metrics.error(ErrorKind::AwsTerminal);
    } else if !report.conflicts().is_empty() {
        ctx.metrics.error(ErrorKind::Conflict);
    }
    Ok(Action::requeue(requeue))
}

fn first_failure(report: &Report) -> String {
    report
        .failures()
        .first()
        .map(|r| format!("{}: {}", r.id, r.message()))
        .unwrap_or_default()
}

/// The engine refused (invalid spec) or could not reach AWS: record it in the status.
async fn engine_failed(
    p: &TransactionPipeline,
    api: &Api<TransactionPipeline>,
    ctx: &Context,
    error: EngineError,
) -> Result<Action, Error> {
    let owner = p.owner_key();
    match error {
        EngineError::Invalid(errors) => {
            let message = invalid_message(&errors);
            let status = problem_status(p, Phase::Failed, "InvalidSpec", &message);
            patch_status(api, &p.name_any(), &status).await?;
            ctx.metrics.error(ErrorKind::InvalidSpec);
            ctx.metrics.set_phase(&owner, Some(Phase::Failed));
            phase_event(ctx, p, Phase::Failed, "invalid spec").await;
            let same = p.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Ready" && c.reason == "InvalidSpec" && c.message == message
                })
            });
            if !same {
                ctx.publish(
                    p,
                    event(EventType::Warning, "InvalidSpec", "Reconcile", message),
                )
                .await;
            }
            // Nothing to retry until the spec changes (which triggers a reconcile).
            Ok(Action::requeue(ctx.resync))
        }
        EngineError::Connect { region, source } => {
            let transient = source.class != ErrorClass::Terminal;
            let message = format!("connecting to AWS in {region}: {source}");
            let phase = if transient {
                previous_phase(p).unwrap_or(Phase::Provisioning)
            } else {
                Phase::Failed
            };
            let status = problem_status(p, phase, "AwsError", &message);
            patch_status(api, &p.name_any(), &status).await?;
            ctx.metrics.set_phase(&owner, Some(phase));
            phase_event(ctx, p, phase, "").await;
            ctx.publish(
                p,
                event(EventType::Warning, "AwsError", "Reconcile", message.clone()),
            )
            .await;
            Err(Error::Aws { message, transient })
        }
    }
}

fn invalid_message(errors: &ValidationErrors) -> String {
    errors.to_string()
}

/// One Event per transition: phase change, each resource created/updated/deleted, each newly detected
/// drift entry, each new failure or ownership conflict.
async fn report_events(ctx: &Context, p: &TransactionPipeline, report: &Report, phase: Phase) {
    let previous = p.status.as_ref();
    let why = match phase {
        Phase::Failed => first_failure(report),
        _ => String::new(),
    };
    phase_event(ctx, p, phase, &why).await;
    for r in &report.resources {
        let (type_, reason) = match (&r.action, r.applied) {
            (EngineAction::Create, true) => (EventType::Normal, "Created"),
            (EngineAction::Update(_), true) => (EventType::Normal, "Updated"),
            (EngineAction::Delete, true) => (EventType::Normal, "Deleted"),
            (EngineAction::Fail { .. }, _) | (EngineAction::Conflict(_), _) => {
                let message = r.message();
                let seen = previous.is_some_and(|s| {
                    s.resources.iter().any(|x| {
                        x.kind == r.id.kind.to_string()
                            && x.name == r.id.name
                            && x.message == message
                    })
                });
                if seen {
                    continue;
                }
                let reason = if matches!(r.action, EngineAction::Conflict(_)) {
                    "ResourceConflict"
                } else {
                    "AwsError"
                };
                (EventType::Warning, reason)
            }
            _ => continue,
        };
        let action = subject_action(reason, r.id.kind.as_str(), &r.id.name, None);
        ctx.publish(
            p,
            event(type_, reason, &action, format!("{}: {}", r.id, r.message())),
        )
        .await;
    }
    for d in &report.drift {
        let known = previous.is_some_and(|s| {
            s.drift.iter().any(|x| {
                x.kind == d.kind
                    && x.name == d.name
                    && x.field == d.field
                    && x.first_seen == d.first_seen
            })
        });
        if known {
            continue;
        }
        ctx.metrics.drift_detected(&d.kind, &d.field);
        ctx.publish(
            p,
            event(
                EventType::Warning,
                "DriftDetected",
                &subject_action("DetectDrift", &d.kind, &d.name, Some(&d.field)),
                format!(
                    "{} {} field {}: expected {}, actual {} ({:?})",
                    d.kind, d.name, d.field, d.expected, d.actual, d.action
                ),
            ),
        )
        .await;
    }
}

/// When to look again: 15 s while provisioning or waiting for images, 10 s after a correction (to verify
/// it held), otherwise the resync period; sooner if a held-back correction may be retried earlier.
pub fn requeue_after(
    report: &Report,
    phase: Phase,
    memory: &DriftMemory,
    resync: Duration,
) -> Duration {
    let mut after = match phase {
        Phase::Provisioning | Phase::WaitingForImages => PROVISIONING_REQUEUE.min(resync),
        _ => resync,
    };
    let corrected = report
        .resources
        .iter()
        .any(|r| r.applied && matches!(r.action, EngineAction::Update(_)));
    if corrected {
        after = after.min(VERIFY_REQUEUE);
    }
    if let Some(at) = memory.next_retry() {
        let until = (at - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1));
        after = after.min(until);
    }
    after
}

/// Cleanup path (the finalizer is present and the pipeline is being deleted).
async fn cleanup(
    p: &TransactionPipeline,
    api: &Api<TransactionPipeline>,
    ctx: &Context,
) -> Result<Action, Error> {
    let owner = p.owner_key();
    let key = state_key(p);
    if p.spec.deletion_policy == DeletionPolicy::Retain {
        ctx.publish(
            p,
            event(
                EventType::Normal,
                "Retained",
                "Cleanup",
                "deletionPolicy: Retain: the AWS stack is left in place".into(),
            ),
        )
        .await;
        ctx.forget(&key, &owner);
        ctx.wake_successor(p);
        return Ok(Action::await_change());
    }
    if let Some(other) = ctx.older_with_same_suffix(p) {
        // Its stack belongs to the older pipeline: never delete it from here.
        ctx.publish(
            p,
            event(
                EventType::Normal,
                "Retained",
                "Cleanup",
                format!(
                    "environmentSuffix {:?} belongs to {}: nothing of it is torn down",
                    p.spec.environment_suffix,
                    other.owner_key()
                ),
            ),
        )
        .await;
        ctx.forget(&key, &owner);
        return Ok(Action::await_change());
    }

    let generation = p.metadata.generation;
    if previous_phase(p) != Some(Phase::Deleting) {
        let mut status = p.status.clone().unwrap_or_default();
        status.observed_generation = generation;
        status.phase = Some(Phase::Deleting);
        set_condition(
            &mut status.conditions,
            "Ready",
            false,
            "Deleting",
            "tearing the AWS stack down",
            generation,
        );
        patch_status(api, &p.name_any(), &status).await?;
        ctx.metrics.set_phase(&owner, Some(Phase::Deleting));
        phase_event(ctx, p, Phase::Deleting, "").await;
    }

    let report = match ctx
        .backend
        .teardown(Pipeline {
            owner: &owner,
            spec: &p.spec,
        })
        .await
    {
        Ok(report) => report,
        Err(EngineError::Invalid(errors)) => {
            let message = format!("cannot tear down: {}", invalid_message(&errors));
            let status = problem_status(p, Phase::Failed, "InvalidSpec", &message);
            patch_status(api, &p.name_any(), &status).await?;
            ctx.publish(
                p,
                event(
                    EventType::Warning,
                    "InvalidSpec",
                    "Cleanup",
                    message.clone(),
                ),
            )
            .await;
            return Err(Error::InvalidSpec(message));
        }
        Err(EngineError::Connect { region, source }) => {
            let transient = source.class != ErrorClass::Terminal;
            let message = format!("cannot tear down: connecting to AWS in {region}: {source}");
            ctx.publish(
                p,
                event(EventType::Warning, "AwsError", "Cleanup", message.clone()),
            )
            .await;
            return Err(Error::Aws { message, transient });
        }
    };
    for r in &report.resources {
        if r.applied && r.action == EngineAction::Delete {
            let action = subject_action("Delete", r.id.kind.as_str(), &r.id.name, None);
            ctx.publish(
                p,
                event(
                    EventType::Normal,
                    "Deleted",
                    &action,
                    format!("{}: deleted", r.id),
                ),
            )
            .await;
        }
    }
    if report.converged() {
        tracing::info!(pipeline = %owner, elapsed = ?report.elapsed, "stack torn down; removing the finalizer");
        ctx.forget(&key, &owner);
        ctx.wake_successor(p);
        return Ok(Action::await_change());
    }
    // Keep the finalizer: record what blocks and retry.
    let status = report.status(generation, p.status.as_ref(), true);
    patch_status(api, &p.name_any(), &status).await?;
    let blocking: Vec<String> = report
        .resources
        .iter()
        .filter(|r| !r.is_done())
        .map(|r| format!("{}: {}", r.id, r.message()))
        .collect();
    let message = format!(
        "teardown incomplete ({} resources left): {}",
        blocking.len(),
        blocking
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    );
    ctx.publish(
        p,
        event(
            EventType::Warning,
            "TeardownIncomplete",
            "Cleanup",
            message.clone(),
        ),
    )
    .await;
    if !report.conflicts().is_empty() {
        return Err(Error::Conflict(message));
    }
    Err(Error::Aws {
        transient: report.only_transient_failures(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use crate::api::{DriftAction, DriftEntry};
    use crate::desired::Kind;
    use crate::drivers::SecretValue;
    use serde_json::json;

    /// Runs one reconcile in the background; the test drives the mocked API server meanwhile.
    fn spawn_reconcile(
        p: TransactionPipeline,
        ctx: Arc<Context>,
    ) -> tokio::task::JoinHandle<Result<Action, Error>> {
        tokio::spawn(reconcile(Arc::new(p), ctx))
    }

    async fn finish(task: tokio::task::JoinHandle<Result<Action, Error>>) -> Result<Action, Error> {
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("the reconcile did not finish (an unanswered extra request?)")
            .expect("the reconcile panicked")
    }

    #[tokio::test]
    async fn a_new_pipeline_gets_the_finalizer_first_and_no_aws_call() {
        let sentinel = AwsSentinel::start().await;
        let (client, mut server) = mock_client();
        let metrics = Metrics::new();
        let ctx = context(client, Arc::new(sentinel.engine(&metrics)), metrics);
        let p = pipeline("test", "dev1", 60);
        let task = spawn_reconcile(p.clone(), ctx);

        let first = server.next().await;
        assert_eq!(first.method, "PATCH");
        assert_eq!(first.uri, pipeline_uri("test"));
        assert_eq!(
            first.body,
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
            ])
        );
        assert_eq!(
            sentinel.connections(),
            0,
            "no AWS call may precede the finalizer"
        );
        first.ok(to_json(&finalized(p)));

        let action = finish(task).await.expect("reconcile");
        assert_eq!(action, Action::await_change());
        assert_eq!(sentinel.connections(), 0);
    }

    /// Positive control for the sentinel: a valid, finalized pipeline does reach AWS (STS first); the
    /// unreachable endpoint is reported in the status and retried as a transient error.
    #[tokio::test]
    async fn the_sentinel_sees_aws_calls_and_connect_errors_are_reported() {
        let sentinel = AwsSentinel::start().await;
        let (client, mut server) = mock_client();
        let metrics = Metrics::new();
        let ctx = context(client, Arc::new(sentinel.engine(&metrics)), metrics);
        let task = spawn_reconcile(finalized(pipeline("test", "dev1", 60)), ctx.clone());

        let status = server.expect("PATCH", &status_uri("test")).await;
        let ready = condition(&status.body["status"], "Ready");
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "AwsError");
        assert!(ready["message"]
            .as_str()
            .unwrap()
            .contains("sts:GetCallerIdentity"));
        status.applied(&pipeline("test", "dev1", 60));
        let phase = server.expect_event().await;
        assert_eq!(phase["reason"], "PhaseChanged");
        let error = server.expect_event().await;
        assert_eq!(error["reason"], "AwsError");
        assert_eq!(error["type"], "Warning");

        let err = finish(task).await.expect_err("AWS is unreachable");
        assert!(
            sentinel.connections() > 0,
            "the sentinel must see the STS call"
        );
        assert!(err.is_transient(), "{err}");
        assert_eq!(
            error_policy(Arc::new(pipeline("test", "dev1", 60)), &err, ctx.clone()),
            Action::requeue(Duration::from_secs(5))
        );
        assert_eq!(
            error_policy(Arc::new(pipeline("test", "dev1", 60)), &err, ctx),
            Action::requeue(Duration::from_secs(10))
        );
    }

    #[tokio::test]
    async fn status_is_server_side_applied_with_conditions_and_events_are_published() {
        let (client, mut server) = mock_client();
        let backend = ScriptedBackend::reconciling(report(vec![
            resource(
                Kind::Table,
                "tap-dev1-transactions",
                EngineAction::Create,
                true,
            ),
            resource(
                Kind::LogGroup,
                "/aws/lambda/x",
                EngineAction::NoChange,
                false,
            ),
        ]));
        let ctx = context(client, Arc::new(backend), Metrics::new());
        let mut p = finalized(pipeline("test", "dev1", 60));
        p.metadata.generation = Some(3);
        let task = spawn_reconcile(p.clone(), ctx.clone());

        let status = server.expect("PATCH", &status_uri("test")).await;
        let body = status.body.clone();
        assert_eq!(body["apiVersion"], "tap.dev/v1alpha1");
        assert_eq!(body["kind"], "TransactionPipeline");
        assert_eq!(body["status"]["observedGeneration"], 3);
        assert_eq!(body["status"]["phase"], "Ready");
        assert_eq!(condition(&body["status"], "Ready")["status"], "True");
        assert_eq!(condition(&body["status"], "Drifted")["status"], "False");
        assert_eq!(condition(&body["status"], "Degraded")["status"], "False");
        status.applied(&p);

        let phase = server.expect_event().await;
        assert_eq!(phase["reason"], "PhaseChanged");
        assert_eq!(phase["type"], "Normal");
        assert_eq!(phase["note"], "phase (none) → Ready");
        assert_eq!(phase["reportingController"], "tap-controller");
        assert_eq!(phase["regarding"]["name"], "test");
        assert_eq!(phase["regarding"]["kind"], "TransactionPipeline");
        let created = server.expect_event().await;
        assert_eq!(created["reason"], "Created");
        assert_eq!(created["note"], "Table tap-dev1-transactions: created");

        let action = finish(task).await.expect("reconcile");
        assert_eq!(
            action,
            Action::requeue(RESYNC),
            "Ready waits for the resync"
        );
        let metrics = ctx.metrics.encode();
        assert!(metrics.contains("tap_reconciles_total 1"), "{metrics}");
        assert!(
            metrics.contains("tap_pipelines{phase=\"Ready\"} 1"),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn an_invalid_spec_fails_with_the_field_and_no_aws_call() {
        let sentinel = AwsSentinel::start().await;
        let (client, mut server) = mock_client();
        let metrics = Metrics::new();
        let ctx = context(client, Arc::new(sentinel.engine(&metrics)), metrics);
        let mut p = finalized(pipeline("test", "dev1", 60));
        p.spec.functions.csv_validator.memory_mb = 64;
        let task = spawn_reconcile(p.clone(), ctx.clone());

        let status = server.expect("PATCH", &status_uri("test")).await;
        let s = status.body["status"].clone();
        assert_eq!(s["phase"], "Failed");
        assert_eq!(s["observedGeneration"], 1);
        let ready = condition(&s, "Ready");
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "InvalidSpec");
        assert!(
            ready["message"]
                .as_str()
                .unwrap()
                .contains("spec.functions.csvValidator.memoryMb"),
            "{ready}"
        );
        status.applied(&p);
        assert_eq!(server.expect_event().await["reason"], "PhaseChanged");
        let invalid = server.expect_event().await;
        assert_eq!(invalid["reason"], "InvalidSpec");
        assert_eq!(invalid["type"], "Warning");

        let action = finish(task).await.expect("an invalid spec is handled");
        assert_eq!(action, Action::requeue(RESYNC));
        assert_eq!(
            sentinel.connections(),
            0,
            "an invalid spec must not reach AWS"
        );
        assert!(ctx
            .metrics
            .encode()
            .contains("tap_reconcile_errors_total{kind=\"invalid_spec\"} 1"));
    }

    #[tokio::test]
    async fn a_duplicate_suffix_is_a_conflict_and_touches_nothing() {
        let sentinel = AwsSentinel::start().await;
        let (client, mut server) = mock_client();
        let metrics = Metrics::new();
        let ctx = context(client, Arc::new(sentinel.engine(&metrics)), metrics);
        let older = finalized(pipeline("older", "shared", 3600));
        let newer = finalized(pipeline("newer", "shared", 60));
        let unrelated = finalized(pipeline("other", "solo", 7200));
        ctx.set_stores(vec![store_of(&[older.clone(), newer.clone(), unrelated])]);

        let task = spawn_reconcile(newer.clone(), ctx.clone());
        let status = server.expect("PATCH", &status_uri("newer")).await;
        let s = status.body["status"].clone();
        assert_eq!(s["phase"], "Failed");
        let conflict = condition(&s, "Conflict");
        assert_eq!(conflict["status"], "True");
        assert_eq!(conflict["reason"], "DuplicateSuffix");
        assert!(
            conflict["message"]
                .as_str()
                .unwrap()
                .contains("default/older"),
            "{conflict}"
        );
        status.applied(&newer);
        assert_eq!(server.expect_event().await["reason"], "PhaseChanged");
        assert_eq!(server.expect_event().await["reason"], "DuplicateSuffix");
        finish(task).await.expect("reconcile");
        assert_eq!(sentinel.connections(), 0, "a duplicate must not reach AWS");

        // The older one is not held back by the newer one: it goes on to the engine (and so to AWS).
        assert!(ctx.older_with_same_suffix(&older).is_none());
    }

    fn deleting_pipeline() -> TransactionPipeline {
        let mut p = deleting(finalized(pipeline("test", "dev1", 60)));
        p.status = Some(TransactionPipelineStatus {
            phase: Some(Phase::Ready),
            ..Default::default()
        });
        p
    }

    #[tokio::test]
    async fn deletion_removes_the_finalizer_only_after_teardown_succeeded() {
        let (client, mut server) = mock_client();
        let backend = Arc::new(ScriptedBackend::tearing_down(report(vec![
            resource(
                Kind::Function,
                "tap-dev1-csv-validator",
                EngineAction::Delete,
                true,
            ),
            resource(
                Kind::Table,
                "tap-dev1-transactions",
                EngineAction::AlreadyGone,
                false,
            ),
        ])));
        let ctx = context(client, backend.clone(), Metrics::new());
        let p = deleting_pipeline();
        // A newer pipeline with the same suffix waits as a duplicate; it is woken once the stack is gone.
        let successor = finalized(pipeline("successor", "dev1", 10));
        ctx.set_stores(vec![store_of(&[p.clone(), successor])]);
        let (waker, mut woken) = futures::channel::mpsc::unbounded();
        ctx.set_wakers(vec![(Some("default".into()), waker)]);
        let task = spawn_reconcile(p.clone(), ctx);

        let status = server.expect("PATCH", &status_uri("test")).await;
        assert_eq!(status.body["status"]["phase"], "Deleting");
        assert_eq!(
            backend.teardown_calls(),
            0,
            "Deleting is recorded before the teardown"
        );
        status.applied(&p);
        assert_eq!(server.expect_event().await["reason"], "PhaseChanged");
        let deleted = server.expect_event().await;
        assert_eq!(deleted["reason"], "Deleted");
        assert_eq!(deleted["note"], "Function tap-dev1-csv-validator: deleted");

        let remove = server.expect("PATCH", &pipeline_uri("test")).await;
        assert_eq!(backend.teardown_calls(), 1);
        assert_eq!(
            remove.body,
            json!([
                {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/0"},
            ])
        );
        let mut gone = to_json(&p);
        gone["metadata"]["finalizers"] = json!([]);
        remove.ok(gone);
        finish(task).await.expect("cleanup");
        let next = woken.try_recv().expect("a successor was woken");
        assert_eq!(next.name, "successor");
    }

    #[tokio::test]
    async fn a_failed_teardown_keeps_the_finalizer() {
        let (client, mut server) = mock_client();
        let backend = Arc::new(ScriptedBackend::tearing_down(report(vec![
            resource(
                Kind::Function,
                "tap-dev1-csv-validator",
                EngineAction::Delete,
                true,
            ),
            resource(
                Kind::Table,
                "tap-dev1-transactions",
                EngineAction::Fail {
                    message: "dynamodb:DeleteTable on Table tap-dev1-transactions: AccessDenied"
                        .into(),
                    class: ErrorClass::Terminal,
                },
                false,
            ),
        ])));
        let ctx = context(client, backend.clone(), Metrics::new());
        let p = deleting_pipeline();
        // A newer pipeline with the same suffix waits as a duplicate; it is woken once the stack is gone.
        let successor = finalized(pipeline("successor", "dev1", 10));
        ctx.set_stores(vec![store_of(&[p.clone(), successor])]);
        let (waker, mut woken) = futures::channel::mpsc::unbounded();
        ctx.set_wakers(vec![(Some("default".into()), waker)]);
        let task = spawn_reconcile(p.clone(), ctx);

        server
            .expect("PATCH", &status_uri("test"))
            .await
            .applied(&p);
        assert_eq!(server.expect_event().await["reason"], "PhaseChanged");
        assert_eq!(server.expect_event().await["reason"], "Deleted");
        let status = server.expect("PATCH", &status_uri("test")).await;
        assert_eq!(status.body["status"]["phase"], "Failed");
        status.applied(&p);
        let incomplete = server.expect_event().await;
        assert_eq!(incomplete["reason"], "TeardownIncomplete");
        assert_eq!(incomplete["type"], "Warning");

        // No finalizer patch: the reconcile ends with an error instead.
        let err = finish(task).await.expect_err("teardown failed");
        assert!(
            woken.try_recv().is_err(),
            "the suffix is not free while the stack remains"
        );
        assert_eq!(err.kind(), ErrorKind::AwsTerminal);
        assert_eq!(backend.teardown_calls(), 1);
    }

    #[tokio::test]
    async fn retain_lets_the_finalizer_go_without_teardown() {
        let (client, mut server) = mock_client();
        let backend = Arc::new(ScriptedBackend::default());
        let ctx = context(client, backend.clone(), Metrics::new());
        let mut p = deleting_pipeline();
        p.spec.deletion_policy = DeletionPolicy::Retain;
        let task = spawn_reconcile(p.clone(), ctx);

        assert_eq!(server.expect_event().await["reason"], "Retained");
        let remove = server.expect("PATCH", &pipeline_uri("test")).await;
        assert_eq!(remove.body[1]["op"], "remove");
        remove.ok(to_json(&p));
        finish(task).await.expect("cleanup");
        assert_eq!(backend.teardown_calls(), 0);
    }

    #[tokio::test]
    async fn drift_and_corrections_publish_one_event_each_and_requeue_to_verify() {
        let (client, mut server) = mock_client();
        let diff = crate::drivers::FieldDiff {
            field: "memoryMb".into(),
            expected: json!(512),
            actual: json!(256),
        };
        let mut r = report(vec![resource(
            Kind::Function,
            "tap-dev1-csv-validator",
            EngineAction::Update(vec![diff]),
            true,
        )]);
        let drift = |field: &str, expected: &str, actual: &str| DriftEntry {
            kind: "Function".into(),
            name: "tap-dev1-csv-validator".into(),
            field: field.into(),
            expected: expected.into(),
            actual: actual.into(),
            first_seen: "2026-11-25T09:00:00Z".into(),
            action: DriftAction::Corrected,
        };
        r.drift = vec![
            drift("memoryMb", "512", "256"),
            drift("timeoutSeconds", "30", "3"),
        ];
        let ctx = context(
            client,
            Arc::new(ScriptedBackend::reconciling(r)),
            Metrics::new(),
        );
        let mut p = finalized(pipeline("test", "dev1", 60));
        p.status = Some(TransactionPipelineStatus {
            phase: Some(Phase::Ready),
            ..Default::default()
        });
        let task = spawn_reconcile(p.clone(), ctx.clone());

        let status = server.expect("PATCH", &status_uri("test")).await;
        assert_eq!(status.body["status"]["driftCount"], 2);
        assert_eq!(
            condition(&status.body["status"], "Drifted")["status"],
            "True"
        );
        status.applied(&p);
        // Phase stays Ready (every drift corrected): no PhaseChanged event.
        let updated = server.expect_event().await;
        assert_eq!(updated["reason"], "Updated");
        assert_eq!(
            updated["note"],
            "Function tap-dev1-csv-validator: updated: memoryMb"
        );
        let first = server.expect_event().await;
        assert_eq!(first["reason"], "DriftDetected");
        assert_eq!(
            first["note"],
            "Function tap-dev1-csv-validator field memoryMb: expected 512, actual 256 (Corrected)"
        );
        let second = server.expect_event().await;
        assert_eq!(second["reason"], "DriftDetected");
        assert!(second["note"].as_str().unwrap().contains("timeoutSeconds"));

        let action = finish(task).await.expect("reconcile");
        assert_eq!(action, Action::requeue(VERIFY_REQUEUE));
        let metrics = ctx.metrics.encode();
        assert!(metrics
            .contains("tap_drift_detected_total{resource_kind=\"Function\",field=\"memoryMb\"} 1"));
    }

    #[tokio::test]
    async fn the_api_key_secret_is_applied_only_when_missing_with_an_owner_reference() {
        let (client, mut server) = mock_client();
        let backend = ScriptedBackend::default();
        for _ in 0..2 {
            let mut r = report(vec![]);
            r.api_key = Some(SecretValue("s3cr3t-key".into()));
            backend.reconciles.lock().unwrap().push_back(Ok(r));
        }
        let ctx = context(client, Arc::new(backend), Metrics::new());
        let mut p = finalized(pipeline("test", "dev1", 60));
        p.status = Some(TransactionPipelineStatus {
            phase: Some(Phase::Ready),
            ..Default::default()
        });

        let task = spawn_reconcile(p.clone(), ctx.clone());
        server
            .expect("PATCH", &status_uri("test"))
            .await
            .applied(&p);
        server
            .expect("GET", "/api/v1/namespaces/default/secrets/test-api-key")
            .await
            .not_found();
        let apply = server
            .expect(
                "PATCH",
                "/api/v1/namespaces/default/secrets/test-api-key?&force=true&fieldManager=tap-controller",
            )
            .await;
        let secret = apply.body.clone();
        assert_eq!(secret["kind"], "Secret");
        assert_eq!(secret["data"]["apiKey"], "czNjcjN0LWtleQ==");
        let owner = &secret["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "TransactionPipeline");
        assert_eq!(owner["name"], "test");
        assert_eq!(owner["uid"], "uid-test");
        assert_eq!(owner["controller"], true);
        let mut written = secret.clone();
        written["metadata"]["namespace"] = json!("default");
        apply.ok(secret);
        finish(task).await.expect("reconcile");

        // Unchanged key: read (a deleted Secret would be noticed), not written again.
        let task = spawn_reconcile(p.clone(), ctx);
        server
            .expect("PATCH", &status_uri("test"))
            .await
            .applied(&p);
        let current = server
            .expect("GET", "/api/v1/namespaces/default/secrets/test-api-key")
            .await;
        current.ok(written);
        finish(task).await.expect("reconcile");
    }

    #[test]
    fn backoff_doubles_from_5s_to_5min() {
        let seconds: Vec<u64> = (0..8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(seconds, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn requeue_follows_the_phase() {
        let memory = DriftMemory::default();
        let resync = Duration::from_secs(600);
        let none = report(vec![]);
        assert_eq!(
            requeue_after(&none, Phase::Provisioning, &memory, resync),
            PROVISIONING_REQUEUE
        );
        assert_eq!(
            requeue_after(&none, Phase::WaitingForImages, &memory, resync),
            PROVISIONING_REQUEUE
        );
        assert_eq!(requeue_after(&none, Phase::Ready, &memory, resync), resync);
        assert_eq!(
            requeue_after(&none, Phase::Drifted, &memory, resync),
            resync
        );
    }
}
