//! The `TransactionPipeline` API (`tap.dev/v1alpha1`). The CRD in `crds/` is generated from these types
//! (`tap-controller crd`); doc comments become `kubectl explain` text.

mod status;
mod validate;

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use status::*;
pub use validate::{validate, ValidationError, ValidationErrors, LOG_RETENTION_DAYS, RESERVED_ENV};

pub const GROUP: &str = "tap.dev";
pub const FINALIZER: &str = "tap.dev/cleanup";

/// Desired state of one environment's transaction-processing stack on AWS.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tap.dev",
    version = "v1alpha1",
    kind = "TransactionPipeline",
    plural = "transactionpipelines",
    shortname = "txp",
    namespaced,
    status = "TransactionPipelineStatus",
    printcolumn = r#"{"name":"Suffix","type":"string","jsonPath":".spec.environmentSuffix"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Drift","type":"integer","jsonPath":".status.driftCount"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.outputs.apiEndpoint"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TransactionPipelineSpec {
    /// Suffix carried by every AWS resource name (`tap-<suffix>-…`). Lower-case letters, digits and
    /// inner hyphens, 1 to 20 characters. Immutable: changing it would orphan the whole stack.
    #[schemars(
        length(min = 1, max = 20),
        regex(pattern = r"^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("environmentSuffix is immutable"))]
    pub environment_suffix: String,

    /// AWS region of the stack. Default: the controller's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,

    /// What deleting this resource does in AWS: `Delete` tears the whole stack down (the bucket is
    /// emptied, repositories are force-deleted); `Retain` leaves AWS untouched.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// `Correct` rewrites AWS to match the spec; `Report` only observes and reports drift, never writes.
    #[serde(default)]
    pub drift_policy: DriftPolicy,

    /// Tags added to every AWS resource of the stack (keys under `tap.dev/` are reserved).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,

    /// The three container-image Lambda functions (arm64).
    pub functions: Functions,

    /// The EXPRESS Step Functions state machine (validate → transform → notify).
    #[serde(default)]
    pub state_machine: StateMachineSettings,

    /// The API Gateway REST API serving `POST /upload`.
    #[serde(default)]
    pub api: ApiSettings,

    /// CloudWatch metric alarms, acting on the notification topic.
    #[serde(default)]
    pub alarms: AlarmSettings,

    /// SNS notification subscriptions.
    #[serde(default)]
    pub notifications: NotificationSettings,

    /// Retention of every CloudWatch log group of the stack, in days (a value CloudWatch Logs accepts:
    /// 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653).
    #[serde(default = "default_log_retention_days")]
    pub log_retention_days: i32,
}

fn default_log_retention_days() -> i32 {
    14
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Delete,
    Retain,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DriftPolicy {
    #[default]
    Correct,
    Report,
}

/// The stack's three functions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Functions {
    /// Serves `POST /upload`, starts the state machine for objects under `validated/`, and re-validates them.
    pub csv_validator: FunctionSettings,
    /// Streams a validated file into the transactions table.
    pub data_transformer: FunctionSettings,
    /// Publishes a processing summary to the notification topic.
    pub notification_sender: FunctionSettings,
}

/// One container-image Lambda function.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSettings {
    /// The container image (arm64).
    pub image: ImageRef,
    /// Memory in MB, 128 to 10240.
    #[serde(default = "default_memory_mb")]
    #[schemars(range(min = 128, max = 10240))]
    pub memory_mb: i32,
    /// Timeout in seconds, 1 to 900.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 900))]
    pub timeout_seconds: i32,
    /// Extra environment variables (the controller also sets the names of the tables, bucket, topic and
    /// state machine; those keys are reserved).
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
}

fn default_memory_mb() -> i32 {
    512
}
fn default_timeout_seconds() -> i32 {
    30
}

