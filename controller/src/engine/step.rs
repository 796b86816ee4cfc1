//! One resource's turn in a walk: observe it, prove it ours, then create, update the drifted fields, or
//! leave it (forward); or delete it (backward). Every kind goes through the same steps; `with_driver!`
//! picks the driver for the resource's spec.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::control::Control;
use super::drift::DriftMemory;
use super::report::{Action, ResourceReport};
use super::Mode;
use crate::api::{AdoptionPolicy, DriftPolicy, TagPolicy};
use crate::aws::{Aws, AwsError};
use crate::desired::{Resource, ResourceId, ResourceSpec, Tags, OWNER_TAG};
use crate::drivers::{self, Ctx, Driver, DriverError, Observed, Outputs};

macro_rules! with_driver {
    ($spec:expr, |$driver:ident, $s:ident| $body:expr) => {
        match $spec {
            ResourceSpec::Bucket($s) => {
                let $driver = drivers::s3::Buckets;
                $body
            }
            ResourceSpec::Table($s) => {
                let $driver = drivers::dynamodb::Tables;
                $body
            }
            ResourceSpec::Repository($s) => {
                let $driver = drivers::ecr::Repositories;
                $body
            }
            ResourceSpec::LogGroup($s) => {
                let $driver = drivers::logs::LogGroups;
                $body
            }
            ResourceSpec::Queue($s) => {
                let $driver = drivers::sqs::Queues;
                $body
            }
            ResourceSpec::Topic($s) => {
                let $driver = drivers::sns::Topics;
                $body
            }
            ResourceSpec::Role($s) => {
                let $driver = drivers::iam::Roles;
                $body
            }
            ResourceSpec::Function($s) => {
                let $driver = drivers::lambda::Functions;
                $body
            }
            ResourceSpec::Permission($s) => {
                let $driver = drivers::permission::Permissions;
                $body
            }
            ResourceSpec::StateMachine($s) => {
                let $driver = drivers::sfn::StateMachines;
                $body
            }
            ResourceSpec::RestApi($s) => {
                let $driver = drivers::apigateway::RestApis;
                $body
            }
            ResourceSpec::Stage($s) => {
                let $driver = drivers::apigateway::Stages;
                $body
            }
            ResourceSpec::ApiKey($s) => {
                let $driver = drivers::apigateway::ApiKeys;
                $body
            }
            ResourceSpec::UsagePlan($s) => {
                let $driver = drivers::apigateway::UsagePlans;
                $body
            }
            ResourceSpec::Alarm($s) => {
                let $driver = drivers::cloudwatch::Alarms;
                $body
            }
        }
    };
}

/// Everything one resource's turn needs.
pub(super) struct Step<'a> {
    pub aws: &'a Aws,
    pub resource: &'a Resource,
    pub deps: &'a BTreeMap<ResourceId, Outputs>,
    /// The ownership tag's value of the pipeline the walk is for.
    pub owner: &'a str,
    pub mode: Mode,
    pub policy: DriftPolicy,
    pub tag_policy: TagPolicy,
    pub adoption_policy: AdoptionPolicy,
    pub memory: &'a Mutex<DriftMemory>,
    pub control: &'a Control,
    pub progress: Option<&'a dyn super::Progress>,
    /// The stack was never written (no control table): kinds whose create refuses an existing
    /// resource are created without a read first ([`Driver::CREATE_REFUSES_EXISTING`]).
    pub fresh: &'a super::Fresh,
}

/// How much of a resource a turn reads.
#[derive(Clone, Copy)]
enum Read {
    /// Every setting, to diff against the desired spec.
    Everything,
    /// Existence, owner and ids: what a delete needs.
    Ownership,
}

/// What a turn did, before it is timed into a [`ResourceReport`].
struct Turn {
    action: Action,
    applied: bool,
    outputs: Outputs,
    remembered: bool,
    /// Observed before the stack's lock was taken (by this turn or another): observe again under it.
    stale: bool,
}

impl Turn {
    fn did(action: Action, outputs: Outputs) -> Self {
        Self {
            action,
            applied: true,
            outputs,
            remembered: false,
            stale: false,
        }
    }

