//! What one walk over the graph did, per resource, and the pipeline status it implies.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{
    DriftAction, DriftEntry, Phase, ResourceState, ResourceStatus, StackOutputs,
    TransactionPipelineStatus,
};
use crate::aws::ErrorClass;
use crate::desired::ResourceId;
use crate::drivers::{FieldDiff, Outputs, SecretValue};

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
    Wait(String),
    /// Exists under our name without our ownership tag: left untouched.
    Conflict(String),
    /// An AWS call failed.
    Fail {
        message: String,
        class: ErrorClass,
    },
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
    pub elapsed: Duration,
}

impl ResourceReport {
    /// Converged: exists (or is gone, in teardown) and matches.
    pub fn is_done(&self) -> bool {
        match &self.action {
            Action::NoChange | Action::AlreadyGone | Action::Retain => true,
            Action::Create | Action::Update(_) | Action::Delete => self.applied,
            _ => false,
        }
    }

    /// Exists as ours, so dependents can be converged against it (drift it keeps does not block them).
    pub fn usable(&self) -> bool {
        match &self.action {
            Action::NoChange | Action::Hold(_) => true,
            Action::Create | Action::Update(_) => self.applied,
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
            (Action::Conflict(_), _) => ResourceState::Conflict,
            (Action::Fail { .. }, _) => ResourceState::Failed,
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
                    _ => "differs (not corrected)",
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
            Action::Wait(m) | Action::Conflict(m) => m.clone(),
            Action::Fail { message, .. } => message.clone(),
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
                Action::Create | Action::Update(_) | Action::Delete | Action::Hold(_)
            )
        })
    }

    pub fn waiting_for_images(&self) -> bool {
        self.resources
            .iter()
            .any(|r| matches!(&r.action, Action::Wait(m) if m.contains("push image")))
    }

    pub fn conflicts(&self) -> Vec<&ResourceReport> {
        self.resources
            .iter()
            .filter(|r| matches!(r.action, Action::Conflict(_)))
            .collect()
    }

    pub fn failures(&self) -> Vec<&ResourceReport> {
        self.resources
            .iter()
            .filter(|r| matches!(r.action, Action::Fail { .. }))
            .collect()
    }

    /// Whether a failure is worth retrying soon (throttling, eventual consistency) rather than waiting
    /// for a spec change or the next resync.
    pub fn only_transient_failures(&self) -> bool {
        self.failures().iter().all(|r| {
            matches!(
                r.action,
                Action::Fail {
                    class: ErrorClass::Transient,
                    ..
                }
            )
        })
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

    /// The status this walk implies. `previous` keeps condition transition times that did not change.
    pub fn status(
        &self,
        generation: Option<i64>,
        previous: Option<&TransactionPipelineStatus>,
        deleting: bool,
    ) -> TransactionPipelineStatus {
        let phase = self.phase(deleting);
        let now = chrono::Utc::now();
        let outstanding = self
            .drift
            .iter()
            .filter(|d| d.action != DriftAction::Corrected)
            .count();
        let not_ready: Vec<String> = self
            .resources
            .iter()
            .filter(|r| !r.is_done())
            .map(|r| format!("{}: {}", r.id, r.message()))
            .collect();
        let ready = phase == Phase::Ready;
        let ready_message = if ready {
            format!("all {} resources match the spec", self.resources.len())
        } else if phase == Phase::WaitingForImages {
            let waits: Vec<String> = self
                .resources
                .iter()
                .filter_map(|r| match &r.action {
                    Action::Wait(m) if m.contains("push image") => Some(m.clone()),
                    _ => None,
                })
                .collect();
            waits.join("; ")
        } else {
            first_lines(&not_ready, 5)
        };
        let failures: Vec<String> = self
            .failures()
            .iter()
            .chain(self.conflicts().iter())
            .map(|r| format!("{}: {}", r.id, r.message()))
            .collect();
        let conditions = vec![
            condition(
                previous,
                "Ready",
                ready,
                phase.as_str(),
                &ready_message,
                generation,
            ),
            condition(
                previous,
                "Drifted",
                !self.drift.is_empty(),
                if self.drift.is_empty() {
                    "NoDrift"
                } else if outstanding == 0 {
                    "DriftCorrected"
                } else if self
                    .drift
                    .iter()
                    .any(|d| d.action == DriftAction::Uncorrectable)
                {
                    "DriftUncorrectable"
                } else {
                    "DriftReported"
                },
                &if self.drift.is_empty() {
                    "every managed field matches the spec".to_string()
                } else {
                    let fields: Vec<String> = self
                        .drift
                        .iter()
                        .map(|d| format!("{} {} {} ({:?})", d.kind, d.name, d.field, d.action))
                        .collect();
                    first_lines(&fields, 5)
                },
                generation,
            ),
            condition(
                previous,
                "Degraded",
                !failures.is_empty(),
                if failures.is_empty() {
                    "Healthy"
                } else if !self.conflicts().is_empty() {
                    "Conflict"
                } else {
                    "AwsError"
                },
                &if failures.is_empty() {
                    "no AWS errors".to_string()
                } else {
                    first_lines(&failures, 5)
                },
                generation,
            ),
        ];
        TransactionPipelineStatus {
            observed_generation: generation,
            phase: Some(phase),
            conditions,
            resources: self
                .resources
                .iter()
                .map(|r| ResourceStatus {
                    kind: r.id.kind.to_string(),
                    name: r.id.name.clone(),
                    arn: r.outputs.arn.clone().or_else(|| r.outputs.id.clone()),
                    state: r.state(),
                    message: r.message(),
                })
                .collect(),
            drift: self.drift.clone(),
            drift_count: self.drift.len() as i32,
            outputs: Some(self.outputs.clone()),
            last_sync_time: Some(now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        }
    }
}

fn first_lines(lines: &[String], n: usize) -> String {
    let mut out = lines.iter().take(n).cloned().collect::<Vec<_>>().join("; ");
    if lines.len() > n {
        out.push_str(&format!("; and {} more", lines.len() - n));
    }
    out
}

fn condition(
    previous: Option<&TransactionPipelineStatus>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}
