//! Validation the API server cannot do from the schema alone. Runs before any AWS call; every error names
//! the field and the rule.

use std::fmt;

use super::{FunctionSettings, ImageRef, TransactionPipelineSpec};

/// Environment variables the controller sets on every function; a spec may not override them.
pub const RESERVED_ENV: &[&str] = &[
    "TRANSACTIONS_TABLE",
    "STATUS_TABLE",
    "BUCKET_NAME",
    "TOPIC_ARN",
    "STATE_MACHINE_ARN",
    "DLQ_URL",
];

/// Retention values CloudWatch Logs accepts.
pub const LOG_RETENTION_DAYS: &[i32] = &[
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
}

fn is_suffix(s: &str) -> bool {
    let bytes = s.as_bytes();
    let inner_ok = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    let ends_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (1..=20).contains(&s.len()) && inner_ok && ends_ok(bytes.first()) && ends_ok(bytes.last())
}

fn is_region(s: &str) -> bool {
    // e.g. us-east-1, eu-central-2, us-gov-west-1, ap-southeast-5
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts
            .iter()
            .take(parts.len() - 1)
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts
            .last()
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn is_image_tag(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

fn is_env_key(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn check_image(c: &mut Checker, field: &str, image: &ImageRef) {
    match (&image.tag, &image.uri) {
        (Some(tag), None) => c.check(
            is_image_tag(tag),
            format!("{field}.tag"),
            format!("must be 1-128 characters of letters, digits, '_', '.', '-', not starting with '.' or '-' (got {tag:?})"),
        ),
        (None, Some(uri)) => c.check(
            uri.contains('/') && (uri.rsplit('/').next().is_some_and(|last| last.contains(':')) || uri.contains("@sha256:")),
            format!("{field}.uri"),
            format!("must be a full image URI with a tag or digest, e.g. <account>.dkr.ecr.<region>.amazonaws.com/<repo>:<tag> (got {uri:?})"),
        ),
        _ => c.check(false, field, "set exactly one of tag or uri"),
    }
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
            is_env_key(key),
            &path,
            "must start with a letter and hold only letters, digits and '_'",
        );
        c.check(
            !RESERVED_ENV.contains(&key.as_str()),
            &path,
            "is set by the controller and cannot be overridden",
        );
        c.check(
            !key.starts_with("AWS_"),
            &path,
            "keys starting with AWS_ are reserved by Lambda",
        );
    }
}

/// Checks a spec; `Ok` means the engine may act on it.
pub fn validate(spec: &TransactionPipelineSpec) -> Result<(), ValidationErrors> {
    let mut c = Checker(Vec::new());
    c.check(
        is_suffix(&spec.environment_suffix),
        "spec.environmentSuffix",
        format!(
            "must match ^[a-z0-9]([a-z0-9-]{{0,18}}[a-z0-9])?$ (1-20 lower-case letters, digits, inner hyphens; got {:?})",
            spec.environment_suffix
        ),
    );
    if let Some(region) = &spec.region {
        c.check(
            is_region(region),
            "spec.region",
            format!("must be an AWS region such as us-east-1 (got {region:?})"),
        );
    }
    c.check(
        spec.tags.len() <= 40,
        "spec.tags",
        format!("at most 40 tags (got {})", spec.tags.len()),
    );
    for (key, value) in &spec.tags {
        let path = format!("spec.tags.{key}");
        c.check(
            !key.starts_with("tap.dev/") && !key.starts_with("aws:"),
            &path,
            "keys under tap.dev/ and aws: are reserved",
        );
        c.check(
            (1..=128).contains(&key.len()),
            &path,
            "key must be 1-128 characters",
        );
        c.check(
            value.len() <= 256,
            &path,
            "value must be at most 256 characters",
        );
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
        matches!(alarms.period_seconds, 10 | 30)
            || (alarms.period_seconds >= 60 && alarms.period_seconds % 60 == 0),
        "spec.alarms.periodSeconds",
        format!(
            "must be 10, 30 or a multiple of 60 (got {})",
            alarms.period_seconds
        ),
    );
    c.check(
        (alarms.period_seconds as i64) * (alarms.evaluation_periods as i64) <= 86_400,
        "spec.alarms",
        "periodSeconds × evaluationPeriods must be at most 86400 (one day)",
    );

    for (i, email) in spec.notifications.emails.iter().enumerate() {
        let mut parts = email.split('@');
        let ok = matches!((parts.next(), parts.next(), parts.next()), (Some(l), Some(d), None) if !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.'));
        c.check(
            ok,
            format!("spec.notifications.emails[{i}]"),
            format!("must be an e-mail address (got {email:?})"),
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
    if c.0.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(c.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> TransactionPipelineSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    const BASE: &str = "
environmentSuffix: dev1
functions:
  csvValidator: {image: {tag: v1}}
  dataTransformer: {image: {tag: v1}}
  notificationSender: {image: {tag: v1}}
";

    fn errors(extra: &str, replace: Option<(&str, &str)>) -> Vec<String> {
        let mut yaml = format!("{BASE}{extra}");
        if let Some((from, to)) = replace {
            yaml = yaml.replace(from, to);
        }
        match validate(&spec(&yaml)) {
            Ok(()) => vec![],
            Err(e) => e.0.iter().map(|e| e.field.clone()).collect(),
        }
    }

    #[test]
    fn the_minimal_spec_is_valid_with_defaults() {
        let s = spec(BASE);
        assert!(validate(&s).is_ok());
        assert_eq!(s.functions.csv_validator.memory_mb, 512);
        assert_eq!(s.log_retention_days, 14);
        assert_eq!(s.api.stage_name, "prod");
    }

    #[test]
    fn each_error_names_its_field() {
        assert_eq!(
            errors(
                "",
                Some(("environmentSuffix: dev1", "environmentSuffix: Dev_1"))
            ),
            ["spec.environmentSuffix"]
        );
        assert_eq!(
            errors(
                "",
                Some(("environmentSuffix: dev1", "environmentSuffix: dev1-"))
            ),
            ["spec.environmentSuffix"]
        );
        assert_eq!(
            errors(
                "",
                Some((
                    "environmentSuffix: dev1",
                    "environmentSuffix: abcdefghijklmnopqrstu"
                ))
            ),
            ["spec.environmentSuffix"]
        );
        assert_eq!(
            errors(
                "",
                Some((
                    "csvValidator: {image: {tag: v1}}",
                    "csvValidator: {image: {tag: v1}, memoryMb: 64}"
                ))
            ),
            ["spec.functions.csvValidator.memoryMb"]
        );
        assert_eq!(
            errors(
                "",
                Some((
                    "dataTransformer: {image: {tag: v1}}",
                    "dataTransformer: {image: {}, timeoutSeconds: 901}"
                ))
            ),
            [
                "spec.functions.dataTransformer.image",
                "spec.functions.dataTransformer.timeoutSeconds"
            ]
        );
        assert_eq!(
            errors(
                "",
                Some((
                    "notificationSender: {image: {tag: v1}}",
                    "notificationSender: {image: {tag: v1}, environment: {BUCKET_NAME: x}}"
                ))
            ),
            ["spec.functions.notificationSender.environment.BUCKET_NAME"]
        );
        assert_eq!(
            errors("logRetentionDays: 10\n", None),
            ["spec.logRetentionDays"]
        );
        assert_eq!(errors("region: mars\n", None), ["spec.region"]);
        assert_eq!(
            errors("tags: {\"tap.dev/pipeline\": x}\n", None),
            ["spec.tags.tap.dev/pipeline"]
        );
        assert_eq!(
            errors("notifications: {emails: [not-an-email]}\n", None),
            ["spec.notifications.emails[0]"]
        );
        assert_eq!(errors("alarms: {lambdaErrorThreshold: 1, stateMachineFailedThreshold: 1, evaluationPeriods: 1, periodSeconds: 45}\n", None), ["spec.alarms.periodSeconds"]);
        assert_eq!(
            errors(
                "stateMachine: {retry: {maxAttempts: 11, intervalSeconds: 2, backoffRate: 2.0}}\n",
                None
            ),
            ["spec.stateMachine.retry.maxAttempts"]
        );
        assert_eq!(
            errors("api: {stageName: \"bad stage\"}\n", None),
            ["spec.api.stageName"]
        );
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
}
