//! Drift history of one pipeline between reconciles: what was applied last, which fields drifted, when
//! they were first seen, and whether a correction held. A drift that comes back right after it was
//! corrected is `Uncorrectable` and retried with exponential backoff, never in a hot loop.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

use crate::api::{DriftAction, DriftEntry};
use crate::desired::{ResourceId, Stack};
use crate::drivers::{FieldDiff, Outputs};

/// Field path used for a resource that disappeared out of band.
pub const EXISTS_FIELD: &str = "(exists)";

#[derive(Clone, Debug)]
struct FieldRecord {
    expected: Value,
    actual: Value,
    first_seen: DateTime<Utc>,
    corrections: u32,
    retry_after: Option<DateTime<Utc>>,
    action: DriftAction,
    walk: u64,
}

#[derive(Clone, Debug, Default)]
pub struct DriftMemory {
    /// Desired JSON (spec + tags) last applied or confirmed, per resource: tells a spec change from drift.
    /// Kept as text, parsed only when a resource differs: a controller keeps this for every resource of
    /// every pipeline, and a parsed value takes several times the memory of its text.
    applied: HashMap<ResourceId, Box<str>>,
    fields: BTreeMap<(ResourceId, String), FieldRecord>,
    /// What each resource exposed when last seen: a dependency whose read fails for a moment is still
    /// known to exist, and its dependents go on with these.
    outputs: HashMap<ResourceId, Outputs>,
    walk: u64,
}

/// Whether to hold back the write for a resource.
pub struct Decision {
    pub hold: bool,
}

/// Backoff before retrying a correction that did not hold: 30 s, 1 min, 2 min … at most 1 h.
pub fn backoff(corrections: u32) -> Duration {
    use backon::BackoffBuilder;
    let delay = backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_secs(30))
        .with_max_delay(std::time::Duration::from_secs(3600))
        .with_factor(2.0)
        .without_max_times()
        .build()
        .nth(corrections.saturating_sub(1) as usize)
        .unwrap_or(std::time::Duration::from_secs(3600));
    Duration::from_std(delay).unwrap_or(Duration::hours(1))
}

fn at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

impl DriftMemory {
    /// No walk of this pipeline has been made with it (a new pipeline, or a restarted process).
    pub fn is_new(&self) -> bool {
        self.walk == 0 && self.applied.is_empty() && self.outputs.is_empty()
    }

    /// Starts a walk; records not seen again in it are dropped by [`DriftMemory::entries`].
    pub fn begin_walk(&mut self) {
        self.walk += 1;
    }

    /// Remembers what a resource exposed (it exists as ours).
    pub fn remember(&mut self, id: &ResourceId, outputs: &Outputs) {
        if *outputs != Outputs::default() {
            self.outputs.insert(id.clone(), outputs.clone());
        }
    }

    /// Forgets a resource that is gone.
    pub fn forget(&mut self, id: &ResourceId) {
        self.outputs.remove(id);
    }

    /// What a resource exposed when last seen as ours.
    pub fn remembered(&self, id: &ResourceId) -> Option<&Outputs> {
        self.outputs.get(id)
    }

    /// When the earliest held-back correction may be retried, if any is waiting.
    pub fn next_retry(&self) -> Option<DateTime<Utc>> {
        self.fields
            .values()
            .filter(|r| r.walk == self.walk)
            .filter_map(|r| r.retry_after)
            .min()
    }

    /// A resource was not found. Returns whether it existed before (so this is drift: deleted out of band).
    pub fn note_missing(&mut self, id: &ResourceId, now: DateTime<Utc>, writes: bool) -> bool {
        if !self.applied.contains_key(id) {
            return false;
        }
        let diff = FieldDiff {
            field: EXISTS_FIELD.into(),
            expected: Value::Bool(true),
            actual: Value::Bool(false),
        };
        self.record(id, &diff, now, writes);
        true
    }

    pub fn applied(&mut self, id: &ResourceId, desired: &Value, _recreated: bool) {
        let text = desired.to_string();
        // Every resync confirms every resource: the same text is kept as it is, not replaced.
        match self.applied.get_mut(id) {
            Some(kept) if **kept == *text => {}
            Some(kept) => *kept = text.into_boxed_str(),
            None => {
                self.applied.insert(id.clone(), text.into_boxed_str());
            }
        }
    }

    fn record(
        &mut self,
        id: &ResourceId,
        diff: &FieldDiff,
        now: DateTime<Utc>,
        writes: bool,
    ) -> bool {
        let walk = self.walk;
        let record = self
            .fields
            .entry((id.clone(), diff.field.clone()))
            .or_insert_with(|| FieldRecord {
                expected: diff.expected.clone(),
                actual: diff.actual.clone(),
                first_seen: now,
                corrections: 0,
                retry_after: None,
                action: DriftAction::Reported,
                walk,
            });
        record.walk = walk;
        record.expected = diff.expected.clone();
        record.actual = diff.actual.clone();
        record.action = if !writes {
            DriftAction::Reported
        } else if record.corrections > 0 {
            DriftAction::Uncorrectable
        } else {
            DriftAction::Corrected
        };
        writes && record.retry_after.is_some_and(|t| now < t)
    }

