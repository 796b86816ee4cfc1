//! What one walk over the graph did, per resource, and the phase it implies.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::api::{DriftAction, DriftEntry, Phase, ResourceState, StackOutputs};
use crate::aws::{AwsError, ErrorClass};
use crate::desired::ResourceId;
use crate::drivers::{FieldDiff, Outputs, SecretValue, WaitReason};

/// What the engine did (or, in a dry run, would do) to one resource.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Exists and matches the spec.
    NoChange,
    Create,
    /// Fields rewritten (or to rewrite, in a dry run).
    Update(Vec<FieldDiff>),
    Delete,
    /// Already absent (teardown).
    AlreadyGone,
    /// Could not act: a prerequisite is missing (an image, a dependency that failed or waits).
    Wait(WaitReason),
    /// Exists under our name without our ownership tag: left untouched.
    Conflict(String),
    /// Existed under our name with no tap-controller tag and `adoptionPolicy: Adopt`: tagged as ours and
    /// these fields converged (or, in a dry run, would be).
    Adopt(Vec<FieldDiff>),
    /// An AWS call failed.
    Fail(AwsError),
    /// Differs from the spec but policy or backoff forbids writing now.
    Hold(Vec<FieldDiff>),
    /// `deletionPolicy: Retain`: left in AWS.
    Retain,
}

#[derive(Clone, Debug)]
pub struct ResourceReport {
    pub id: ResourceId,
    pub action: Action,
    /// Whether the action was carried out (false in a dry run).
    pub applied: bool,
    pub outputs: Outputs,
    /// The outputs are remembered from an earlier walk: this walk's read failed for a moment.
    pub remembered: bool,
    pub elapsed: Duration,
}

impl ResourceReport {
    /// Converged: exists (or is gone, in teardown) and matches.
    pub fn is_done(&self) -> bool {
        match &self.action {
            Action::NoChange | Action::AlreadyGone | Action::Retain => true,
            Action::Create | Action::Update(_) | Action::Adopt(_) | Action::Delete => self.applied,
            _ => false,
        }
    }

    /// Exists as ours, so dependents can be converged against it (drift it keeps does not block them, nor
    /// a read that failed for a moment when an earlier walk saw it as ours).
    pub fn usable(&self) -> bool {
        match &self.action {
            Action::Fail(e) => e.is_transient() && self.remembered,
            action => Self::usable_action(action, self.applied),
        }
    }

    /// Whether what a turn did leaves the resource existing as ours.
    pub fn usable_action(action: &Action, applied: bool) -> bool {
        match action {
            Action::NoChange | Action::Hold(_) => true,
            Action::Create | Action::Update(_) | Action::Adopt(_) => applied,
            _ => false,
        }
    }

    pub fn state(&self) -> ResourceState {
        match (&self.action, self.applied) {
            (Action::NoChange, _) => ResourceState::Ready,
            (Action::Create, true) => ResourceState::Created,
            (Action::Update(_), true) => ResourceState::Updated,
            (Action::Create, false) => ResourceState::Missing,
            (Action::Update(_), false) | (Action::Hold(_), _) => ResourceState::Drifted,
            (Action::Delete, _) | (Action::AlreadyGone, _) => ResourceState::Deleted,
            (Action::Wait(_), _) => ResourceState::Waiting,
            (Action::Adopt(_), true) => ResourceState::Adopted,
            // Not ours until the tag is written.
            (Action::Conflict(_), _) | (Action::Adopt(_), false) => ResourceState::Conflict,
            (Action::Fail(_), _) => ResourceState::Failed,
            (Action::Retain, _) => ResourceState::Retained,
        }
    }

    pub fn message(&self) -> String {
        match &self.action {
            Action::NoChange => String::new(),
            Action::Create => {
                if self.applied {
                    "created".into()
                } else {
                    "would be created".into()
                }
            }
            Action::Update(diffs) | Action::Hold(diffs) => {
                let fields: Vec<&str> = diffs.iter().map(|d| d.field.as_str()).collect();
                let verb = match (&self.action, self.applied) {
                    (Action::Update(_), true) => "updated",
                    (Action::Update(_), false) => "would update",
                    _ => "differs, left as is (driftPolicy: Report, or a correction that did not hold, retried later)",
                };
                format!("{verb}: {}", fields.join(", "))
            }
            Action::Delete => {
                if self.applied {
                    "deleted".into()
                } else {
                    "would be deleted".into()
                }
            }
            Action::AlreadyGone => "already absent".into(),
            Action::Wait(reason) => reason.to_string(),
            Action::Conflict(m) => m.clone(),
            Action::Adopt(diffs) => {
                let verb = if self.applied {
                    "adopted: it had no tap.dev/pipeline tag; tagged as this pipeline's"
                } else {
                    "would be adopted: it has no tap.dev/pipeline tag"
                };
                let fields: Vec<&str> = diffs
                    .iter()
                    .map(|d| d.field.as_str())
                    .filter(|f| !f.starts_with("tags.tap.dev/"))
                    .collect();
                if fields.is_empty() {
                    verb.to_string()
                } else {
                    let converged = if self.applied {
                        "converged"
                    } else {
                        "to converge"
                    };
                    format!("{verb}; {converged}: {}", fields.join(", "))
                }
            }
            Action::Fail(e) => e.to_string(),
            Action::Retain => "retained (deletionPolicy: Retain)".into(),
        }
    }
}

