//! The `TransactionPipeline` API (`tap.dev/v1alpha1`). The CRD in `crds/` is generated from these types
//! (`tap-controller crd`); doc comments become `kubectl explain` text.

mod status;
mod validate;

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use status::*;
pub use validate::{
    validate, validate_metadata, validate_stack, ValidationError, ValidationErrors, EMAIL_PATTERN,
    EXTERNAL_ID_PATTERN, IMAGE_TAG_PATTERN, IMAGE_URI_PATTERN, LAMBDA_RESERVED_ENV,
    LOG_RETENTION_DAYS, MAX_ENVIRONMENT_BYTES, MAX_NAME_LENGTH, MAX_SPEC_TAGS, MAX_TAGS, REGIONS,
    RESERVED_ENV, ROLE_ARN_PATTERN, TAG_CHARACTERS_PATTERN,
};

pub const GROUP: &str = "tap.dev";
pub const FINALIZER: &str = "tap.dev/cleanup";

/// Desired state of one environment's transaction-processing stack on AWS.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    doc = "A serverless transaction-processing stack on AWS (S3, DynamoDB, ECR, Lambda, IAM, Step Functions, API Gateway, SNS, SQS, CloudWatch) that the controller creates, keeps as declared and tears down with this resource.",
    validation = Rule::new("size(self.metadata.name) <= 245").message("metadata.name must be at most 245 characters (the Secret <name>-api-key must fit Kubernetes' 253)"),
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
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.outputs.apiEndpoint","priority":1}"#,
    printcolumn = r#"{"name":"Account","type":"string","jsonPath":".status.outputs.accountId","priority":1}"#,
    printcolumn = r#"{"name":"Region","type":"string","jsonPath":".status.outputs.region","priority":1}"#,
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

    /// AWS region of the stack, e.g. `eu-west-1` (one of the regions the AWS SDK knows). Default: the
    /// controller's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = REGIONS))]
    pub region: Option<String>,

    /// Credentials for this pipeline's AWS calls. Default: the controller's own (its pod's role).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsAccess>,

    /// What deleting this resource does in AWS: `Delete` tears the whole stack down (the bucket is
    /// emptied, repositories are force-deleted); `Retain` leaves AWS untouched.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// `Correct` rewrites AWS to match the spec; `Report` only observes and reports drift, never writes.
    #[serde(default)]
    pub drift_policy: DriftPolicy,

    /// `Merge`: the controller manages only the tags it sets and leaves tags others added (cost
    /// allocation, AWS Config) alone; `Exclusive`: every other tag is drift, and removed.
    #[serde(default)]
    pub tag_policy: TagPolicy,

    /// `Never`: a resource found under one of the stack's names without the `tap.dev/pipeline` tag is a
    /// Conflict, left untouched. `Adopt`: such a resource (made by other tooling, e.g. the Terraform
    /// stack this controller replaces) is tagged as this pipeline's, reported in status and Events, and
    /// then converged like any other. A resource tagged by any tap-controller pipeline is never adopted,
    /// nor one of several same-named candidates (API Gateway names are not unique).
    #[serde(default)]
    pub adoption_policy: AdoptionPolicy,

    /// Tags added to every AWS resource of the stack: at most 48 (AWS allows 50 per resource; the
    /// controller adds `tap.dev/pipeline` and `tap.dev/suffix`), keys of 1 to 128 and values of at most
    /// 256 characters, letters, digits, spaces and `_ . : / = + - @` only; keys under `aws:` and
    /// `tap.dev/` are reserved.
    #[serde(default)]
    #[schemars(schema_with = "tags_schema")]
    #[x_kube(validation = Rule::new("self.all(k, size(k) >= 1 && size(k) <= 128)").message("tag keys must be 1 to 128 characters"))]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('aws:') && !k.startsWith('tap.dev/'))").message("tag keys under aws: and tap.dev/ are reserved"))]
    #[x_kube(validation = Rule::new(r"self.all(k, k.matches(r'^[\p{L}\p{Z}\p{N}_.:/=+\-@]*$'))").message("tag keys may hold only letters, digits, spaces and _ . : / = + - @"))]
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
    #[schemars(extend("enum" = LOG_RETENTION_DAYS))]
    pub log_retention_days: i32,
}

/// `spec.tags`: a bounded map (the API server refuses more than AWS accepts).
fn tags_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": MAX_SPEC_TAGS,
        "additionalProperties": {
            "type": "string",
            "maxLength": 256,
            "pattern": TAG_CHARACTERS_PATTERN,
        },
    })
}

/// A function's `environment`: bounded like Lambda's (4 KB in total).
fn environment_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 500,
        "additionalProperties": {"type": "string", "maxLength": MAX_ENVIRONMENT_BYTES},
    })
}

fn default_log_retention_days() -> i32 {
    14
}