    /// Sorts the diffs of an existing resource into spec changes and drift, and records the drift.
    pub fn classify(
        &mut self,
        id: &ResourceId,
        desired: &Value,
        diffs: &[FieldDiff],
        now: DateTime<Utc>,
        writes: bool,
    ) -> Decision {
        let previous: Option<Value> = self
            .applied
            .get(id)
            .and_then(|text| serde_json::from_str(text).ok());
        let mut spec_changes = 0;
        let mut held = 0;
        let mut drifted = 0;
        for diff in diffs {
            let spec_changed = previous
                .as_ref()
                .is_some_and(|p| at(p, &diff.field) != at(desired, &diff.field));
            if spec_changed {
                spec_changes += 1;
                continue;
            }
            drifted += 1;
            if self.record(id, diff, now, writes) {
                held += 1;
            }
        }
        Decision {
            hold: spec_changes == 0 && drifted > 0 && held == drifted,
        }
    }

    /// An update was sent for these diffs: remember it, and when to retry if the drift comes back.
    pub fn corrected(
        &mut self,
        id: &ResourceId,
        desired: &Value,
        diffs: &[FieldDiff],
        now: DateTime<Utc>,
    ) {
        for diff in diffs {
            if let Some(record) = self.fields.get_mut(&(id.clone(), diff.field.clone())) {
                record.corrections += 1;
                record.retry_after = Some(now + backoff(record.corrections));
            }
        }
        self.applied(id, desired, false);
    }

    /// The drift entries of the current walk (forgetting fields that no longer drift), in stack order.
    pub fn entries(&mut self, stack: &Stack) -> Vec<DriftEntry> {
        let walk = self.walk;
        self.fields.retain(|_, r| r.walk == walk);
        let order: HashMap<&ResourceId, usize> = stack
            .resources
            .iter()
            .enumerate()
            .map(|(i, r)| (&r.id, i))
            .collect();
        let mut entries: Vec<(usize, DriftEntry)> = self
            .fields
            .iter()
            .map(|((id, field), r)| {
                (
                    order.get(id).copied().unwrap_or(usize::MAX),
                    DriftEntry {
                        kind: id.kind.to_string(),
                        name: id.name.clone(),
                        field: field.clone(),
                        expected: r.expected.to_string(),
                        actual: r.actual.to_string(),
                        first_seen: r
                            .first_seen
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        action: r.action,
                    },
                )
            })
            .collect();
        entries.sort_by(|a, b| (a.0, &a.1.field).cmp(&(b.0, &b.1.field)));
        entries.into_iter().map(|(_, e)| e).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::Kind;
    use serde_json::json;

    fn id() -> ResourceId {
        ResourceId {
            kind: Kind::Function,
            name: "tap-dev1-csv-validator".into(),
        }
    }

    fn memory_with_applied(desired: &Value) -> DriftMemory {
        let mut m = DriftMemory::default();
        m.begin_walk();
        m.applied(&id(), desired, false);
        m
    }

    #[test]
    fn a_spec_change_is_not_drift() {
        let old = json!({"memoryMb": 512});
        let new = json!({"memoryMb": 1024});
        let mut m = memory_with_applied(&old);
        m.begin_walk();
        let diffs = [FieldDiff {
            field: "memoryMb".into(),
            expected: json!(1024),
            actual: json!(512),
        }];
        let d = m.classify(&id(), &new, &diffs, Utc::now(), true);
        assert!(!d.hold);
        assert!(
            m.fields.is_empty(),
            "a spec change must not be reported as drift"
        );
    }

    #[test]
    fn drift_that_returns_after_correction_is_uncorrectable_and_backs_off() {
        let desired = json!({"deadLetterTargetArn": "arn:dlq"});
        let mut m = memory_with_applied(&desired);
        let diffs = [FieldDiff {
            field: "deadLetterTargetArn".into(),
            expected: json!("arn:dlq"),
            actual: Value::Null,
        }];
        let t0 = Utc::now();
        let first = m.classify(&id(), &desired, &diffs, t0, true);
        assert!(!first.hold);
        m.corrected(&id(), &desired, &diffs, t0);
        assert_eq!(m.entries_for_test()[0].action, DriftAction::Corrected);

        // Comes back 5 s later: uncorrectable, held until the backoff expires.
        m.begin_walk();
        let again = m.classify(&id(), &desired, &diffs, t0 + Duration::seconds(5), true);
        assert!(again.hold, "must not rewrite within the backoff window");
        assert_eq!(m.entries_for_test()[0].action, DriftAction::Uncorrectable);

        // After the backoff, one more try, then a longer wait.
        m.begin_walk();
        let later = t0 + Duration::seconds(31);
        assert!(!m.classify(&id(), &desired, &diffs, later, true).hold);
        m.corrected(&id(), &desired, &diffs, later);
        m.begin_walk();
        assert!(
            m.classify(&id(), &desired, &diffs, later + Duration::seconds(59), true)
                .hold
        );
    }

    #[test]
    fn report_only_never_holds_and_reports() {
        let desired = json!({"memoryMb": 512});
        let mut m = memory_with_applied(&desired);
        let diffs = [FieldDiff {
            field: "memoryMb".into(),
            expected: json!(512),
            actual: json!(256),
        }];
        assert!(!m.classify(&id(), &desired, &diffs, Utc::now(), false).hold);
        assert_eq!(m.entries_for_test()[0].action, DriftAction::Reported);
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::seconds(30));
        assert_eq!(backoff(2), Duration::seconds(60));
        assert_eq!(backoff(20), Duration::seconds(3600));
    }

    impl DriftMemory {
        fn entries_for_test(&self) -> Vec<FieldRecordView> {
            self.fields
                .values()
                .map(|r| FieldRecordView { action: r.action })
                .collect()
        }
    }

    struct FieldRecordView {
        action: DriftAction,
    }
}
