//! The checks a pipeline passes before any AWS write; every error names the field and the rule.
//!
//! - [`validate_metadata`]: the object's name and namespace (what the API server checks, and what must fit
//!   in the names derived from them).
//! - [`validate`]: the spec alone. Every rule the CRD carries is here too (the CLI has no API server in
//!   front of it), plus what no schema can say (tag-key characters, the environment's size).
//! - [`validate_stack`]: the desired stack, once STS has told the account: an image URI's account and
//!   region, each function's whole environment with the controller's variables, every resource's tags
//!   with the controller's own. It runs right after the one STS call, before any other.
//!
//! `controller/tests/invalid_manifests.rs` runs one table of invalid manifests through the generated
//! CRD (its OpenAPI schema and CEL rules) and through these, so the two cannot drift apart.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::LazyLock;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use regex::Regex;

use super::{FunctionSettings, ImageRef, TransactionPipelineSpec};
use crate::desired::{self, names, ResourceSpec, Stack};

/// Environment variables the controller sets on every function; a spec may not override them.
pub const RESERVED_ENV: &[&str] = &[
    "TRANSACTIONS_TABLE",
    "STATUS_TABLE",
    "BUCKET_NAME",
    "TOPIC_ARN",
    "STATE_MACHINE_ARN",
    "DLQ_URL",
];

/// Variables Lambda sets itself and refuses in a function's configuration ("reserved environment
/// variables" in the Lambda developer guide), besides every key starting with `AWS_`.
pub const LAMBDA_RESERVED_ENV: &[&str] = &[
    "_HANDLER",
    "_X_AMZN_TRACE_ID",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
    "TZ",
];

/// Lambda's limit on a function's environment: all variables together, as JSON.
pub const MAX_ENVIRONMENT_BYTES: usize = 4096;

/// AWS's limit of tags per resource.
pub const MAX_TAGS: usize = 50;

/// Tags a spec may carry: [`MAX_TAGS`] less the controller's `tap.dev/pipeline` and `tap.dev/suffix`.
pub const MAX_SPEC_TAGS: usize = MAX_TAGS - 2;

/// Longest `metadata.name`: the API key's Secret `<name>-api-key` must fit Kubernetes' 253 characters.
pub const MAX_NAME_LENGTH: usize = 253 - "-api-key".len();

/// Retention values CloudWatch Logs accepts.
pub const LOG_RETENTION_DAYS: &[i32] = &[
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

/// The regions of the AWS SDK's partitions (aws, aws-cn, aws-us-gov, aws-eusc) as of aws-sdk 1.124: a
/// name outside this list is a typo, not a region (the SDK would send it to a host that does not exist).
pub const REGIONS: &[&str] = &[
    "af-south-1",
    "ap-east-1",
    "ap-east-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-south-1",
    "ap-south-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ca-central-1",
    "ca-west-1",
    "eu-central-1",
    "eu-central-2",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "il-central-1",
    "me-central-1",
    "me-south-1",
    "mx-central-1",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "cn-north-1",
    "cn-northwest-1",
    "us-gov-east-1",
    "us-gov-west-1",
    "eusc-de-east-1",
];

/// The characters IAM (the strictest service of the stack) accepts in tag keys and values: letters,
/// digits, spaces and `_ . : / = + - @`.
pub const TAG_CHARACTERS_PATTERN: &str = r"^[\p{L}\p{Z}\p{N}_.:/=+\-@]*$";

/// An image tag in the stack's own repository.
/// An IAM role ARN (`arn:aws:iam::123456789012:role/path/name`).
pub const ROLE_ARN_PATTERN: &str = r"^arn:aws(-cn|-us-gov|-eusc)?:iam::[0-9]{12}:role/([\x21-\x7e]{1,510}/)?[A-Za-z0-9+=,.@_-]{1,64}$";
/// What STS accepts as an external id.
pub const EXTERNAL_ID_PATTERN: &str = r"^[A-Za-z0-9+=,.@:/_-]{2,1224}$";
pub const IMAGE_TAG_PATTERN: &str = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$";

/// An ECR image URI with a tag or a digest (the only registry Lambda pulls from).
pub const IMAGE_URI_PATTERN: &str = r"^[0-9]{12}\.dkr\.ecr(-fips)?\.[a-z0-9-]+\.(amazonaws\.com(\.cn)?|amazonaws\.eu)/[a-z0-9]+([._/-][a-z0-9]+)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})$";

/// `local@domain`: no spaces, quotes, angle brackets, leading, trailing or consecutive dots; a domain of
/// DNS labels with a top-level domain of letters.
pub const EMAIL_PATTERN: &str = r"^[A-Za-z0-9!#$%&'*+/=?^_{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_{|}~-]+)*@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,63}$";

/// Lambda's pattern for environment variable keys.
const ENV_KEY_PATTERN: &str = r"^[A-Za-z][A-Za-z0-9_]+$";
const SUFFIX_PATTERN: &str = r"^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$";
const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// Whether `value` matches `pattern` (compiled once per call site).
macro_rules! re_match {
    ($pattern:expr, $value:expr) => {{
        static RE: LazyLock<Regex> =
            LazyLock::new(|| Regex::new($pattern).expect("the validation patterns compile"));
        RE.is_match($value)
    }};
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct ValidationError {
    /// JSON path of the offending field, e.g. `spec.functions.csvValidator.memoryMb`.
    pub field: String,
    /// The rule it breaks, with the value found.
    pub rule: String,
}

/// All errors of a spec, joined for a condition message or a CLI error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let joined: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "invalid spec: {}", joined.join("; "))
    }
}

