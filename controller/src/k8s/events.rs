//! The Events of a reconcile, as data: from the previous status and what the walk did, one Event per
//! transition (phase change; the resources created, updated, adopted or deleted, one Event per verb; a
//! new failure or conflict; newly detected drift). Pure: publishing is the reconciler's.

use kube::runtime::events::{Event, EventType};

use crate::api::{DriftEntry, Phase, TransactionPipelineStatus};
use crate::desired::ResourceId;
use crate::engine::{Action, Report};

use super::error::ErrorCategory;

/// Kubernetes limits: an Event's note to 1 kB, its action to 128 bytes.
const NOTE_LIMIT: usize = 1000;
const ACTION_LIMIT: usize = 128;

pub fn event(type_: EventType, reason: &str, action: &str, note: String) -> Event {
    Event {
        type_,
        reason: reason.into(),
        note: Some(truncate(note, NOTE_LIMIT)),
        action: truncate(action.to_string(), ACTION_LIMIT),
        secondary: None,
    }
}

/// A Warning about a problem of `category` (its reason is the category's).
pub fn problem(category: ErrorCategory, action: &str, note: String) -> Event {
    event(EventType::Warning, category.reason(), action, note)
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

/// `PhaseChanged` when the phase differs from the previous one (a Warning when it is Failed).
pub fn phase_changed(previous: Option<Phase>, phase: Phase, why: &str) -> Option<Event> {
    if previous == Some(phase) {
        return None;
    }
    let from = previous.map(Phase::as_str).unwrap_or("(none)");
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
    Some(event(type_, "PhaseChanged", "Reconcile", note))
}

/// The drift entries not in the previous status (same resource, field and first-seen time).
pub fn new_drift<'a>(
    previous: Option<&TransactionPipelineStatus>,
    report: &'a Report,
) -> Vec<&'a DriftEntry> {
    report
        .drift
        .iter()
        .filter(|d| {
            !previous.is_some_and(|s| {
                s.drift.iter().any(|x| {
                    x.kind == d.kind
                        && x.name == d.name
                        && x.field == d.field
                        && x.first_seen == d.first_seen
                })
            })
        })
        .collect()
}

/// The resources a walk did one thing to, each with its line for the Event's note.
type Done<'a> = Vec<(&'a ResourceId, String)>;

/// The Events of a forward walk.
pub fn walk_events(
    previous: Option<&TransactionPipelineStatus>,
    report: &Report,
    phase: Phase,
) -> Vec<Event> {
    let why = match phase {
        Phase::Failed => report.first_failure(),
        _ => String::new(),
    };
    let mut events: Vec<Event> = phase_changed(previous.and_then(|s| s.phase), phase, &why)
        .into_iter()
        .collect();
    for r in &report.resources {
        if !matches!(r.action, Action::Fail(_) | Action::Conflict(_)) {
            continue;
        }
        let message = r.message();
        let seen = previous.is_some_and(|s| {
            s.resources.iter().any(|x| {
                x.kind == r.id.kind.as_str() && x.name == r.id.name && x.message == message
            })
        });
        if seen {
            continue;
        }
        let reason = if matches!(r.action, Action::Conflict(_)) {
            "ResourceConflict"
        } else {
            "AwsError"
        };
        let action = subject_action(reason, r.id.kind.as_str(), &r.id.name, None);
        events.push(event(
            EventType::Warning,
            reason,
            &action,
            format!("{}: {message}", r.id),
        ));
    }
    events.extend(done_events(report));
    for d in new_drift(previous, report) {
        events.push(event(
            EventType::Warning,
            "DriftDetected",
            &subject_action("DetectDrift", &d.kind, &d.name, Some(&d.field)),
            format!(
                "{} {} field {}: expected {}, actual {} ({:?})",
                d.kind, d.name, d.field, d.expected, d.actual, d.action
            ),
        ));
    }
    events
}

/// The Events of a teardown: one `Deleted` naming what was deleted.
pub fn teardown_events(report: &Report) -> Vec<Event> {
    done_events(report).collect()
}

/// What a walk did, one Event per verb (not per resource: a fresh stack is one `Created`, not 29;
/// `status.resources` has each resource's own state), as reason and action verb, in this order.
const DONE: [(&str, &str); 4] = [
    ("Created", "Create"),
    ("Updated", "Update"),
    ("Adopted", "Adopt"),
    ("Deleted", "Delete"),
];

/// The reason of the Event for an action carried out.
fn done_reason(action: &Action) -> Option<&'static str> {
    match action {
        Action::Create => Some("Created"),
        Action::Update(_) => Some("Updated"),
        Action::Adopt(_) => Some("Adopted"),
        Action::Delete => Some("Deleted"),
        _ => None,
    }
}

fn done_events(report: &Report) -> impl Iterator<Item = Event> + '_ {
    DONE.into_iter().filter_map(|(reason, verb)| {
        let done = report
            .resources
            .iter()
            .filter(|r| r.applied && done_reason(&r.action) == Some(reason))
            .map(|r| (&r.id, format!("{}: {}", r.id, r.message())))
            .collect();
        summary(reason, verb, done)
    })
}

