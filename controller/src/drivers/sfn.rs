//! Step Functions state machines: type, definition, role, logging, tracing and tags.
//!
//! The ARN is deterministic (`arn:<partition>:states:<region>:<account>:stateMachine:<name>`), so every
//! call addresses the machine without a lookup. A role created a moment ago may not be assumable by
//! `states.amazonaws.com` yet (IAM is eventually consistent): create and update retry that case with
//! backoff for up to ~30 s, then give up with a Transient error.

use std::future::Future;
use std::time::Duration;

use aws_sdk_sfn::types::{
    CloudWatchLogsLogGroup, LogDestination, LogLevel, LoggingConfiguration, StateMachineStatus,
    StateMachineType, Tag, TracingConfiguration,
};
use backon::{ExponentialBuilder, Retryable};
use serde_json::Value;

use crate::aws::{AwsError, ErrorClass, ResultExt};
use crate::desired::{StateMachineLogging, StateMachineSpec, Tags};

use super::{tag_delta, user_tags, Changes, Ctx, Driver, Observed, Outputs};

pub struct StateMachines;

fn resource(name: &str) -> String {
    format!("StateMachine {name}")
}

/// How long a new role may take to become assumable before the driver hands back a Transient error.
const ROLE_PROPAGATION: Duration = Duration::from_secs(30);

/// Whether an error says the execution role cannot be assumed (yet): a newly created or updated role that
/// IAM has not propagated to Step Functions. AWS answers `AccessDeniedException: Neither the global
/// service principal states.amazonaws.com, nor the regional one is authorized to assume the provided role.`
fn role_not_assumable_yet(e: &AwsError) -> bool {
    let message = e.message.to_ascii_lowercase();
    matches!(
        e.code.as_deref(),
        Some("AccessDeniedException" | "InvalidArn" | "InvalidParameterValueException")
    ) && (message.contains("not authorized to assume")
        || message.contains("authorized to assume the provided role")
        || message.contains("cannot be assumed")
        || message.contains("sts:assumerole"))
}

/// Runs `call`, retrying while the role is not assumable yet, for at most [`ROLE_PROPAGATION`]; if it
/// still is not, the error becomes Transient (the engine retries later) instead of Terminal.
async fn with_role_retry<T, F, Fut>(call: F) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AwsError>>,
{
    retry_within(ROLE_PROPAGATION, call).await
}

async fn retry_within<T, F, Fut>(window: Duration, call: F) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AwsError>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay((window / 60).max(Duration::from_millis(10)))
        .with_max_delay(window / 4)
        .with_max_times(16)
        .with_total_delay(Some(window))
        .with_jitter();
    call.retry(backoff)
        .when(role_not_assumable_yet)
        .await
        .map_err(|mut e| {
            if role_not_assumable_yet(&e) {
                e.class = ErrorClass::Transient;
                e.message = format!(
                    "{} (still not assumable after {} s of retries; the role may be new)",
                    e.message,
                    window.as_secs()
                );
            }
            e
        })
}

fn logging_configuration(logging: &StateMachineLogging) -> LoggingConfiguration {
    let mut builder = LoggingConfiguration::builder()
        .level(LogLevel::from(logging.level.as_str()))
        .include_execution_data(logging.include_execution_data);
    if !logging.log_group_arn.is_empty() {
        builder = builder.destinations(
            LogDestination::builder()
                .cloud_watch_logs_log_group(
                    CloudWatchLogsLogGroup::builder()
                        .log_group_arn(&logging.log_group_arn)
                        .build(),
                )
                .build(),
        );
    }
    builder.build()
}

fn tracing_configuration(enabled: bool) -> TracingConfiguration {
    TracingConfiguration::builder().enabled(enabled).build()
}

fn sfn_tags(tags: &Tags) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

impl StateMachines {
    pub fn arn(ctx: &Ctx<'_>, name: &str) -> String {
        format!(
            "arn:{}:states:{}:{}:stateMachine:{name}",
            ctx.aws.partition, ctx.aws.region, ctx.aws.account_id
        )
    }
}

