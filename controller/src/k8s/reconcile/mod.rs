//! The reconciler: the finalizer, then `apply` (guard, converge) or `cleanup` (teardown). Both decide an
//! [`Outcome`] — the status to write, the Secret, the Events, the requeue, the error — as data, and one
//! place, [`commit`], carries it out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{self, finalizer};
use kube::ResourceExt;

use super::context::{Context, Handled};
use super::error::{Error, ErrorCategory};
use super::{events, secret, status};
use crate::api::{
    DeletionPolicy, Phase, TransactionPipeline, TransactionPipelineStatus, FINALIZER,
};
use crate::drivers::SecretValue;
use crate::engine::{Action as EngineAction, DriftMemory, EngineError, Pipeline, Report};

/// Requeue while resources are being created or wait for images.
pub const PROVISIONING_REQUEUE: Duration = Duration::from_secs(15);
/// Requeue after a correction, to verify it held.
pub const VERIFY_REQUEUE: Duration = Duration::from_secs(10);

/// How much older than itself a resync's walk may take the account-wide answers other pipelines'
/// walks read (the listing of every role, REST API and usage plan: see `drivers::batch`): pipelines
/// resyncing within this of each other (the jitter spreads a fleet over a tenth of the period) read
/// each listing once between them. Such an answer only confirms, so the most it does is see a change
/// made in these seconds at the next resync rather than this one.
pub const RESYNC_SHARED_READS_AGE: Duration = Duration::from_secs(10);

/// How much older than now the account-wide answers a reconcile takes may be, from what it was asked
/// for (`now`) and what the pipeline's previous reconcile was (`previous`, none since the controller
/// started): a spec change reads them afresh; a new reconcile request whose value is a timestamp
/// (`date +%s`, RFC 3339) takes answers read since that moment, any other value afresh; a resync, a
/// retry, or the first reconcile after a restart, up to [`RESYNC_SHARED_READS_AGE`].
pub fn shared_reads_age(
    previous: Option<&Handled>,
    now: &Handled,
    wall_clock: DateTime<Utc>,
) -> Duration {
    let mut age = RESYNC_SHARED_READS_AGE;
    if previous.is_some_and(|p| p.generation != now.generation) {
        age = Duration::ZERO;
    }
    if let Some(request) = now.request.as_deref() {
        if previous.and_then(|p| p.request.as_deref()) != Some(request) {
            let since = requested_at(request)
                .and_then(|at| (wall_clock - at).to_std().ok())
                .unwrap_or(Duration::ZERO);
            age = age.min(since);
        }
    }
    age
}

/// The moment a reconcile request's value names: epoch seconds or an RFC 3339 timestamp.
fn requested_at(value: &str) -> Option<DateTime<Utc>> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<i64>() {
        return DateTime::from_timestamp(seconds, 0);
    }
    DateTime::parse_from_rfc3339(value)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

/// What one reconcile decided.
pub struct Outcome {
    /// The status to apply, if it changes.
    pub status: Option<TransactionPipelineStatus>,
    /// The phase for the `tap_pipelines` gauge.
    pub phase: Option<Phase>,
    /// The API key's value, for the Secret.
    pub secret: Option<SecretValue>,
    pub events: Vec<Event>,
    /// Drifted fields seen for the first time: `(resource kind, field)`.
    pub new_drift: Vec<(String, String)>,
    /// A problem reported without failing the reconcile (it waits for the resync or a spec change).
    pub problem: Option<ErrorCategory>,
    pub requeue: Action,
    /// The reconcile's error: the Controller's error policy retries it.
    pub error: Option<Error>,
}

impl Outcome {
    fn requeue(requeue: Action) -> Self {
        Self {
            status: None,
            phase: None,
            secret: None,
            events: Vec::new(),
            new_drift: Vec::new(),
            problem: None,
            requeue,
            error: None,
        }
    }
}