impl std::error::Error for ValidationErrors {}

impl ValidationErrors {
    /// The fields named, in order (for tests and summaries).
    pub fn fields(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.field.as_str()).collect()
    }
}

#[derive(Default)]
struct Checker(Vec<ValidationError>);

impl Checker {
    fn check(&mut self, ok: bool, field: impl Into<String>, rule: impl Into<String>) {
        if !ok {
            self.0.push(ValidationError {
                field: field.into(),
                rule: rule.into(),
            });
        }
    }

    fn finish(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(self.0))
        }
    }
}

/// Checks the object's name and namespace.
pub fn validate_metadata(metadata: &ObjectMeta) -> Result<(), ValidationErrors> {
    let mut c = Checker::default();
    match metadata.name.as_deref() {
        None | Some("") => c.check(false, "metadata.name", "is required"),
        Some(name) => {
            c.check(
                name.len() <= MAX_NAME_LENGTH,
                "metadata.name",
                format!(
                    "must be at most {MAX_NAME_LENGTH} characters: the API key's Secret `<name>-api-key` must fit Kubernetes' 253 (got {})",
                    name.len()
                ),
            );
            c.check(
                re_match!(DNS_SUBDOMAIN_PATTERN, name),
                "metadata.name",
                format!("must be lower-case letters, digits, '-' and '.', starting and ending with a letter or digit (a DNS subdomain; got {name:?})"),
            );
        }
    }
    if let Some(namespace) = metadata.namespace.as_deref() {
        c.check(
            re_match!(DNS_LABEL_PATTERN, namespace),
            "metadata.namespace",
            format!("must be 1-63 lower-case letters, digits and '-', starting and ending with a letter or digit (got {namespace:?})"),
        );
    }
    c.finish()
}

fn check_tag(c: &mut Checker, field: &str, key: &str, value: &str) {
    c.check(
        !key.starts_with("tap.dev/") && !key.starts_with("aws:"),
        field,
        "keys under tap.dev/ and aws: are reserved",
    );
    c.check(
        (1..=128).contains(&key.chars().count()),
        field,
        format!("key must be 1-128 characters (got {})", key.chars().count()),
    );
    c.check(
        re_match!(TAG_CHARACTERS_PATTERN, key),
        field,
        format!("key may hold only letters, digits, spaces and _ . : / = + - @ (IAM refuses the others; got {key:?})"),
    );
    c.check(
        value.chars().count() <= 256,
        field,
        format!(
            "value must be at most 256 characters (got {})",
            value.chars().count()
        ),
    );
    c.check(
        re_match!(TAG_CHARACTERS_PATTERN, value),
        field,
        format!("value may hold only letters, digits, spaces and _ . : / = + - @ (IAM refuses the others; got {value:?})"),
    );
}

