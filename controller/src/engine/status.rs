//! The pipeline status a walk implies: phase, the Ready / Drifted / Degraded conditions, one entry per
//! resource, the drift entries and the outputs. The one place a walk's report becomes status; problems
//! found before a walk (an invalid spec, a duplicate suffix) are the front end's to record.

use crate::api::{
    Adoption, ConditionType, DriftAction, Phase, ResourceStatus, TransactionPipelineStatus,
};
use crate::engine::Action;

use super::report::Report;

/// At most this many items are listed in a condition's message ("…; and 3 more").
const LISTED: usize = 5;

impl Report {
    /// The status this walk implies. `previous` keeps the transition times of conditions whose status did
    /// not change.
    pub fn status(
        &self,
        generation: Option<i64>,
        previous: Option<&TransactionPipelineStatus>,
        deleting: bool,
    ) -> TransactionPipelineStatus {
        let phase = self.phase(deleting);
        let mut status = TransactionPipelineStatus {
            observed_generation: generation,
            phase: Some(phase),
            // Only the conditions a walk decides; the others (a duplicate suffix) were cleared by getting
            // this far.
            conditions: previous
                .map(|p| p.conditions.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|c| {
                    [
                        ConditionType::Ready,
                        ConditionType::Drifted,
                        ConditionType::Degraded,
                        // Kept, so that its transition time stays when its status does.
                        ConditionType::Synced,
                    ]
                    .iter()
                    .any(|t| t.as_str() == c.type_)
                })
                .collect(),
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
            adopted: self.adopted(previous),
            last_sync_time: Some(
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ),
        };
        let (ready, ready_message) = self.ready(phase);
        status.set_condition(ConditionType::Ready, ready, phase.as_str(), &ready_message);
        let (drifted, reason, message) = self.drifted();
        status.set_condition(ConditionType::Drifted, drifted, reason, &message);
        let (degraded, reason, message) = self.degraded();
        status.set_condition(ConditionType::Degraded, degraded, reason, &message);
        let failures = self.failures();
        match failures.first() {
            None => status.set_condition(
                ConditionType::Synced,
                true,
                "Synced",
                "the last walk reached every resource",
            ),
            Some(first) => status.set_condition(
                ConditionType::Synced,
                false,
                "SyncFailed",
                &format!(
                    "{} of {} resources failed; {}: {}",
                    failures.len(),
                    self.resources.len(),
                    first.id,
                    first.message()
                ),
            ),
        }
        status
    }

    /// The adoptions recorded so far and those of this walk.
    fn adopted(&self, previous: Option<&TransactionPipelineStatus>) -> Vec<Adoption> {
        let mut adopted = previous.map(|p| p.adopted.clone()).unwrap_or_default();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        for r in &self.resources {
            let kind = r.id.kind.as_str();
            let known = adopted
                .iter()
                .any(|a| a.kind == kind && a.name == r.id.name);
            if r.applied && matches!(r.action, Action::Adopt(_)) && !known {
                adopted.push(Adoption {
                    kind: kind.to_string(),
                    name: r.id.name.clone(),
                    adopted_at: now.clone(),
                });
            }
        }
        adopted
    }

    fn ready(&self, phase: Phase) -> (bool, String) {
        match phase {
            Phase::Ready => (
                true,
                format!("all {} resources match the spec", self.resources.len()),
            ),
            Phase::WaitingForImages => {
                let images: Vec<String> = self
                    .images_to_push()
                    .iter()
                    .map(|w| w.to_string())
                    .collect();
                (false, images.join("; "))
            }
            _ => {
                let not_ready: Vec<String> = self
                    .resources
                    .iter()
                    .filter(|r| !r.is_done())
                    .map(|r| format!("{}: {}", r.id, r.message()))
                    .collect();
                (false, first_lines(&not_ready))
            }
        }
    }

    fn drifted(&self) -> (bool, &'static str, String) {
        if self.drift.is_empty() {
            return (
                false,
                "NoDrift",
                "every managed field matches the spec".into(),
            );
        }
        let fields: Vec<String> = self
            .drift
            .iter()
            .map(|d| format!("{} {} {} ({:?})", d.kind, d.name, d.field, d.action))
            .collect();
        let reason = if self
            .drift
            .iter()
            .all(|d| d.action == DriftAction::Corrected)
        {
            "DriftCorrected"
        } else if self
            .drift
            .iter()
            .any(|d| d.action == DriftAction::Uncorrectable)
        {
            "DriftUncorrectable"
        } else {
            "DriftReported"
        };
        (true, reason, first_lines(&fields))
    }

    fn degraded(&self) -> (bool, &'static str, String) {
        let conflicts = self.conflicts();
        let problems: Vec<String> = self
            .failures()
            .iter()
            .chain(conflicts.iter())
            .map(|r| format!("{}: {}", r.id, r.message()))
            .collect();
        if let Some(holder) = &self.locked_by {
            if !self.failures().is_empty() {
                return (
                    true,
                    "Locked",
                    format!("{holder}: no write until it is released or expires"),
                );
            }
        }
        if problems.is_empty() {
            (false, "Healthy", "no AWS errors".into())
        } else if !conflicts.is_empty() {
            (true, "Conflict", first_lines(&problems))
        } else {
            (true, "AwsError", first_lines(&problems))
        }
    }
}

fn first_lines(lines: &[String]) -> String {
    let mut out = lines
        .iter()
        .take(LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if lines.len() > LISTED {
        out.push_str(&format!("; and {} more", lines.len() - LISTED));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::api::ResourceState;
    use crate::desired::{Kind, ResourceId};
    use crate::drivers::{FieldDiff, Outputs};
    use crate::engine::{Action, Report, ResourceReport};

    fn adopted_queue(action: Action, applied: bool) -> Report {
        Report {
            resources: vec![ResourceReport {
                id: ResourceId::new(Kind::Queue, "tap-dev-dlq"),
                action,
                applied,
                outputs: Outputs::default(),
                remembered: false,
                elapsed: Duration::ZERO,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn an_adoption_is_recorded_in_status_and_kept_by_later_walks() {
        let diff = FieldDiff {
            field: "attributes.MessageRetentionPeriod".into(),
            expected: "1209600".into(),
            actual: "345600".into(),
        };
        let first = adopted_queue(Action::Adopt(vec![diff]), true).status(Some(1), None, false);
        assert_eq!(first.resources[0].state, ResourceState::Adopted);
        assert!(
            first.resources[0].message.starts_with("adopted")
                && first.resources[0]
                    .message
                    .contains("attributes.MessageRetentionPeriod"),
            "{}",
            first.resources[0].message
        );
        assert_eq!(
            (
                first.adopted[0].kind.as_str(),
                first.adopted[0].name.as_str()
            ),
            ("Queue", "tap-dev-dlq")
        );
        let later = adopted_queue(Action::NoChange, false).status(Some(1), Some(&first), false);
        assert_eq!(later.adopted, first.adopted, "the record outlives the walk");
        let planned = adopted_queue(Action::Adopt(vec![]), false).status(Some(1), None, false);
        assert!(planned.adopted.is_empty(), "a dry run adopts nothing");
        assert_eq!(planned.resources[0].state, ResourceState::Conflict);
    }
}