/// The Controller's reconcile function.
pub async fn reconcile(
    pipeline: Arc<TransactionPipeline>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    let _running = ctx.heap.enter();
    let owner = pipeline.owner_key();
    let namespace = pipeline.namespace().unwrap_or_else(|| "default".into());
    let api: Api<TransactionPipeline> = Api::namespaced(ctx.client.clone(), &namespace);
    let pipeline = match with_finalizer(&api, pipeline).await {
        Ok(pipeline) => pipeline,
        Err(e) => {
            return Err(Error::Finalizer(Box::new(finalizer::Error::AddFinalizer(
                e,
            ))))
        }
    };
    let result = finalizer(&api, FINALIZER, pipeline, |event| async {
        match event {
            finalizer::Event::Apply(p) => {
                let outcome = apply(&p, &ctx).await;
                commit(&p, &api, &ctx, outcome).await
            }
            finalizer::Event::Cleanup(p) => cleanup(&p, &api, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        ctx.succeeded(&owner);
    }
    result
}

/// Adds the finalizer to a pipeline that lacks it and is not being deleted, before any AWS call, and
/// returns the patched object, so that this reconcile goes on to apply it. (kube's `finalizer` adds it
/// and stops, waiting for the patch's own watch event: one debounce and one watch round trip more
/// before every new pipeline's first walk.) The same JSON patch as kube's: it fails, and the
/// reconcile is retried, if someone changed the finalizers meanwhile.
async fn with_finalizer(
    api: &Api<TransactionPipeline>,
    pipeline: Arc<TransactionPipeline>,
) -> Result<Arc<TransactionPipeline>, kube::Error> {
    if pipeline.metadata.deletion_timestamp.is_some()
        || pipeline.finalizers().iter().any(|f| f == FINALIZER)
    {
        return Ok(pipeline);
    }
    let operations = if pipeline.finalizers().is_empty() {
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    } else {
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": pipeline.finalizers()},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ])
    };
    let patch: json_patch::Patch =
        serde_json::from_value(operations).expect("a well-formed JSON patch");
    let patched = api
        .patch(
            &pipeline.name_any(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Json::<()>(patch),
        )
        .await?;
    Ok(Arc::new(patched))
}

/// The Controller's error policy: transient errors back off per object (5 s doubling to 5 min),
/// terminal ones wait for the resync period (or a spec change).
pub fn error_policy(
    pipeline: Arc<TransactionPipeline>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let owner = pipeline.owner_key();
    ctx.metrics.error(error.category());
    if error.is_transient() {
        let delay = ctx.next_backoff(&owner);
        tracing::warn!(pipeline = %owner, error = %error, retry_in = ?delay, "reconcile failed");
        Action::requeue(delay)
    } else {
        tracing::warn!(pipeline = %owner, error = %error, "reconcile failed");
        Action::requeue(ctx.resync)
    }
}

fn memory_key(p: &TransactionPipeline) -> String {
    p.uid().unwrap_or_else(|| p.owner_key())
}

fn previous_phase(p: &TransactionPipeline) -> Option<Phase> {
    p.status.as_ref().and_then(|s| s.phase)
}

/// Carries an outcome out: status, phase gauge, Secret, Events, metrics; then the requeue or the error.
async fn commit(
    p: &TransactionPipeline,
    api: &Api<TransactionPipeline>,
    ctx: &Context,
    outcome: Outcome,
) -> Result<Action, Error> {
    let owner = p.owner_key();
    let name = p.name_any();
    match &outcome.status {
        Some(next) if status::changed(p.status.as_ref(), next) => {
            status::patch_status(api, &name, next).await?;
        }
        Some(_) => tracing::debug!(pipeline = %owner, "status unchanged: not written"),
        None => {}
    }
    if let Some(phase) = outcome.phase {
        ctx.metrics.set_phase(&owner, Some(phase));
    }
    if let Some(value) = &outcome.secret {
        if secret::ensure(&ctx.client, p, value).await? {
            tracing::info!(pipeline = %owner, secret = %secret::secret_name(&name), "API key Secret written");
        }
    }
    for event in &outcome.events {
        ctx.publish(p, event).await;
    }
    for (kind, field) in &outcome.new_drift {
        ctx.metrics.drift_detected(kind, field);
    }
    if let Some(category) = outcome.problem {
        ctx.metrics.error(category);
    }
    match outcome.error {
        Some(error) => Err(error),
        None => Ok(outcome.requeue),
    }
}

/// Apply path: the duplicate-suffix guard, then converge.
async fn apply(p: &TransactionPipeline, ctx: &Context) -> Outcome {
    let owner = p.owner_key();

    // Paused: no AWS call at all; the annotation's removal is a change the watch brings back.
    if p.is_paused() {
        tracing::info!(pipeline = %owner, "paused: no AWS call");
        return Outcome {
            status: Some(status::paused(p)),
            phase: Some(Phase::Paused),
            events: events::phase_changed(
                previous_phase(p),
                Phase::Paused,
                "annotation tap.dev/paused is \"true\"",
            )
            .into_iter()
            .collect(),
            ..Outcome::requeue(Action::await_change())
        };
    }

    // Another, older pipeline owns this suffix: touch nothing in AWS.
    if let Some(other) = ctx.suffixes.older_with_same_suffix(p) {
        let message = format!(
            "environmentSuffix {:?} is already used by TransactionPipeline {} (older); this pipeline touches nothing in AWS",
            p.spec.environment_suffix,
            other.owner_key()
        );
        let was_conflicted = p
            .status
            .as_ref()
            .is_some_and(|s| s.is_true(crate::api::ConditionType::Conflict));
        let mut events: Vec<Event> = events::phase_changed(
            previous_phase(p),
            Phase::Failed,
            "duplicate environmentSuffix",
        )
        .into_iter()
        .collect();
        if !was_conflicted {
            events.push(events::event(
                EventType::Warning,
                "DuplicateSuffix",
                "Reconcile",
                message.clone(),
            ));
        }
        return Outcome {
            status: Some(status::duplicate_suffix(p, &message)),
            phase: Some(Phase::Failed),
            events,
            problem: Some(ErrorCategory::Conflict),
            ..Outcome::requeue(Action::requeue(ctx.resync))
        };
    }

    let key = memory_key(p);
    let asked = Handled {
        generation: p.metadata.generation,
        request: p.control_annotations().1.map(str::to_string),
    };
    let previous = ctx.handle(&key, asked.clone());
    let age = shared_reads_age(previous.as_ref(), &asked, Utc::now());
    let as_of = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
    let mut memory = ctx.take_memory(&key);
    let result = ctx
        .backend
        .reconcile(
            Pipeline {
                owner: &owner,
                spec: &p.spec,
            },
            &mut memory,
            as_of,
        )
        .await;
    let outcome = match result {
        Ok(report) => {
            let requeue = ctx.jittered(requeue_after(
                &report,
                report.phase(false),
                &memory,
                ctx.resync,
            ));
            converged(p, report, requeue)
        }
        Err(e) => engine_failed(p, e, ctx),
    };
    ctx.put_memory(&key, memory);
    outcome
}

/// The walk's outcome.
fn converged(p: &TransactionPipeline, report: Report, requeue: Duration) -> Outcome {
    let owner = p.owner_key();
    let phase = report.phase(false);
    let previous = p.status.as_ref();
    let status = report.status(p.metadata.generation, previous, false);
    let events = events::walk_events(previous, &report, phase);
    let new_drift = events::new_drift(previous, &report)
        .into_iter()
        .map(|d| (d.kind.clone(), d.field.clone()))
        .collect();
    tracing::info!(
        pipeline = %owner,
        phase = phase.as_str(),
        elapsed = ?report.elapsed,
        aws_calls = report.calls.values().sum::<u64>(),
        requeue = ?requeue,
        "reconciled"
    );
    let failed = report.failures().len();
    let (problem, error) = match report.first_aws_error() {
        Some(first) if report.only_transient_failures() => (
            None,
            Some(Error::Aws {
                failed,
                source: first.clone(),
            }),
        ),
        Some(_) => (Some(ErrorCategory::AwsTerminal), None),
        None if !report.conflicts().is_empty() => (Some(ErrorCategory::Conflict), None),
        None => (None, None),
    };
    Outcome {
        status: Some(status),
        phase: Some(phase),
        secret: report.api_key.clone(),
        events,
        new_drift,
        problem,
        requeue: Action::requeue(requeue),
        error,
    }
}

/// The engine refused (invalid spec) or could not reach AWS: record it in the status.
fn engine_failed(p: &TransactionPipeline, error: EngineError, ctx: &Context) -> Outcome {
    match error {
        EngineError::Invalid(errors) => {
            let message = errors.to_string();
            let category = ErrorCategory::InvalidSpec;
            let same = p.status.as_ref().is_some_and(|s| {
                s.condition(crate::api::ConditionType::Ready)
                    .is_some_and(|c| c.reason == category.reason() && c.message == message)
            });
            let mut events: Vec<Event> =
                events::phase_changed(previous_phase(p), Phase::Failed, "invalid spec")
                    .into_iter()
                    .collect();
            if !same {
                events.push(events::problem(category, "Reconcile", message.clone()));
            }
            // Nothing to retry until the spec changes (which triggers a reconcile).
            Outcome {
                status: Some(status::problem(
                    p,
                    Phase::Failed,
                    category.reason(),
                    &message,
                )),
                phase: Some(Phase::Failed),
                events,
                problem: Some(category),
                ..Outcome::requeue(Action::requeue(ctx.resync))
            }
        }
        EngineError::Connect {
            region,
            as_role,
            source,
        } => {
            let error = Error::Connect {
                region,
                as_role,
                source,
            };
            let category = error.category();
            let phase = if category.is_transient() {
                previous_phase(p).unwrap_or(Phase::Provisioning)
            } else {
                Phase::Failed
            };
            let message = error.to_string();
            let mut events: Vec<Event> = events::phase_changed(previous_phase(p), phase, "")
                .into_iter()
                .collect();
            events.push(events::problem(category, "Reconcile", message.clone()));
            Outcome {
                status: Some(status::problem(p, phase, category.reason(), &message)),
                phase: Some(phase),
                events,
                error: Some(error),
                ..Outcome::requeue(Action::requeue(ctx.resync))
            }
        }
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
    let key = memory_key(p);
    let retained = |note: String| Outcome {
        events: vec![events::event(
            EventType::Normal,
            "Retained",
            "Cleanup",
            note,
        )],
        ..Outcome::requeue(Action::await_change())
    };
    if p.spec.deletion_policy == DeletionPolicy::Retain {
        let outcome = retained("deletionPolicy: Retain: the AWS stack is left in place".into());
        ctx.forget(&key, &owner);
        ctx.suffixes.wake_successor(p);
        return commit(p, api, ctx, outcome).await;
    }
    if let Some(other) = ctx.suffixes.older_with_same_suffix(p) {
        // Its stack belongs to the older pipeline: never delete it from here.
        let outcome = retained(format!(
            "environmentSuffix {:?} belongs to {}: nothing of it is torn down",
            p.spec.environment_suffix,
            other.owner_key()
        ));
        ctx.forget(&key, &owner);
        return commit(p, api, ctx, outcome).await;
    }
    if previous_phase(p) != Some(Phase::Deleting) {
        let started = Outcome {
            status: Some(status::deleting(p)),
            phase: Some(Phase::Deleting),
            events: events::phase_changed(previous_phase(p), Phase::Deleting, "")
                .into_iter()
                .collect(),
            ..Outcome::requeue(Action::await_change())
        };
        commit(p, api, ctx, started).await?;
    }
    let result = ctx
        .backend
        .teardown(Pipeline {
            owner: &owner,
            spec: &p.spec,
        })
        .await;
    let outcome = match result {
        Ok(report) if report.converged() => {
            tracing::info!(pipeline = %owner, elapsed = ?report.elapsed, "stack torn down; removing the finalizer");
            ctx.forget(&key, &owner);
            ctx.suffixes.wake_successor(p);
            Outcome {
                events: events::teardown_events(&report),
                ..Outcome::requeue(Action::await_change())
            }
        }
        Ok(report) => incomplete_teardown(p, &report),
        Err(EngineError::Invalid(errors)) => {
            let category = ErrorCategory::InvalidSpec;
            let message = format!("cannot tear down: {errors}");
            Outcome {
                status: Some(status::problem(
                    p,
                    Phase::Failed,
                    category.reason(),
                    &message,
                )),
                events: vec![events::problem(category, "Cleanup", message)],
                error: Some(Error::InvalidSpec(errors)),
                ..Outcome::requeue(Action::await_change())
            }
        }
        Err(EngineError::Connect {
            region,
            as_role,
            source,
        }) => {
            let error = Error::Connect {
                region,
                as_role,
                source,
            };
            Outcome {
                events: vec![events::problem(
                    error.category(),
                    "Cleanup",
                    format!("cannot tear down: {error}"),
                )],
                error: Some(error),
                ..Outcome::requeue(Action::await_change())
            }
        }
    };
    commit(p, api, ctx, outcome).await
}

/// Keep the finalizer: record what blocks and retry.
fn incomplete_teardown(p: &TransactionPipeline, report: &Report) -> Outcome {
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
    let mut events = events::teardown_events(report);
    events.push(events::event(
        EventType::Warning,
        "TeardownIncomplete",
        "Cleanup",
        message.clone(),
    ));
    let error = if !report.conflicts().is_empty() {
        Error::Conflict(message)
    } else {
        Error::Teardown {
            category: if report.only_transient_failures() {
                ErrorCategory::AwsTransient
            } else {
                ErrorCategory::AwsTerminal
            },
            source: report.first_aws_error().cloned(),
            message,
        }
    };
    Outcome {
        status: Some(report.status(p.metadata.generation, p.status.as_ref(), true)),
        events,
        error: Some(error),
        ..Outcome::requeue(Action::await_change())
    }
}

#[cfg(test)]
mod tests;