impl Driver for StateMachines {
    type Spec = StateMachineSpec;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &StateMachineSpec,
    ) -> Result<Option<Observed<StateMachineSpec>>, AwsError> {
        let arn = Self::arn(ctx, name);
        let machine = match ctx
            .aws
            .sfn
            .describe_state_machine()
            .state_machine_arn(&arn)
            .send()
            .await
            .context(resource(name), "states:DescribeStateMachine")
        {
            Ok(out) => out,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        // Deletion is asynchronous on AWS: a machine being deleted is already gone for our purposes
        // (creating it again answers StateMachineDeleting, which `create` reports as Transient).
        if machine.status() == Some(&StateMachineStatus::Deleting) {
            return Ok(None);
        }
        let definition = serde_json::from_str(machine.definition())
            .unwrap_or_else(|_| Value::String(machine.definition().to_string()));
        let mut logging = match machine.logging_configuration() {
            Some(config) => StateMachineLogging {
                level: config
                    .level()
                    .map(|l| l.as_str().to_string())
                    .unwrap_or_else(|| "OFF".into()),
                include_execution_data: config.include_execution_data(),
                log_group_arn: config
                    .destinations()
                    .iter()
                    .find_map(|d| {
                        d.cloud_watch_logs_log_group()
                            .and_then(|g| g.log_group_arn())
                    })
                    .unwrap_or_default()
                    .to_string(),
            },
            None => StateMachineLogging {
                level: "OFF".into(),
                include_execution_data: false,
                log_group_arn: String::new(),
            },
        };
        // Logging OFF: AWS may drop the destination and the execution-data flag, which mean nothing then.
        // When OFF is also what is desired, fold them to the desired values rather than report a drift that
        // no update could correct.
        if logging.level == "OFF"
            && desired.logging.level == "OFF"
            && logging.log_group_arn.is_empty()
        {
            logging.log_group_arn = desired.logging.log_group_arn.clone();
            logging.include_execution_data = desired.logging.include_execution_data;
        }
        // Absent means disabled (ministack never returns it: the drift then reappears after correction,
        // which the engine reports as uncorrectable rather than hot-looping).
        let tracing_enabled = machine.tracing_configuration().is_some_and(|t| t.enabled());
        let tags = ctx
            .aws
            .sfn
            .list_tags_for_resource()
            .resource_arn(&arn)
            .send()
            .await
            .context(resource(name), "states:ListTagsForResource")?;
        let tags = user_tags(tags.tags().iter().filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        }));
        Ok(Some(Observed {
            spec: StateMachineSpec {
                machine_type: machine.r#type().as_str().to_string(),
                definition,
                role_arn: machine.role_arn().to_string(),
                logging,
                tracing_enabled,
            },
            tags,
            outputs: Outputs {
                arn: Some(arn),
                ..Default::default()
            },
        }))
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &StateMachineSpec,
        tags: &Tags,
    ) -> Result<Outputs, AwsError> {
        let definition = desired.definition.to_string();
        let created = with_role_retry(|| async {
            ctx.aws
                .sfn
                .create_state_machine()
                .name(name)
                .definition(&definition)
                .role_arn(&desired.role_arn)
                .r#type(StateMachineType::from(desired.machine_type.as_str()))
                .logging_configuration(logging_configuration(&desired.logging))
                .tracing_configuration(tracing_configuration(desired.tracing_enabled))
                .set_tags(Some(sfn_tags(tags)))
                .send()
                .await
                .context(resource(name), "states:CreateStateMachine")
        })
        .await;
        let created = match created {
            Err(mut e) if e.code.as_deref() == Some("StateMachineDeleting") => {
                e.class = ErrorClass::Transient;
                return Err(e);
            }
            other => other?,
        };
        let arn = Some(created.state_machine_arn().to_string())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| Self::arn(ctx, name));
        Ok(Outputs {
            arn: Some(arn),
            ..Default::default()
        })
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &StateMachineSpec,
        tags: &Tags,
        observed: &Observed<StateMachineSpec>,
        changes: &Changes,
    ) -> Result<Outputs, AwsError> {
        let arn = Self::arn(ctx, name);
        if changes.touches("machineType") {
            return Err(AwsError::terminal(
                resource(name),
                "states:UpdateStateMachine",
                format!(
                    "the state machine type is {} but should be {}: a type cannot be changed in place, the state machine must be replaced (delete it, and it is recreated)",
                    observed.spec.machine_type, desired.machine_type
                ),
            ));
        }
        let definition = changes
            .touches("definition")
            .then(|| desired.definition.to_string());
        let role_arn = changes.touches("roleArn").then(|| desired.role_arn.clone());
        let logging = changes
            .touches("logging")
            .then(|| logging_configuration(&desired.logging));
        let tracing = changes
            .touches("tracingEnabled")
            .then(|| tracing_configuration(desired.tracing_enabled));
        if definition.is_some() || role_arn.is_some() || logging.is_some() || tracing.is_some() {
            // One call with only the drifted parts.
            with_role_retry(|| async {
                ctx.aws
                    .sfn
                    .update_state_machine()
                    .state_machine_arn(&arn)
                    .set_definition(definition.clone())
                    .set_role_arn(role_arn.clone())
                    .set_logging_configuration(logging.clone())
                    .set_tracing_configuration(tracing.clone())
                    .send()
                    .await
                    .context(resource(name), "states:UpdateStateMachine")
            })
            .await?;
        }
        if changes.touches("tags") {
            let (set, remove) = tag_delta(tags, &observed.tags);
            if !set.is_empty() {
                ctx.aws
                    .sfn
                    .tag_resource()
                    .resource_arn(&arn)
                    .set_tags(Some(sfn_tags(&set)))
                    .send()
                    .await
                    .context(resource(name), "states:TagResource")?;
            }
            if !remove.is_empty() {
                ctx.aws
                    .sfn
                    .untag_resource()
                    .resource_arn(&arn)
                    .set_tag_keys(Some(remove))
                    .send()
                    .await
                    .context(resource(name), "states:UntagResource")?;
            }
        }
        Ok(Outputs {
            arn: Some(arn),
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        _observed: &Observed<StateMachineSpec>,
    ) -> Result<(), AwsError> {
        match ctx
            .aws
            .sfn
            .delete_state_machine()
            .state_machine_arn(Self::arn(ctx, name))
            .send()
            .await
            .context(resource(name), "states:DeleteStateMachine")
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: &str, message: &str) -> AwsError {
        AwsError {
            resource: "StateMachine x".into(),
            call: "states:CreateStateMachine".into(),
            code: Some(code.into()),
            message: message.into(),
            class: ErrorClass::Terminal,
        }
    }

    #[test]
    fn recognises_a_role_not_yet_assumable() {
        assert!(role_not_assumable_yet(&err(
            "AccessDeniedException",
            "Neither the global service principal states.amazonaws.com, nor the regional one is authorized to assume the provided role."
        )));
        assert!(role_not_assumable_yet(&err(
            "AccessDeniedException",
            "states.amazonaws.com is not authorized to assume role x"
        )));
        assert!(!role_not_assumable_yet(&err(
            "AccessDeniedException",
            "User is not authorized to perform: states:CreateStateMachine"
        )));
        assert!(!role_not_assumable_yet(&err(
            "InvalidDefinition",
            "Invalid State Machine Definition"
        )));
    }

    #[tokio::test]
    async fn gives_up_after_the_propagation_window_with_a_transient_error() {
        let window = Duration::from_millis(600);
        let mut attempts = 0;
        let started = std::time::Instant::now();
        let result: Result<(), AwsError> = retry_within(window, || {
            attempts += 1;
            async {
                Err(err(
                    "AccessDeniedException",
                    "is not authorized to assume the provided role",
                ))
            }
        })
        .await;
        let e = result.expect_err("never assumable");
        assert_eq!(e.class, ErrorClass::Transient);
        assert!(attempts > 1, "retried");
        assert!(
            started.elapsed() <= window * 2,
            "bounded: {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn other_errors_are_not_retried() {
        let mut attempts = 0;
        let result: Result<(), AwsError> = with_role_retry(|| {
            attempts += 1;
            async { Err(err("InvalidDefinition", "bad")) }
        })
        .await;
        assert_eq!(result.expect_err("fails").class, ErrorClass::Terminal);
        assert_eq!(attempts, 1);
    }
}