/// One Normal Event for every resource a walk did `verb` to: the resource's own line when it is one,
/// else their count and their lines, as many as the note holds.
fn summary(reason: &str, verb: &str, done: Done) -> Option<Event> {
    match done.as_slice() {
        [] => None,
        [(id, line)] => {
            let action = subject_action(verb, id.kind.as_str(), &id.name, None);
            Some(event(EventType::Normal, reason, &action, line.clone()))
        }
        all => {
            let n = all.len();
            let mut note = format!("{n} resources {}: ", reason.to_lowercase());
            for (i, (_, line)) in all.iter().enumerate() {
                let separator = if i == 0 { "" } else { "; " };
                // Room is kept for a closing "; … and N more" after this line.
                let more = format!("… and {} more", n - i);
                if note.len() + separator.len() + line.len() + "; ".len() + more.len() > NOTE_LIMIT
                {
                    note.push_str(separator);
                    note.push_str(&more);
                    break;
                }
                note.push_str(separator);
                note.push_str(line);
            }
            Some(event(
                EventType::Normal,
                reason,
                &format!("{verb} {n} resources"),
                note,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_event_only_on_a_change_and_a_warning_for_failed() {
        assert!(phase_changed(Some(Phase::Ready), Phase::Ready, "").is_none());
        let failed = phase_changed(Some(Phase::Ready), Phase::Failed, "boom").unwrap();
        assert_eq!(failed.type_, EventType::Warning);
        assert_eq!(failed.note.as_deref(), Some("phase Ready → Failed: boom"));
        let first = phase_changed(None, Phase::Provisioning, "").unwrap();
        assert_eq!(first.note.as_deref(), Some("phase (none) → Provisioning"));
    }

    #[test]
    fn an_adoption_is_a_normal_event_naming_the_resource() {
        let report = Report {
            resources: vec![crate::engine::ResourceReport {
                id: crate::desired::ResourceId::new(
                    crate::desired::Kind::Table,
                    "tap-dev-transactions",
                ),
                action: Action::Adopt(vec![]),
                applied: true,
                outputs: Default::default(),
                remembered: false,
                elapsed: Default::default(),
            }],
            ..Default::default()
        };
        let events = walk_events(None, &report, Phase::Ready);
        let adopted: Vec<_> = events.iter().filter(|e| e.reason == "Adopted").collect();
        assert_eq!(adopted.len(), 1);
        assert_eq!(adopted[0].type_, EventType::Normal);
        assert!(adopted[0]
            .note
            .as_deref()
            .is_some_and(|n| n.contains("tap-dev-transactions") && n.contains("adopted")));
    }

    #[test]
    fn a_fresh_stack_is_one_created_event_naming_what_it_holds() {
        let resource = |i: usize| crate::engine::ResourceReport {
            id: crate::desired::ResourceId::new(
                crate::desired::Kind::Alarm,
                format!("tap-dev-alarm-with-a-long-name-{i:02}"),
            ),
            action: Action::Create,
            applied: true,
            outputs: Default::default(),
            remembered: false,
            elapsed: Default::default(),
        };
        let report = Report {
            resources: (0..29).map(resource).collect(),
            ..Default::default()
        };
        let events = walk_events(None, &report, Phase::Ready);
        let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, ["PhaseChanged", "Created"]);
        let note = events[1].note.as_deref().unwrap();
        assert!(note.len() <= NOTE_LIMIT, "{} bytes", note.len());
        assert!(
            note.starts_with(
                "29 resources created: Alarm tap-dev-alarm-with-a-long-name-00: created; "
            ),
            "{note}"
        );
        let shown = note.matches(": created").count();
        assert!(shown > 5 && shown < 29, "{note}");
        assert!(
            note.ends_with(&format!("; … and {} more", 29 - shown)),
            "{note}"
        );
        assert_eq!(events[1].action, "Create 29 resources");

        let one = Report {
            resources: vec![resource(7)],
            ..Default::default()
        };
        let events = walk_events(None, &one, Phase::Ready);
        let created: Vec<_> = events.iter().filter(|e| e.reason == "Created").collect();
        assert_eq!(created.len(), 1);
        assert_eq!(
            created[0].note.as_deref(),
            Some("Alarm tap-dev-alarm-with-a-long-name-07: created")
        );
        assert_eq!(
            created[0].action,
            "Create Alarm tap-dev-alarm-with-a-long-name-07"
        );
        let torn_down = Report {
            resources: (0..3)
                .map(|i| crate::engine::ResourceReport {
                    action: Action::Delete,
                    ..resource(i)
                })
                .collect(),
            ..Default::default()
        };
        let deleted = teardown_events(&torn_down);
        assert_eq!(deleted.len(), 1);
        assert_eq!(
            deleted[0]
                .note
                .as_deref()
                .unwrap()
                .matches(": deleted")
                .count(),
            3
        );
    }

    #[test]
    fn notes_and_actions_are_cut_to_the_api_limits_on_a_char_boundary() {
        let e = event(EventType::Normal, "R", &"é".repeat(100), "ü".repeat(600));
        assert!(e.note.as_ref().unwrap().len() <= NOTE_LIMIT);
        assert!(e.action.len() <= ACTION_LIMIT);
        assert!(e.action.chars().all(|c| c == 'é'));
    }
}
