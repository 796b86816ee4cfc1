//! Writing status: server-side apply of the status subresource, and the statuses of problems found before
//! (or instead of) a walk of AWS. A walk's own status comes from [`Report::status`](crate::engine::Report).

use kube::api::{Api, Patch, PatchParams};
use kube::Resource;
use serde_json::json;

use super::FIELD_MANAGER;
use crate::api::{
    ConditionStatus, ConditionType, Phase, TransactionPipeline, TransactionPipelineStatus,
};

/// Whether `next` says anything `current` does not: every field but `lastSyncTime`, which only says
/// when AWS was read. An unchanged status is not written (no PATCH, no new resourceVersion, no watch
/// event for every client of the resource at every resync); `lastSyncTime` then stays the time of the
/// last read that changed something, and `tap_reconciles_total` counts the reads.
pub fn changed(
    current: Option<&TransactionPipelineStatus>,
    next: &TransactionPipelineStatus,
) -> bool {
    let Some(current) = current else {
        return true;
    };
    let strip = |s: &TransactionPipelineStatus| TransactionPipelineStatus {
        last_sync_time: None,
        ..s.clone()
    };
    strip(current) != strip(next)
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

/// The previous status with a problem recorded: phase, Ready false and Degraded true with `reason`; what
/// was known of the stack stays.
pub fn problem(
    pipeline: &TransactionPipeline,
    phase: Phase,
    reason: &str,
    message: &str,
) -> TransactionPipelineStatus {
    let mut status = pipeline.status.clone().unwrap_or_default();
    status.observed_generation = pipeline.metadata.generation;
    status.phase = Some(phase);
    status.set_condition(ConditionType::Ready, false, reason, message);
    status.set_condition(ConditionType::Degraded, true, reason, message);
    status.set_condition(ConditionType::Synced, false, reason, message);
    if status.condition(ConditionType::Drifted).is_none() {
        // Not known, not False: AWS was not read.
        status.set_condition(
            ConditionType::Drifted,
            ConditionStatus::Unknown,
            "NotRead",
            "AWS was not read",
        );
    }
    status
}

/// Another, older pipeline owns the suffix: Failed, with the Conflict condition.
pub fn duplicate_suffix(
    pipeline: &TransactionPipeline,
    message: &str,
) -> TransactionPipelineStatus {
    let mut status = problem(pipeline, Phase::Failed, "DuplicateSuffix", message);
    status.set_condition(ConditionType::Conflict, true, "DuplicateSuffix", message);
    status
}

/// The pipeline is paused: the last known state stays, Ready is False with reason `Paused`.
pub fn paused(pipeline: &TransactionPipeline) -> TransactionPipelineStatus {
    let mut status = pipeline.status.clone().unwrap_or_default();
    status.observed_generation = pipeline.metadata.generation;
    status.phase = Some(Phase::Paused);
    status.set_condition(
        ConditionType::Synced,
        ConditionStatus::Unknown,
        "Paused",
        "paused: AWS is not read",
    );
    status.set_condition(
        ConditionType::Ready,
        false,
        "Paused",
        &format!(
            "annotation {}: \"true\": the controller makes no AWS call for this pipeline",
            crate::api::PAUSED_ANNOTATION
        ),
    );
    status
}

/// Teardown has started.
pub fn deleting(pipeline: &TransactionPipeline) -> TransactionPipelineStatus {
    let mut status = pipeline.status.clone().unwrap_or_default();
    status.observed_generation = pipeline.metadata.generation;
    status.phase = Some(Phase::Deleting);
    status.set_condition(
        ConditionType::Ready,
        false,
        "Deleting",
        "tearing the AWS stack down",
    );
    status
}