/// The outcome of one reconcile or teardown.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub resources: Vec<ResourceReport>,
    /// One entry per drifted field found in this walk.
    pub drift: Vec<DriftEntry>,
    pub outputs: StackOutputs,
    /// The API key's value, for the Kubernetes Secret only.
    pub api_key: Option<SecretValue>,
    pub elapsed: Duration,
    /// AWS calls made during the walk, by `(service, operation)`.
    pub calls: BTreeMap<(String, String), u64>,
    /// Someone else's lock on the stack: it refused this walk's writes (apply, destroy), or a write is
    /// in progress (plan).
    pub locked_by: Option<super::LockHolder>,
}

impl Report {
    pub fn converged(&self) -> bool {
        self.resources.iter().all(ResourceReport::is_done)
    }

    /// Whether anything would change (a dry run) or was changed.
    pub fn has_changes(&self) -> bool {
        self.resources.iter().any(|r| {
            matches!(
                r.action,
                Action::Create
                    | Action::Update(_)
                    | Action::Adopt(_)
                    | Action::Delete
                    | Action::Hold(_)
            )
        })
    }

    /// The images someone has to push before the stack can converge.
    pub fn images_to_push(&self) -> Vec<&WaitReason> {
        self.resources
            .iter()
            .filter_map(|r| match &r.action {
                Action::Wait(reason @ WaitReason::Image { .. }) => Some(reason),
                _ => None,
            })
            .collect()
    }

    pub fn waiting_for_images(&self) -> bool {
        !self.images_to_push().is_empty()
    }

    pub fn conflicts(&self) -> Vec<&ResourceReport> {
        self.resources
            .iter()
            .filter(|r| matches!(r.action, Action::Conflict(_)))
            .collect()
    }

    /// The resources this walk adopted (or, in a dry run, would adopt).
    pub fn adoptions(&self) -> Vec<&ResourceReport> {
        self.resources
            .iter()
            .filter(|r| matches!(r.action, Action::Adopt(_)))
            .collect()
    }

    pub fn failures(&self) -> Vec<&ResourceReport> {
        self.resources
            .iter()
            .filter(|r| matches!(r.action, Action::Fail(_)))
            .collect()
    }

    /// The first failure as `Kind name: message` (empty when none failed).
    pub fn first_failure(&self) -> String {
        self.failures()
            .first()
            .map(|r| format!("{}: {}", r.id, r.message()))
            .unwrap_or_default()
    }

    /// The AWS error of the first failed resource.
    pub fn first_aws_error(&self) -> Option<&AwsError> {
        self.resources.iter().find_map(|r| match &r.action {
            Action::Fail(e) => Some(e),
            _ => None,
        })
    }

    /// Whether a failure is worth retrying soon (throttling, eventual consistency) rather than waiting
    /// for a spec change or the next resync.
    pub fn only_transient_failures(&self) -> bool {
        self.failures()
            .iter()
            .all(|r| matches!(&r.action, Action::Fail(e) if e.class == ErrorClass::Transient))
    }

    pub fn phase(&self, deleting: bool) -> Phase {
        if deleting {
            return if self.converged() || self.failures().is_empty() {
                Phase::Deleting
            } else {
                Phase::Failed
            };
        }
        if !self.conflicts().is_empty()
            || (!self.failures().is_empty() && !self.only_transient_failures())
        {
            Phase::Failed
        } else if self.waiting_for_images() {
            Phase::WaitingForImages
        } else if !self.converged() {
            if self.resources.iter().any(|r| {
                matches!(r.action, Action::Hold(_))
                    || (matches!(r.action, Action::Update(_)) && !r.applied)
            }) {
                Phase::Drifted
            } else {
                Phase::Provisioning
            }
        } else if self
            .drift
            .iter()
            .any(|d| d.action != DriftAction::Corrected)
        {
            Phase::Drifted
        } else {
            Phase::Ready
        }
    }
}