/// Another account's role, assumed through STS for every call of this pipeline (cross-account).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsAccess {
    /// ARN of the IAM role to assume, `arn:<partition>:iam::<12-digit account>:role/<path/name>`; its
    /// trust policy must allow the controller's identity.
    #[schemars(regex(pattern = ROLE_ARN_PATTERN), length(max = 2048))]
    pub role_arn: String,
    /// The external id the role's trust policy requires (`sts:ExternalId`), 2 to 1224 characters of
    /// letters, digits and `+=,.@:/-_`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = EXTERNAL_ID_PATTERN), length(min = 2, max = 1224))]
    pub external_id: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Delete,
    Retain,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TagPolicy {
    #[default]
    Merge,
    Exclusive,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AdoptionPolicy {
    #[default]
    Never,
    Adopt,
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
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
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
    /// Extra environment variables, at most 4 KB in total with the ones the controller sets (the names of
    /// the tables, bucket, topic, state machine and queue: those keys are reserved, and so are the keys
    /// Lambda sets: `AWS_*`, `_HANDLER`, `_X_AMZN_TRACE_ID`, `LAMBDA_TASK_ROOT`, `LAMBDA_RUNTIME_DIR`,
    /// `TZ`). Keys: a letter, then letters, digits and `_`.
    #[serde(default)]
    #[schemars(schema_with = "environment_schema")]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('AWS_') && !(k in ['_HANDLER', '_X_AMZN_TRACE_ID', 'LAMBDA_TASK_ROOT', 'LAMBDA_RUNTIME_DIR', 'TZ', 'TRANSACTIONS_TABLE', 'STATUS_TABLE', 'BUCKET_NAME', 'TOPIC_ARN', 'STATE_MACHINE_ARN', 'DLQ_URL']))").message("environment keys starting with AWS_, the ones Lambda sets and the ones the controller sets are reserved"))]
    pub environment: BTreeMap<String, String>,
}

fn default_memory_mb() -> i32 {
    512
}
fn default_timeout_seconds() -> i32 {
    30
}

/// Which image a function runs: a tag in the stack's own ECR repository, or a full image URI (exactly
/// one of the two).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.tag) != has(self.uri)").message("set exactly one of tag or uri"))]
pub struct ImageRef {
    /// A tag in the stack's own repository `tap-<suffix>-<function>`: 1 to 128 letters, digits, `_`,
    /// `.` and `-`, not starting with `.` or `-`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = IMAGE_TAG_PATTERN))]
    pub tag: Option<String>,
    /// A full ECR image URI in the stack's own account and region
    /// (`<account>.dkr.ecr.<region>.amazonaws.com/<repo>:<tag>` or `…/<repo>@sha256:<digest>`): Lambda runs
    /// no image from another registry or region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = IMAGE_URI_PATTERN), length(max = 1024))]
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

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.periodSeconds * self.evaluationPeriods <= 86400").message("periodSeconds × evaluationPeriods must be at most 86400 (one day)"))]
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
    #[schemars(range(min = 10, max = 86400))]
    #[x_kube(validation = Rule::new("self == 10 || self == 30 || self % 60 == 0").message("periodSeconds must be 10, 30 or a multiple of 60"))]
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
    /// E-mail addresses subscribed to the notification topic (each confirms by e-mail): `local@domain`,
    /// at most 254 characters, without spaces, quotes, angle brackets or consecutive dots.
    #[serde(default)]
    #[schemars(length(max = 100), inner(regex(pattern = EMAIL_PATTERN), length(max = 254)))]
    pub emails: Vec<String>,
}

/// Annotation that pauses a pipeline: with the value `"true"` the controller makes no AWS call for it (no
/// reads, no corrections) and its status says `Paused`. Deleting a paused pipeline still tears its stack
/// down per `deletionPolicy` (deleting is an explicit request; use `deletionPolicy: Retain` to keep it).
pub const PAUSED_ANNOTATION: &str = "tap.dev/paused";

/// Annotation that asks for a reconcile now (a drift check without waiting for the resync period):
/// any new value, e.g. `kubectl annotate --overwrite transactionpipeline NAME
/// tap.dev/reconcile-requested-at="$(date +%s)"`. A timestamp (epoch seconds, RFC 3339) asks for the
/// stack as of that moment: account-wide listings read since then by other pipelines' walks may serve
/// it (see `k8s::reconcile::shared_reads_age`); any other value reads everything afresh.
pub const RECONCILE_REQUEST_ANNOTATION: &str = "tap.dev/reconcile-requested-at";

impl TransactionPipeline {
    /// Whether the [`PAUSED_ANNOTATION`] is `"true"`.
    pub fn is_paused(&self) -> bool {
        self.annotation(PAUSED_ANNOTATION) == Some("true")
    }

    /// The annotations that change what a reconcile does or ask for one: [`PAUSED_ANNOTATION`] and
    /// [`RECONCILE_REQUEST_ANNOTATION`], with their values (`None` when absent).
    pub fn control_annotations(&self) -> (Option<&str>, Option<&str>) {
        (
            self.annotation(PAUSED_ANNOTATION),
            self.annotation(RECONCILE_REQUEST_ANNOTATION),
        )
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    /// `namespace/name`, the value of the ownership tag `tap.dev/pipeline`.
    pub fn owner_key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or("default"),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }
}
