//! What the CLI prints: aligned tables (comfy-table) of resources and outputs, and the one error format.

use std::io::Write;

use comfy_table::{presets, CellAlignment, ContentArrangement, Table};

use crate::api::{DriftPolicy, StackOutputs};
use crate::engine::{Action, Report, ResourceReport};

use super::manifest::ManifestError;

/// A borderless table whose columns are separated by two spaces.
pub fn table() -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    table
}

/// Writes a table without its padding at the line ends.
pub fn write_table(out: &mut impl Write, mut table: Table) -> std::io::Result<()> {
    let columns = table.column_count();
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if i + 1 == columns { 0 } else { 2 }));
        column.set_cell_alignment(CellAlignment::Left);
    }
    for line in table.lines() {
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// The symbol of an action: `+` create, `~` update, `-` delete, `!` error or conflict, `…` waits.
pub fn symbol(action: &Action) -> &'static str {
    match action {
        Action::NoChange | Action::Retain | Action::AlreadyGone => "=",
        Action::Create | Action::Adopt(_) => "+",
        Action::Update(_) | Action::Hold(_) => "~",
        Action::Delete => "-",
        Action::Wait(_) => "…",
        Action::Conflict(_) | Action::Fail(_) => "!",
    }
}

/// What `apply` will do about a resource, from a dry run (`plan`).
pub fn planned(r: &ResourceReport, policy: DriftPolicy) -> String {
    let report_only = policy == DriftPolicy::Report;
    match &r.action {
        Action::NoChange => "up to date".into(),
        Action::Create if report_only => "missing (driftPolicy Report: apply leaves it)".into(),
        Action::Create => "create".into(),
        Action::Update(diffs) | Action::Hold(diffs) => {
            let head = if report_only {
                "drifted (driftPolicy Report: apply only reports it)"
            } else {
                "update"
            };
            let mut text = head.to_string();
            for d in diffs {
                text.push_str(&format!("\n  {}: {} → {}", d.field, d.actual, d.expected));
            }
            text
        }
        Action::Delete => "delete".into(),
        Action::AlreadyGone => "already absent".into(),
        Action::Retain => "retained (deletionPolicy: Retain)".into(),
        Action::Wait(reason) => format!("waits: {reason}"),
        Action::Conflict(message) => format!("conflict: {message}"),
        Action::Adopt(diffs) => {
            let mut text = "adopt (no tap.dev/pipeline tag; adoptionPolicy Adopt)".to_string();
            for d in diffs {
                text.push_str(&format!("\n  {}: {} → {}", d.field, d.actual, d.expected));
            }
            text
        }
        Action::Fail(e) => format!("error: {e}"),
    }
}

/// What happened to a resource (`apply`, `destroy`).
pub fn done(r: &ResourceReport) -> String {
    let mut text = match &r.action {
        Action::NoChange => "up to date".to_string(),
        _ => r.message(),
    };
    if let Action::Update(diffs) | Action::Hold(diffs) | Action::Adopt(diffs) = &r.action {
        for d in diffs {
            text.push_str(&format!("\n  {}: {} → {}", d.field, d.actual, d.expected));
        }
    }
    text
}

/// One row per resource: symbol, kind, name, `describe(r)`.
pub fn resources_table<'a>(
    resources: impl IntoIterator<Item = &'a ResourceReport>,
    describe: impl Fn(&ResourceReport) -> String,
) -> Table {
    let mut t = table();
    for r in resources {
        t.add_row(vec![
            symbol(&r.action).to_string(),
            r.id.kind.to_string(),
            r.id.name.clone(),
            describe(r),
        ]);
    }
    t
}

pub fn outputs_table(o: &StackOutputs) -> Table {
    let mut t = table();
    let rows = [
        ("apiEndpoint", &o.api_endpoint),
        ("bucketName", &o.bucket_name),
        ("transactionsTable", &o.transactions_table),
        ("statusTable", &o.status_table),
        ("stateMachineArn", &o.state_machine_arn),
        ("topicArn", &o.topic_arn),
        ("dlqUrl", &o.dlq_url),
        ("apiKeyId", &o.api_key_id),
    ];
    for (key, value) in rows {
        t.add_row(vec![
            format!("  {key}"),
            value.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    for (f, arn) in &o.function_arns {
        t.add_row(vec![format!("  functionArns.{f}"), arn.clone()]);
    }
    for (f, uri) in &o.repository_uris {
        t.add_row(vec![format!("  repositoryUris.{f}"), uri.clone()]);
    }
    t
}

/// The failures and conflicts of a report as one error.
pub fn report_error(report: &Report) -> Option<anyhow::Error> {
    // A plan names a live lock as a note; a write refused by it is this error.
    if let Some(holder) = report
        .locked_by
        .as_ref()
        .filter(|_| !report.failures().is_empty())
    {
        return Some(anyhow::anyhow!(
            "{holder}: another writer is at work on this stack; nothing was written (waited --lock-timeout). If that writer is gone for good: tap-controller force-unlock -f <manifest> {}",
            holder.id
        ));
    }
    let bad: Vec<String> = report
        .resources
        .iter()
        .filter(|r| matches!(r.action, Action::Fail(_) | Action::Conflict(_)))
        .map(|r| format!("{}: {}", r.id, r.message()))
        .collect();
    match bad.len() {
        0 => None,
        1 => Some(anyhow::anyhow!("{}", bad[0])),
        n => Some(anyhow::anyhow!(
            "{n} resources failed:\n  {}",
            bad.join("\n  ")
        )),
    }
}

/// The one error format of every command: `error: …` on stderr, then each cause not already part of
/// the message before it, once.
pub fn print_error(err: &anyhow::Error) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{}", format_error(err));
}

pub fn format_error(err: &anyhow::Error) -> String {
    if let Some(ManifestError::Invalid { path, errors }) = err.downcast_ref::<ManifestError>() {
        let mut text = format!(
            "error: {path}: invalid manifest ({} {}); nothing was sent to AWS",
            errors.0.len(),
            if errors.0.len() == 1 {
                "error"
            } else {
                "errors"
            }
        );
        for e in &errors.0 {
            text.push_str(&format!("\n  {}: {}", e.field, e.rule));
        }
        return text;
    }
    let mut text = format!("error: {err}");
    let mut last = err.to_string();
    for cause in err.chain().skip(1) {
        let message = cause.to_string();
        if last.contains(&message) {
            continue;
        }
        text.push_str(&format!("\n  caused by: {message}"));
        last = message;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connecting: {source}")]
    struct Outer {
        source: Inner,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("refused")]
    struct Inner;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let err = anyhow::Error::new(Outer { source: Inner });
        assert_eq!(format_error(&err), "error: connecting: refused");
        let err = anyhow::Error::new(Inner).context("reading x");
        assert_eq!(format_error(&err), "error: reading x\n  caused by: refused");
    }
}