fn check_image(c: &mut Checker, field: &str, image: &ImageRef) {
    match (&image.tag, &image.uri) {
        (Some(tag), None) => c.check(
            re_match!(IMAGE_TAG_PATTERN, tag),
            format!("{field}.tag"),
            format!("must be 1-128 letters, digits, '_', '.' and '-', not starting with '.' or '-' (got {tag:?})"),
        ),
        (None, Some(uri)) => c.check(
            uri.len() <= 1024 && re_match!(IMAGE_URI_PATTERN, uri),
            format!("{field}.uri"),
            format!("must be an ECR image URI with a tag or digest, <account>.dkr.ecr.<region>.amazonaws.com/<repo>:<tag> or …/<repo>@sha256:<digest>: Lambda pulls from no other registry (got {uri:?})"),
        ),
        _ => c.check(false, field, "set exactly one of tag or uri"),
    }
}

/// The environment as Lambda measures it against its 4 KB limit: the variables as a JSON object.
fn environment_bytes<'a>(vars: impl IntoIterator<Item = (&'a String, &'a String)>) -> usize {
    let map: serde_json::Map<String, serde_json::Value> = vars
        .into_iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::Value::Object(map).to_string().len()
}

fn check_function(c: &mut Checker, field: &str, f: &FunctionSettings) {
    check_image(c, &format!("{field}.image"), &f.image);
    c.check(
        (128..=10240).contains(&f.memory_mb),
        format!("{field}.memoryMb"),
        format!("must be between 128 and 10240 (got {})", f.memory_mb),
    );
    c.check(
        (1..=900).contains(&f.timeout_seconds),
        format!("{field}.timeoutSeconds"),
        format!("must be between 1 and 900 (got {})", f.timeout_seconds),
    );
    for key in f.environment.keys() {
        let path = format!("{field}.environment.{key}");
        c.check(
            re_match!(ENV_KEY_PATTERN, key),
            &path,
            "must be a letter followed by at least one letter, digit or '_' (Lambda's key pattern)",
        );
        c.check(
            !RESERVED_ENV.contains(&key.as_str()),
            &path,
            "is set by the controller and cannot be overridden",
        );
        c.check(
            !key.starts_with("AWS_") && !LAMBDA_RESERVED_ENV.contains(&key.as_str()),
            &path,
            "is reserved by Lambda (keys starting with AWS_, _HANDLER, _X_AMZN_TRACE_ID, LAMBDA_TASK_ROOT, LAMBDA_RUNTIME_DIR, TZ)",
        );
    }
    let bytes = environment_bytes(&f.environment);
    c.check(
        bytes <= MAX_ENVIRONMENT_BYTES,
        format!("{field}.environment"),
        format!("must be at most {MAX_ENVIRONMENT_BYTES} bytes in total, as JSON, with the controller's variables (got {bytes} without them)"),
    );
}

