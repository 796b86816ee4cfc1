//! Observed state reported on `TransactionPipeline.status`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the controller last saw of the stack in AWS: phase, conditions, one entry per resource, drifted
/// fields and the outputs clients need. Written by the controller only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransactionPipelineStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Overall phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Absent until the first reconcile, never null: the schema lists the phases only.
    #[schemars(with = "Phase")]
    pub phase: Option<Phase>,
    /// `Ready`, `Synced`, `Drifted`, `Degraded` and, when another pipeline owns the suffix, `Conflict`: at most one
    /// of each type.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// One entry per AWS resource of the stack.
    #[serde(default)]
    pub resources: Vec<ResourceStatus>,
    /// One entry per drifted field.
    #[serde(default)]
    pub drift: Vec<DriftEntry>,
    /// Number of drifted fields (the DRIFT column).
    #[serde(default)]
    pub drift_count: i32,
    /// What clients of the stack need.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<StackOutputs>,
    /// Resources this pipeline adopted (`adoptionPolicy: Adopt`): found under its names without a
    /// tap-controller tag, made by other tooling, and since tagged as this pipeline's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adopted: Vec<Adoption>,
    /// When a full read of AWS last changed this status (RFC 3339). A resync that finds everything as
    /// recorded does not rewrite the status (no write to the API server), so this time stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<String>,
}

/// One adopted resource.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Adoption {
    /// Resource kind, e.g. `Table`.
    pub kind: String,
    /// AWS name.
    pub name: String,
    /// When it was adopted (RFC 3339).
    pub adopted_at: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    Provisioning,
    Ready,
    Drifted,
    WaitingForImages,
    Deleting,
    Failed,
    /// The `tap.dev/paused: "true"` annotation is set: no AWS call is made.
    Paused,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Provisioning => "Provisioning",
            Phase::Ready => "Ready",
            Phase::Drifted => "Drifted",
            Phase::WaitingForImages => "WaitingForImages",
            Phase::Deleting => "Deleting",
            Phase::Failed => "Failed",
            Phase::Paused => "Paused",
        }
    }
}

/// One AWS resource of the stack.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    /// Resource kind, e.g. `Function`, `Table`.
    pub kind: String,
    /// AWS name.
    pub name: String,
    /// ARN, URL or id, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    /// Where the resource stands after the last reconcile.
    pub state: ResourceState,
    /// What happened last, or what blocks it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ResourceState {
    /// Exists and matches the spec.
    Ready,
    Created,
    Updated,
    /// Differs from the spec and `driftPolicy: Report` forbids correcting it.
    Drifted,
    /// Does not exist and `driftPolicy: Report` forbids creating it.
    Missing,
    /// Waits for a dependency (an image, another resource).
    Waiting,
    /// A resource with this name exists but is not owned by this pipeline: left untouched.
    Conflict,
    /// Found under this name with no tap-controller tag and adopted (`adoptionPolicy: Adopt`) in the
    /// last reconcile: now tagged as this pipeline's.
    Adopted,
    Failed,
    Deleted,
    /// `deletionPolicy: Retain` left it in AWS.
    Retained,
}

/// One field of one resource that differs from the spec.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriftEntry {
    /// Resource kind, e.g. `Function`.
    pub kind: String,
    /// AWS name of the resource.
    pub name: String,
    /// Path of the field inside the resource, e.g. `memoryMb` or `policies.s3-access`.
    pub field: String,
    /// The value the spec asks for (JSON).
    pub expected: String,
    /// The value AWS reports (JSON; `null` when absent).
    pub actual: String,
    /// When this drift was first seen (RFC 3339).
    pub first_seen: String,
    /// What the controller did about it.
    pub action: DriftAction,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DriftAction {
    /// Rewritten to the spec's value.
    Corrected,
    /// Observed only (`driftPolicy: Report`).
    Reported,
    /// Came back right after being corrected: AWS keeps another value. Retried with backoff.
    Uncorrectable,
}