    fn saw(action: Action, outputs: Outputs) -> Self {
        Self {
            action,
            applied: false,
            outputs,
            remembered: false,
            stale: false,
        }
    }

    fn stale() -> Self {
        Self {
            stale: true,
            ..Self::saw(Action::NoChange, Outputs::default())
        }
    }

    /// A transient failure, worth another try within the walk.
    fn retryable(&self) -> bool {
        matches!(&self.action, Action::Fail(e) if e.is_transient() && e.code.as_deref() != Some(super::LOCKED))
    }
}

/// Tries of a resource's turn within one walk when it fails transiently (throttling the SDK's own
/// retries did not absorb, a read that said not-found right after a create): each try observes afresh.
fn step_retries() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(4))
        .with_max_times(2)
        .with_jitter()
        .build()
}

impl Step<'_> {
    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            aws: self.aws,
            id: &self.resource.id,
            owner: self.owner,
            deps: self.deps,
            tag_policy: self.tag_policy,
        }
    }

    fn writes(&self) -> bool {
        self.mode == Mode::Apply && self.policy == DriftPolicy::Correct
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, DriftMemory> {
        self.memory.lock().expect("drift memory poisoned")
    }

    fn report(&self, started: Instant, turn: Turn) -> ResourceReport {
        ResourceReport {
            id: self.resource.id.clone(),
            action: turn.action,
            applied: turn.applied,
            outputs: turn.outputs,
            remembered: turn.remembered,
            elapsed: started.elapsed(),
        }
    }

    /// Forward: bring the resource to the spec.
    pub async fn converge(&self) -> ResourceReport {
        let started = self.start();
        let mut retries = step_retries();
        let mut turn = loop {
            // Boxed: a turn's future is as large as the largest driver's (observe, create, update,
            // adopt inline); on the heap it is one allocation per turn instead of a deep stack.
            let turn = with_driver!(&self.resource.spec, |driver, spec| Box::pin(
                self.converge_with(&driver, spec)
            )
            .await);
            if turn.stale {
                continue;
            }
            match retries.next() {
                Some(delay) if turn.retryable() => tokio::time::sleep(delay).await,
                _ => break turn,
            }
        };
        let id = &self.resource.id;
        if turn.retryable() {
            // Known to exist as ours from an earlier walk: its dependents go on with what it exposed.
            if let Some(outputs) = self.memory().remembered(id) {
                turn.outputs = outputs.clone();
                turn.remembered = true;
            }
        } else if ResourceReport::usable_action(&turn.action, turn.applied) {
            self.memory().remember(id, &turn.outputs);
        }
        self.finish(started, turn)
    }

    /// Backward: delete the resource if it is ours.
    pub async fn tear_down(&self) -> ResourceReport {
        let started = self.start();
        let mut retries = step_retries();
        let turn = loop {
            let turn = with_driver!(&self.resource.spec, |driver, spec| Box::pin(
                self.tear_down_with(&driver, spec)
            )
            .await);
            if turn.stale {
                continue;
            }
            match retries.next() {
                Some(delay) if turn.retryable() => tokio::time::sleep(delay).await,
                _ => break turn,
            }
        };
        self.finish(started, turn)
    }

    fn start(&self) -> Instant {
        if let Some(progress) = self.progress {
            progress.started(&self.resource.id);
        }
        Instant::now()
    }

    fn finish(&self, started: Instant, turn: Turn) -> ResourceReport {
        let report = self.report(started, turn);
        if let Some(progress) = self.progress {
            progress.finished(&report);
        }
        report
    }

    /// Takes the stack's lock before this turn's first write: `Some(turn)` when the turn must stop
    /// here (someone else holds it; or it was taken after this turn observed, so observe again).
    async fn lock_for_write(&self, observed_at: Instant) -> Option<Turn> {
        // From here on this walk's reads are its own calls again (see `drivers::batch`).
        drivers::batch::writing();
        match self.control.writer(self.progress).await {
            Ok(taken) if taken > observed_at => Some(Turn::stale()),
            Ok(_) => None,
            Err(e) => Some(Turn::saw(Action::Fail(e), Outputs::default())),
        }
    }

    /// Reads the resource (for a teardown, only what proves it ours: [`Driver::observe_owner`]); one
    /// found under our name without any ownership tag belongs to the pipeline that recorded the intent
    /// to create it (a create that stopped before its tags were set), if any.
    async fn observe<D: Driver>(
        &self,
        driver: &D,
        spec: &D::Spec,
        read: Read,
    ) -> Result<Option<Observed<D::Spec>>, AwsError> {
        let id = &self.resource.id;
        let ctx = self.ctx();
        let found = match read {
            Read::Everything => driver.observe(&ctx, spec).await?,
            Read::Ownership => driver.observe_owner(&ctx, spec).await?,
        };
        let Some(mut observed) = found else {
            return Ok(None);
        };
        if id.kind.creates_untagged() && observed.owner().is_none() {
            if let Some(intent) = self.control.intent(id).await? {
                if intent.owner == self.owner {
                    tracing::info!(resource = %id, since = %intent.at, "an interrupted create of ours: resumed");
                }
                observed.parent_owner = Some(intent.owner);
            }
        }
        Ok(Some(observed))
    }

    /// Creates, with an intent recorded first where AWS cannot make a create and its tags one call.
    async fn create<D: Driver>(&self, driver: &D, spec: &D::Spec) -> Result<Outputs, DriverError> {
        let id = &self.resource.id;
        let untagged = id.kind.creates_untagged();
        if untagged {
            self.control.record_intent(id).await?;
        }
        let outputs = driver
            .create(&self.ctx(), spec, &self.resource.tags)
            .await?;
        if untagged {
            self.control.clear_intent(id).await?;
        }
        Ok(outputs)
    }

    async fn converge_with<D: Driver>(&self, driver: &D, spec: &D::Spec) -> Turn {
        let ctx = self.ctx();
        let tags = &self.resource.tags;
        let id = &self.resource.id;
        let observed_at = Instant::now();
        let observed =
            if D::CREATE_REFUSES_EXISTING && self.writes() && self.fresh.get(self.control).await {
                // Nothing to read on a stack never written: the create says if it exists after all.
                None
            } else {
                match self.observe_current(driver, spec).await {
                    Ok(observed) => observed,
                    Err(e) => return Turn::saw(failure(e.into()), Outputs::default()),
                }
            };
        let desired_json = desired_json(spec, tags);
        let now = chrono::Utc::now();
        let observed = match observed {
            Some(observed) => observed,
            None => {
                if self.writes() {
                    if let Some(turn) = self.lock_for_write(observed_at).await {
                        return turn;
                    }
                }
                let recreate = self.memory().note_missing(id, now, self.writes());
                if !self.writes() {
                    return Turn::saw(Action::Create, Outputs::default());
                }
                match self.create(driver, spec).await {
                    Ok(outputs) => {
                        self.memory().applied(id, &desired_json, recreate);
                        return Turn::did(Action::Create, outputs);
                    }
                    // It may exist after all (a retried create whose first answer was lost, another
                    // writer): look again before reporting; if it is there, go on as with any existing one.
                    Err(error @ DriverError::Aws(_)) => {
                        match self.observe(driver, spec, Read::Everything).await {
                            Ok(Some(observed)) => observed,
                            _ => return Turn::saw(failure(error), Outputs::default()),
                        }
                    }
                    Err(wait) => return Turn::saw(failure(wait), Outputs::default()),
                }
            }
        };
        let adopt = match self.ownership(&observed) {
            Ownership::Ours => false,
            Ownership::Adoptable => true,
            Ownership::NotOurs(conflict) => return Turn::saw(conflict, observed.outputs),
        };
        let resumed =
            !adopt && !observed.tags.contains_key(OWNER_TAG) && id.kind.creates_untagged();
        let changes = self.changes(spec, &observed);
        if adopt {
            return self
                .adopt(driver, spec, observed, changes, desired_json, observed_at)
                .await;
        }
        if changes.is_empty() {
            self.memory().applied(id, &desired_json, false);
            return Turn::saw(Action::NoChange, observed.outputs);
        }
        let decision =
            self.memory()
                .classify(id, &desired_json, &changes.diffs, now, self.writes());
        // A dry run of a correcting pipeline says what apply will do; a report-only pipeline, or a
        // correction held back after one that did not hold, differs and is left so.
        if self.mode == Mode::DryRun && self.policy == DriftPolicy::Correct && !decision.hold {
            return Turn::saw(Action::Update(changes.diffs), observed.outputs);
        }
        if !self.writes() || decision.hold {
            return Turn::saw(Action::Hold(changes.diffs), observed.outputs);
        }
        if let Some(turn) = self.lock_for_write(observed_at).await {
            return turn;
        }
        match driver.update(&ctx, spec, tags, &observed, &changes).await {
            Ok(outputs) => {
                if resumed {
                    if let Err(e) = self.control.clear_intent(id).await {
                        return Turn::saw(Action::Fail(e), observed.outputs);
                    }
                }
                self.memory()
                    .corrected(id, &desired_json, &changes.diffs, now);
                let outputs = if outputs == Outputs::default() {
                    observed.outputs
                } else {
                    outputs
                };
                Turn::did(Action::Update(changes.diffs), outputs)
            }
            Err(e) => Turn::saw(failure(e), observed.outputs),
        }
    }

    async fn tear_down_with<D: Driver>(&self, driver: &D, spec: &D::Spec) -> Turn {
        let ctx = self.ctx();
        let id = &self.resource.id;
        let observed_at = Instant::now();
        let observed = match self.observe(driver, spec, Read::Ownership).await {
            Ok(Some(observed)) => observed,
            Ok(None) => return Turn::saw(Action::AlreadyGone, Outputs::default()),
            Err(e) if e.is_not_found() => {
                return Turn::saw(Action::AlreadyGone, Outputs::default())
            }
            Err(e) => return Turn::saw(failure(e.into()), Outputs::default()),
        };
        if observed.owner() != Some(self.owner) {
            let message = format!("{id} is not owned by {}: not deleted", self.owner);
            return Turn::saw(Action::Conflict(message), Outputs::default());
        }
        if self.mode == Mode::DryRun {
            return Turn::saw(Action::Delete, Outputs::default());
        }
        if let Some(turn) = self.lock_for_write(observed_at).await {
            return turn;
        }
        match driver.delete(&ctx, &observed).await {
            Ok(()) => {
                if id.kind.creates_untagged() {
                    if let Err(e) = self.control.clear_intent(id).await {
                        return Turn::saw(Action::Fail(e), Outputs::default());
                    }
                }
                Turn::did(Action::Delete, Outputs::default())
            }
            Err(e) if e.is_not_found() => Turn::saw(Action::AlreadyGone, Outputs::default()),
            Err(e) => Turn::saw(failure(e.into()), Outputs::default()),
        }
    }

    /// Reads the resource to converge it. An observation that took a borrowed answer (another walk's,
    /// read before this one began: see `drivers::batch`) only confirms: unless it shows the resource
    /// ours and as specified, the resource is read again without borrowed answers, before anything is
    /// reported, remembered or written.
    async fn observe_current<D: Driver>(
        &self,
        driver: &D,
        spec: &D::Spec,
    ) -> Result<Option<Observed<D::Spec>>, AwsError> {
        // On the heap: a turn's future holds both readings, and a test thread's 2 MiB stack need not.
        let (observed, borrowed) = Box::pin(drivers::batch::observing(
            true,
            self.observe(driver, spec, Read::Everything),
        ))
        .await;
        let observed = observed?;
        if !borrowed {
            return Ok(observed);
        }
        let confirmed = observed.as_ref().is_some_and(|o| {
            matches!(self.ownership(o), Ownership::Ours) && self.changes(spec, o).is_empty()
        });
        if confirmed {
            return Ok(observed);
        }
        tracing::debug!(resource = %self.resource.id, "a borrowed answer did not confirm: read again");
        Box::pin(drivers::batch::observing(
            false,
            self.observe(driver, spec, Read::Everything),
        ))
        .await
        .0
    }

    /// What differs between the spec (and the resource's tags) and what was observed. Under
    /// `tagPolicy: Merge`, tags someone else added are not ours to compare.
    fn changes<S: Serialize>(&self, spec: &S, observed: &Observed<S>) -> drivers::Changes {
        let tags = &self.resource.tags;
        match self.tag_policy {
            TagPolicy::Exclusive => drivers::diff(spec, tags, &observed.spec, &observed.tags),
            TagPolicy::Merge => {
                let mut ours = observed.tags.clone();
                ours.retain(|k, _| tags.contains_key(k));
                drivers::diff(spec, tags, &observed.spec, &ours)
            }
        }
    }

    /// Whether a resource found under our name is this pipeline's, may be adopted, or is left untouched.
    fn ownership<S>(&self, observed: &Observed<S>) -> Ownership {
        let id = &self.resource.id;
        let conflict = |why: String| {
            Ownership::NotOurs(Action::Conflict(format!(
                "{id} exists but {why}: left untouched (ownership is proven by the {OWNER_TAG} tag)"
            )))
        };
        match observed.owner() {
            Some(owner) if owner == self.owner => Ownership::Ours,
            Some(other) => conflict(format!("is owned by {other}")),
            None if self.adoption_policy == AdoptionPolicy::Never => conflict(
                "is not tagged by tap-controller (adoptionPolicy: Adopt would adopt it)".into(),
            ),
            // Another controller's or pipeline's, half-tagged or with its pipeline tag removed by hand.
            None if observed.tags.keys().any(|k| k.starts_with("tap.dev/")) => conflict(
                "carries tap.dev/ tags without this pipeline's: it is not adopted".into(),
            ),
            None if observed.namesakes > 0 => conflict(format!(
                "is one of {} same-named resources, none of them this pipeline's: which one to adopt is ambiguous",
                observed.namesakes + 1
            )),
            None if self.policy == DriftPolicy::Report => conflict(
                "is not tagged by tap-controller, and driftPolicy: Report writes no tag to adopt it".into(),
            ),
            None => Ownership::Adoptable,
        }
    }

    /// Adopts an untagged resource: writes our tags and converges every differing field in one update.
    /// In a dry run it says so. Never held back by drift backoff: until its tag is written it is not ours.
    async fn adopt<D: Driver>(
        &self,
        driver: &D,
        spec: &D::Spec,
        observed: Observed<D::Spec>,
        changes: drivers::Changes,
        desired_json: serde_json::Value,
        observed_at: Instant,
    ) -> Turn {
        let id = &self.resource.id;
        if !self.writes() {
            return Turn::saw(Action::Adopt(changes.diffs), observed.outputs);
        }
        if let Some(turn) = self.lock_for_write(observed_at).await {
            return turn;
        }
        if changes.is_empty() {
            // A resource without tags of its own (a stage, a permission) under an untagged parent seen
            // before the parent was adopted: the parent's adoption makes it ours.
            return Turn::saw(Action::Adopt(changes.diffs), observed.outputs);
        }
        match driver
            .update(&self.ctx(), spec, &self.resource.tags, &observed, &changes)
            .await
        {
            Ok(outputs) => {
                tracing::info!(resource = %id, fields = changes.diffs.len(), "adopted");
                self.memory()
                    .corrected(id, &desired_json, &changes.diffs, chrono::Utc::now());
                let outputs = if outputs == Outputs::default() {
                    observed.outputs
                } else {
                    outputs
                };
                Turn::did(Action::Adopt(changes.diffs), outputs)
            }
            Err(e) => Turn::saw(failure(e), observed.outputs),
        }
    }
}

/// Who a resource found under our name belongs to, as far as this pipeline may act on it.
enum Ownership {
    Ours,
    /// Untagged, and `adoptionPolicy: Adopt`.
    Adoptable,
    NotOurs(Action),
}

fn failure(e: DriverError) -> Action {
    match e {
        DriverError::Wait(reason) => Action::Wait(reason),
        DriverError::Aws(e) => Action::Fail(e),
    }
}

/// The desired spec and tags as JSON, in the shape `drivers::diff` compares.
fn desired_json<S: Serialize>(spec: &S, tags: &Tags) -> serde_json::Value {
    let mut value = serde_json::to_value(spec).expect("specs serialize to JSON");
    if let serde_json::Value::Object(map) = &mut value {
        map.insert(
            "tags".into(),
            serde_json::to_value(tags).expect("tags serialize"),
        );
    }
    value
}