/// Checks a spec; `Ok` means the engine may act on it.
pub fn validate(spec: &TransactionPipelineSpec) -> Result<(), ValidationErrors> {
    let mut c = Checker::default();
    c.check(
        re_match!(SUFFIX_PATTERN, &spec.environment_suffix),
        "spec.environmentSuffix",
        format!(
            "must match {SUFFIX_PATTERN} (1-20 lower-case letters, digits, inner hyphens; got {:?})",
            spec.environment_suffix
        ),
    );
    if let Some(region) = &spec.region {
        c.check(
            REGIONS.contains(&region.as_str()),
            "spec.region",
            format!("must be an AWS region such as us-east-1 or eu-west-1 (got {region:?})"),
        );
    }
    if let Some(access) = &spec.aws {
        c.check(
            access.role_arn.len() <= 2048 && re_match!(ROLE_ARN_PATTERN, &access.role_arn),
            "spec.aws.roleArn",
            format!(
                "must be an IAM role ARN, arn:aws:iam::<12-digit account>:role/<name> (got {:?})",
                access.role_arn
            ),
        );
        if let Some(id) = &access.external_id {
            c.check(
                re_match!(EXTERNAL_ID_PATTERN, id),
                "spec.aws.externalId",
                "must be 2 to 1224 letters, digits or +=,.@:/-_ (what STS accepts)",
            );
        }
    }
    c.check(
        spec.tags.len() <= MAX_SPEC_TAGS,
        "spec.tags",
        format!(
            "at most {MAX_SPEC_TAGS} tags: AWS allows {MAX_TAGS} per resource and the controller adds 2 (got {})",
            spec.tags.len()
        ),
    );
    for (key, value) in &spec.tags {
        check_tag(&mut c, &format!("spec.tags.{key}"), key, value);
    }
    check_function(
        &mut c,
        "spec.functions.csvValidator",
        &spec.functions.csv_validator,
    );
    check_function(
        &mut c,
        "spec.functions.dataTransformer",
        &spec.functions.data_transformer,
    );
    check_function(
        &mut c,
        "spec.functions.notificationSender",
        &spec.functions.notification_sender,
    );

    let retry = &spec.state_machine.retry;
    c.check(
        (0..=10).contains(&retry.max_attempts),
        "spec.stateMachine.retry.maxAttempts",
        format!("must be between 0 and 10 (got {})", retry.max_attempts),
    );
    c.check(
        (1..=3600).contains(&retry.interval_seconds),
        "spec.stateMachine.retry.intervalSeconds",
        format!(
            "must be between 1 and 3600 (got {})",
            retry.interval_seconds
        ),
    );
    c.check(
        (1.0..=10.0).contains(&retry.backoff_rate),
        "spec.stateMachine.retry.backoffRate",
        format!("must be between 1.0 and 10.0 (got {})", retry.backoff_rate),
    );

    let api = &spec.api;
    c.check(
        (1..=64).contains(&api.stage_name.len())
            && api
                .stage_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "spec.api.stageName",
        format!(
            "must be 1-64 letters, digits, '-' or '_' (got {:?})",
            api.stage_name
        ),
    );
    c.check(
        api.throttle.rate_limit > 0.0,
        "spec.api.throttle.rateLimit",
        format!("must be greater than 0 (got {})", api.throttle.rate_limit),
    );
    c.check(
        api.throttle.burst_limit >= 1,
        "spec.api.throttle.burstLimit",
        format!("must be at least 1 (got {})", api.throttle.burst_limit),
    );
    c.check(
        api.quota.limit >= 1,
        "spec.api.quota.limit",
        format!("must be at least 1 (got {})", api.quota.limit),
    );

    let alarms = &spec.alarms;
    c.check(
        alarms.lambda_error_threshold >= 1,
        "spec.alarms.lambdaErrorThreshold",
        format!("must be at least 1 (got {})", alarms.lambda_error_threshold),
    );
    c.check(
        alarms.state_machine_failed_threshold >= 1,
        "spec.alarms.stateMachineFailedThreshold",
        format!(
            "must be at least 1 (got {})",
            alarms.state_machine_failed_threshold
        ),
    );
    c.check(
        (1..=100).contains(&alarms.evaluation_periods),
        "spec.alarms.evaluationPeriods",
        format!(
            "must be between 1 and 100 (got {})",
            alarms.evaluation_periods
        ),
    );
    c.check(
        (10..=86_400).contains(&alarms.period_seconds)
            && (matches!(alarms.period_seconds, 10 | 30) || alarms.period_seconds % 60 == 0),
        "spec.alarms.periodSeconds",
        format!(
            "must be 10, 30 or a multiple of 60, at most 86400 (got {})",
            alarms.period_seconds
        ),
    );
    c.check(
        (alarms.period_seconds as i64) * (alarms.evaluation_periods as i64) <= 86_400,
        "spec.alarms",
        "periodSeconds × evaluationPeriods must be at most 86400 (one day)",
    );

    let emails = &spec.notifications.emails;
    c.check(
        emails.len() <= 100,
        "spec.notifications.emails",
        format!("at most 100 addresses (got {})", emails.len()),
    );
    for (i, email) in emails.iter().enumerate() {
        c.check(
            email.len() <= 254 && re_match!(EMAIL_PATTERN, email),
            format!("spec.notifications.emails[{i}]"),
            format!("must be an e-mail address local@domain, at most 254 characters, without spaces, quotes, angle brackets or consecutive dots (got {email:?})"),
        );
    }
    c.check(
        LOG_RETENTION_DAYS.contains(&spec.log_retention_days),
        "spec.logRetentionDays",
        format!(
            "must be one of {LOG_RETENTION_DAYS:?} (got {})",
            spec.log_retention_days
        ),
    );
    c.finish()
}

/// `<account>.dkr.ecr.<region>.…/…` → (account, region).
fn ecr_account_and_region(uri: &str) -> Option<(&str, &str)> {
    let host = uri.split('/').next()?;
    let mut parts = host.split('.');
    let account = parts.next()?;
    let _dkr = parts.next()?;
    let _ecr = parts.next()?;
    let region = parts.next()?;
    Some((account, region))
}

