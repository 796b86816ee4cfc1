//! What each AWS resource of the stack should look like. Drivers read the same types back from AWS
//! (normalised), and the engine diffs the two as JSON, field by field: a field's serde name is the path
//! reported in drift entries. `#[serde(skip)]` marks what is an input to a driver, not a managed field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

// ---------------------------------------------------------------- Lambda permissions
/// Lets a principal (S3, API Gateway) invoke a function: one statement of the function's resource policy.
/// Ownership is the function's: the statement lives in its policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PermissionSpec {
    pub function_name: String,
    pub statement_id: String,
    pub principal: String,
    /// The caller's ARN. For API Gateway a pattern over the API's id, which AWS assigns:
    /// [`API_ID`](super::arns::API_ID) in it stands for the id of the REST API `source_api`.
    pub source_arn: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_account: Option<String>,
    /// The REST API (its AWS name) whose id fills the source ARN's pattern.
    #[serde(skip)]
    pub source_api: Option<String>,
}

// ---------------------------------------------------------------- S3
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BucketSpec {
    /// Default server-side encryption algorithm (`AES256` or `aws:kms`).
    pub encryption: String,
    /// All four public-access-block settings on.
    pub block_public_access: bool,
    pub versioning: bool,
    /// Objects created under the prefix invoke the function (its permission is a dependency: AWS checks
    /// that S3 may invoke the function before it accepts the notification).
    pub notification: BucketNotification,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BucketNotification {
    pub id: String,
    pub function_arn: String,
    pub prefix: String,
    pub events: Vec<String>,
}

// ---------------------------------------------------------------- DynamoDB
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeyAttribute {
    pub name: String,
    /// `S`, `N` or `B`.
    pub attribute_type: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GlobalSecondaryIndex {
    pub name: String,
    pub hash_key: KeyAttribute,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_key: Option<KeyAttribute>,
    /// `ALL`, `KEYS_ONLY` or `INCLUDE`.
    pub projection: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TableSpec {
    pub hash_key: KeyAttribute,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_key: Option<KeyAttribute>,
    /// `PAY_PER_REQUEST`.
    pub billing_mode: String,
    /// Sorted by name.
    pub global_secondary_indexes: Vec<GlobalSecondaryIndex>,
    pub point_in_time_recovery: bool,
}

// ---------------------------------------------------------------- ECR
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RepositorySpec {
    pub scan_on_push: bool,
    /// `IMMUTABLE` or `MUTABLE`.
    pub tag_mutability: String,
    /// Repository policy letting this stack's functions pull (compared as normalised JSON).
    pub policy: Value,
}

// ---------------------------------------------------------------- CloudWatch Logs
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LogGroupSpec {
    pub retention_days: i32,
}

// ---------------------------------------------------------------- SQS
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QueueSpec {
    /// Managed queue attributes (`MessageRetentionPeriod`, `SqsManagedSseEnabled`, …), as SQS spells them.
    pub attributes: BTreeMap<String, String>,
}

// ---------------------------------------------------------------- SNS
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TopicSpec {
    /// Managed topic attributes (`DisplayName`, …).
    pub attributes: BTreeMap<String, String>,
    /// E-mail endpoints subscribed (sorted). Pending confirmations count as subscribed.
    pub email_subscriptions: Vec<String>,
}

// ---------------------------------------------------------------- IAM
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoleSpec {
    /// Trust policy (normalised JSON).
    pub assume_role_policy: Value,
    /// Inline policies by name (normalised JSON).
    pub inline_policies: BTreeMap<String, Value>,
    /// Attached managed policy ARNs (sorted).
    pub managed_policy_arns: Vec<String>,
}

// ---------------------------------------------------------------- Lambda
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSpec {
    pub image_uri: String,
    pub role_arn: String,
    pub memory_mb: i32,
    pub timeout_seconds: i32,
    /// `["arm64"]`.
    pub architectures: Vec<String>,
    pub environment: BTreeMap<String, String>,
    /// `Active` or `PassThrough`.
    pub tracing_mode: String,
    pub dead_letter_target_arn: String,
    /// When the image lives in the stack's own repository: where to look for it before creating or
    /// updating the function (the pipeline waits until it is pushed).
    #[serde(skip)]
    pub image_in_repository: Option<EcrImage>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EcrImage {
    pub repository: String,
    pub tag: String,
}

// ---------------------------------------------------------------- Step Functions
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StateMachineSpec {
    /// `EXPRESS`.
    pub machine_type: String,
    /// Amazon States Language definition (parsed JSON, so whitespace and key order do not matter).
    pub definition: Value,
    pub role_arn: String,
    pub logging: StateMachineLogging,
    pub tracing_enabled: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StateMachineLogging {
    /// `ALL`, `ERROR`, `FATAL` or `OFF`.
    pub level: String,
    pub include_execution_data: bool,
    /// Log group ARN ending in `:*`.
    pub log_group_arn: String,
}

// ---------------------------------------------------------------- API Gateway
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestApiSpec {
    pub description: String,
    /// `REGIONAL`.
    pub endpoint_type: String,
    /// `/upload`.
    pub resource_path: String,
    pub method: ApiMethod,
    pub integration: ApiIntegration,
    pub validator: RequestValidator,
    pub model: ApiModel,
    /// Copies made by a create repeated after its answer was lost (API Gateway keeps no name unique): the
    /// ids of the ones this pipeline owns besides the one meant. Desired: none; the update deletes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub duplicates: Vec<String>,
}

impl RestApiSpec {
    /// A short digest of everything a deployment freezes (resource, method, integration, validator,
    /// model): the stage is redeployed when it changes.
    pub fn deployment_fingerprint(&self) -> String {
        use sha2::Digest;
        let frozen = serde_json::json!([
            self.resource_path,
            self.method,
            self.integration,
            self.validator,
            self.model
        ]);
        let digest = sha2::Sha256::digest(frozen.to_string().as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApiMethod {
    pub http_method: String,
    pub authorization_type: String,
    pub api_key_required: bool,
    /// Request parameters and whether they are required, e.g. `method.request.header.Content-Type: true`.
    pub request_parameters: BTreeMap<String, bool>,
    /// Content type → model name.
    pub request_models: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApiIntegration {
    /// `AWS_PROXY`.
    pub integration_type: String,
    /// `POST` (Lambda proxy integrations are always invoked with POST).
    pub integration_http_method: String,
    /// `arn:aws:apigateway:<region>:lambda:path/2015-03-31/functions/<function arn>/invocations`.
    pub uri: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RequestValidator {
    pub name: String,
    pub validate_request_body: bool,
    pub validate_request_parameters: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiModel {
    pub name: String,
    pub content_type: String,
    /// JSON schema (parsed).
    pub schema: Value,
}

/// A stage of the REST API, serving its latest deployment. The resource's name is `<api>/<stage>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StageSpec {
    /// The REST API (its AWS name); the driver maps the id back to this name.
    pub rest_api_name: String,
    pub stage_name: String,
    /// [`RestApiSpec::deployment_fingerprint`] of the API: the live deployment's description carries it.
    pub deployment: String,
    pub tracing_enabled: bool,
    /// Throttling of every method (`*/*` method settings).
    pub throttle_rate_limit: f64,
    pub throttle_burst_limit: i32,
}

/// An API key; its value goes to a Kubernetes Secret only.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySpec {
    pub description: String,
    pub enabled: bool,
    /// Copies made by a create repeated after its answer was lost (API Gateway keeps no name unique): the
    /// ids of the ones this pipeline owns besides the one meant. Desired: none; the update deletes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub duplicates: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UsagePlanSpec {
    pub description: String,
    /// The REST API (its AWS name) and stage the plan covers; the driver maps the API id back to this name.
    pub rest_api_name: String,
    pub stage_name: String,
    pub throttle_rate_limit: f64,
    pub throttle_burst_limit: i32,
    pub quota_limit: i32,
    /// `DAY`, `WEEK` or `MONTH`.
    pub quota_period: String,
    /// The API key bound to the plan (its AWS name; a resource of its own).
    pub api_key_name: String,
    /// Copies made by a create repeated after its answer was lost (API Gateway keeps no name unique): the
    /// ids of the ones this pipeline owns besides the one meant. Desired: none; the update deletes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub duplicates: Vec<String>,
}

// ---------------------------------------------------------------- CloudWatch
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AlarmSpec {
    pub description: String,
    pub namespace: String,
    pub metric_name: String,
    pub dimensions: BTreeMap<String, String>,
    /// `Sum`.
    pub statistic: String,
    pub period_seconds: i32,
    pub evaluation_periods: i32,
    pub threshold: f64,
    /// `GreaterThanOrEqualToThreshold`.
    pub comparison_operator: String,
    /// `notBreaching`.
    pub treat_missing_data: String,
    /// Topic ARNs notified when the alarm fires.
    pub alarm_actions: Vec<String>,
}