/// Which image a function runs: a tag in the stack's own ECR repository, or a full image URI.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageRef {
    /// A tag in the stack's own repository `tap-<suffix>-<function>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// A full image URI (`<account>.dkr.ecr.<region>.amazonaws.com/<repo>:<tag>` or `@sha256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct StateMachineSettings {
    /// Retry policy of every task state.
    #[serde(default)]
    pub retry: RetrySettings,
    /// Execution logging level. Quote `'OFF'` in YAML: kubectl reads an unquoted OFF as the boolean false.
    #[serde(default)]
    pub log_level: LogLevel,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrySettings {
    /// Attempts after the first failure, 0 to 10.
    #[schemars(range(min = 0, max = 10))]
    pub max_attempts: i32,
    /// Seconds before the first retry, 1 to 3600.
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: i32,
    /// Multiplier of the interval after each attempt, 1.0 to 10.0.
    #[schemars(range(min = 1.0, max = 10.0))]
    pub backoff_rate: f64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            interval_seconds: 2,
            backoff_rate: 2.0,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum LogLevel {
    #[serde(rename = "ALL")]
    All,
    #[default]
    #[serde(rename = "ERROR")]
    Error,
    #[serde(rename = "FATAL")]
    Fatal,
    #[serde(rename = "OFF")]
    Off,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::All => "ALL",
            LogLevel::Error => "ERROR",
            LogLevel::Fatal => "FATAL",
            LogLevel::Off => "OFF",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiSettings {
    /// Stage name: letters, digits, `-` and `_`, 1 to 64 characters.
    #[serde(default = "default_stage_name")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub stage_name: String,
    /// Steady-state and burst request limits of the stage and the usage plan.
    #[serde(default)]
    pub throttle: ThrottleSettings,
    /// Request quota of the usage plan.
    #[serde(default)]
    pub quota: QuotaSettings,
}

fn default_stage_name() -> String {
    "prod".into()
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            stage_name: default_stage_name(),
            throttle: Default::default(),
            quota: Default::default(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThrottleSettings {
    /// Requests per second, > 0.
    #[schemars(range(min = 0.0))]
    pub rate_limit: f64,
    /// Burst size, >= 1.
    #[schemars(range(min = 1))]
    pub burst_limit: i32,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            rate_limit: 100.0,
            burst_limit: 200,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaSettings {
    /// Requests allowed per period, >= 1.
    #[schemars(range(min = 1))]
    pub limit: i32,
    /// The quota period.
    pub period: QuotaPeriod,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        Self {
            limit: 10_000,
            period: QuotaPeriod::Day,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum QuotaPeriod {
    #[default]
    Day,
    Week,
    Month,
}

impl QuotaPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaPeriod::Day => "DAY",
            QuotaPeriod::Week => "WEEK",
            QuotaPeriod::Month => "MONTH",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlarmSettings {
    /// Lambda `Errors` (sum per period) at or above which a function's alarm fires, >= 1.
    #[schemars(range(min = 1))]
    pub lambda_error_threshold: i32,
    /// State machine `ExecutionsFailed` (sum per period) at or above which its alarm fires, >= 1.
    #[schemars(range(min = 1))]
    pub state_machine_failed_threshold: i32,
    /// Consecutive periods breaching before an alarm fires, 1 to 100.
    #[schemars(range(min = 1, max = 100))]
    pub evaluation_periods: i32,
    /// Period in seconds: 10, 30 or a multiple of 60.
    pub period_seconds: i32,
}

impl Default for AlarmSettings {
    fn default() -> Self {
        Self {
            lambda_error_threshold: 1,
            state_machine_failed_threshold: 1,
            evaluation_periods: 1,
            period_seconds: 300,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationSettings {
    /// E-mail addresses subscribed to the notification topic (each confirms by e-mail).
    #[serde(default)]
    pub emails: Vec<String>,
}

impl TransactionPipeline {
    /// `namespace/name`, the value of the ownership tag `tap.dev/pipeline`.
    pub fn owner_key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or("default"),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }
}