/// Checks the desired stack against what only the account and region tell: an image URI must be in the
/// stack's own account and region, each function's whole environment (the controller's variables
/// included) must fit Lambda's 4 KB, and every resource's tags (the controller's and `--extra-tags`
/// included) AWS's limits. Pure: run it right after the STS call that told the account, before any other.
pub fn validate_stack(
    spec: &TransactionPipelineSpec,
    stack: &Stack,
) -> Result<(), ValidationErrors> {
    let mut c = Checker::default();
    for function in names::FUNCTIONS {
        let field = format!("spec.functions.{}", names::camel(function));
        let name = names::function(&stack.suffix, function);
        let Some(ResourceSpec::Function(f)) = stack
            .get(&desired::ResourceId::new(desired::Kind::Function, &name))
            .map(|r| &r.spec)
        else {
            continue;
        };
        if f.image_in_repository.is_none() {
            if let Some((account, region)) = ecr_account_and_region(&f.image_uri) {
                c.check(
                    account == stack.env.account_id && region == stack.env.region,
                    format!("{field}.image.uri"),
                    format!(
                        "must be an ECR image of this stack's account {} in its region {} (Lambda pulls no image of another region, and the functions may pull only this account's repositories); got account {account}, region {region}",
                        stack.env.account_id, stack.env.region
                    ),
                );
            }
        }
        let bytes = environment_bytes(&f.environment);
        c.check(
            bytes <= MAX_ENVIRONMENT_BYTES,
            format!("{field}.environment"),
            format!(
                "must be at most {MAX_ENVIRONMENT_BYTES} bytes in total, as JSON, with the controller's variables (got {bytes})"
            ),
        );
    }
    // Every tagged resource carries the same tags: check them once.
    let mut seen = BTreeSet::new();
    for resource in stack.resources.iter().filter(|r| !r.tags.is_empty()) {
        if !seen.insert(&resource.tags) {
            continue;
        }
        c.check(
            resource.tags.len() <= MAX_TAGS,
            "spec.tags",
            format!(
                "every resource gets spec.tags, --extra-tags and the controller's 2 tags: at most {MAX_TAGS} in all (got {})",
                resource.tags.len()
            ),
        );
        for (key, value) in &resource.tags {
            // spec.tags and the suffix are checked by `validate`; the owner tag is bounded to 256
            // characters by `names::owner_tag`.
            if key == desired::OWNER_TAG
                || key == desired::SUFFIX_TAG
                || spec.tags.contains_key(key)
            {
                continue;
            }
            check_tag(&mut c, &format!("--extra-tags {key}"), key, value);
        }
    }
    c.0.dedup();
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> TransactionPipelineSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const BASE: &str = "
environmentSuffix: dev1
functions:
  csvValidator: {image: {tag: v1}}
  dataTransformer: {image: {tag: v1}}
  notificationSender: {image: {tag: v1}}
";

    #[test]
    fn the_minimal_spec_is_valid_with_defaults() {
        let s = spec(BASE);
        assert!(validate(&s).is_ok());
        assert_eq!(s.functions.csv_validator.memory_mb, 512);
        assert_eq!(s.log_retention_days, 14);
        assert_eq!(s.api.stage_name, "prod");
    }

    #[test]
    fn the_message_states_the_rule_and_the_value() {
        let yaml = BASE.replace(
            "csvValidator: {image: {tag: v1}}",
            "csvValidator: {image: {tag: v1}, memoryMb: 64}",
        );
        let message = validate(&spec(&yaml)).unwrap_err().to_string();
        assert_eq!(message, "invalid spec: spec.functions.csvValidator.memoryMb: must be between 128 and 10240 (got 64)");
    }

    #[test]
    fn the_name_limit_leaves_room_for_the_secret() {
        assert_eq!(MAX_NAME_LENGTH + "-api-key".len(), 253);
        let meta = |name: &str| ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        };
        assert!(validate_metadata(&meta(&"a".repeat(MAX_NAME_LENGTH))).is_ok());
        let err = validate_metadata(&meta(&"a".repeat(300))).unwrap_err();
        assert_eq!(err.fields(), ["metadata.name"]);
        assert!(err.to_string().contains("at most 245 characters"), "{err}");
    }
}