/// What clients of the stack need. The API key's value is never here: it is in the Secret
/// `<pipeline>-api-key`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StackOutputs {
    /// The AWS account the stack lives in (the assumed role's, with `spec.aws.roleArn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// The AWS region the stack lives in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// URL clients POST CSV files to (`…/<stage>/upload`; send the API key in `x-api-key`).
    pub api_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The upload bucket.
    pub bucket_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// DynamoDB table of normalised transactions.
    pub transactions_table: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// DynamoDB table of per-upload processing status.
    pub status_table: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The EXPRESS state machine.
    pub state_machine_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// SNS topic of processing notifications.
    pub topic_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// SQS dead-letter queue of failed executions and invocations.
    pub dlq_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Id of the API key; its value is in the Secret `<pipeline>-api-key`, never here.
    pub api_key_id: Option<String>,
    /// Function ARN by function (`csvValidator`, …).
    #[serde(default)]
    pub function_arns: BTreeMap<String, String>,
    /// ECR repository URI by function.
    #[serde(default)]
    pub repository_uris: BTreeMap<String, String>,
}

/// The condition types a pipeline's status carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionType {
    /// The stack exists and matches the spec.
    Ready,
    /// A managed field differs from the spec (corrected, reported, or uncorrectable).
    Drifted,
    /// An AWS error or an ownership conflict stands in the way.
    Degraded,
    /// Another, older pipeline uses the same `environmentSuffix`.
    Conflict,
    /// The controller's last attempt to read and converge the stack went through (Crossplane's `Synced`,
    /// ACK's `ResourceSynced`): `False` when AWS or the spec stopped it, `Unknown` while paused.
    Synced,
}

impl ConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::Drifted => "Drifted",
            ConditionType::Degraded => "Degraded",
            ConditionType::Conflict => "Conflict",
            ConditionType::Synced => "Synced",
        }
    }
}

/// A condition's status, as Kubernetes spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(value: bool) -> Self {
        if value {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

/// Sets (or replaces) condition `type_` in `conditions`, keeping its transition time when its status did
/// not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: ConditionType,
    status: impl Into<ConditionStatus>,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let status = status.into().as_str();
    let last_transition_time = conditions
        .iter()
        .find(|c| c.type_ == type_.as_str() && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    let condition = Condition {
        type_: type_.as_str().into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_.as_str()) {
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
}

impl TransactionPipelineStatus {
    pub fn condition(&self, type_: ConditionType) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_.as_str())
    }

    /// Whether condition `type_` is present with status True.
    pub fn is_true(&self, type_: ConditionType) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }

    pub fn set_condition(
        &mut self,
        type_: ConditionType,
        status: impl Into<ConditionStatus>,
        reason: &str,
        message: &str,
    ) {
        set_condition(
            &mut self.conditions,
            type_,
            status,
            reason,
            message,
            self.observed_generation,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_changes() {
        let mut status = TransactionPipelineStatus {
            observed_generation: Some(2),
            ..Default::default()
        };
        status.set_condition(ConditionType::Ready, false, "Provisioning", "creating");
        let first = status.condition(ConditionType::Ready).unwrap().clone();
        std::thread::sleep(std::time::Duration::from_millis(5));
        status.set_condition(
            ConditionType::Ready,
            false,
            "Provisioning",
            "still creating",
        );
        let same = status.condition(ConditionType::Ready).unwrap().clone();
        assert_eq!(same.last_transition_time, first.last_transition_time);
        assert_eq!(same.message, "still creating");
        assert_eq!(same.observed_generation, Some(2));
        std::thread::sleep(std::time::Duration::from_millis(5));
        status.set_condition(ConditionType::Ready, true, "Ready", "all match");
        let flipped = status.condition(ConditionType::Ready).unwrap();
        assert_ne!(flipped.last_transition_time, first.last_transition_time);
        assert!(status.is_true(ConditionType::Ready));
        assert_eq!(
            status.conditions.len(),
            1,
            "replaced in place, not appended"
        );
    }
}
