//! Step Functions state machines: type, definition, role, logging, tracing and tags.
//!
//! The ARN is deterministic (`arn:<partition>:states:<region>:<account>:stateMachine:<name>`), so every
//! call addresses the machine without a lookup. A role created a moment ago may not be assumable by
//! `states.amazonaws.com` yet (IAM is eventually consistent): create and update retry that case with
//! backoff for up to ~30 s, then give up with a Transient error.

use aws_sdk_sfn::types::{
    CloudWatchLogsLogGroup, LogDestination, LogLevel, LoggingConfiguration, StateMachineStatus,
    StateMachineType, Tag, TracingConfiguration,
};
use serde_json::Value;

use crate::aws::{AwsError, ErrorClass, Optional, ResultExt};
use crate::desired::{StateMachineLogging, StateMachineSpec, Tags};

use super::{
    sync_tags, user_tags, while_role_propagates, Changes, Ctx, Driver, DriverError, Observed,
    Outputs, TagApi, ROLE_PROPAGATION,
};

pub struct StateMachines;

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
    fn arn(ctx: &Ctx<'_>) -> String {
        ctx.arns().state_machine(ctx.name())
    }

    fn outputs(ctx: &Ctx<'_>) -> Outputs {
        Outputs {
            arn: Some(Self::arn(ctx)),
            ..Default::default()
        }
    }
}

impl TagApi for StateMachines {
    async fn tag(&self, ctx: &Ctx<'_>, arn: &str, tags: Tags) -> Result<(), AwsError> {
        ctx.aws
            .sfn
            .tag_resource()
            .resource_arn(arn)
            .set_tags(Some(sfn_tags(&tags)))
            .send()
            .await
            .context(ctx.id, "states:TagResource")?;
        Ok(())
    }

    async fn untag(&self, ctx: &Ctx<'_>, arn: &str, keys: Vec<String>) -> Result<(), AwsError> {
        ctx.aws
            .sfn
            .untag_resource()
            .resource_arn(arn)
            .set_tag_keys(Some(keys))
            .send()
            .await
            .context(ctx.id, "states:UntagResource")?;
        Ok(())
    }
}

impl Driver for StateMachines {
    type Spec = StateMachineSpec;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        desired: &StateMachineSpec,
    ) -> Result<Option<Observed<StateMachineSpec>>, AwsError> {
        let arn = Self::arn(ctx);
        let Some(machine) = ctx
            .aws
            .sfn
            .describe_state_machine()
            .state_machine_arn(&arn)
            .send()
            .await
            .context(ctx.id, "states:DescribeStateMachine")
            .optional()?
        else {
            return Ok(None);
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
        let tags = super::batch::tags_or(ctx, &arn, || async {
            let tags = ctx
                .aws
                .sfn
                .list_tags_for_resource()
                .resource_arn(&arn)
                .send()
                .await
                .context(ctx.id, "states:ListTagsForResource")?;
            Ok(user_tags(tags.tags().iter().filter_map(|t| {
                Some((
                    t.key()?.to_string(),
                    t.value().unwrap_or_default().to_string(),
                ))
            })))
        })
        .await?;
        Ok(Some(Observed {
            parent_owner: None,
            namesakes: 0,
            spec: StateMachineSpec {
                machine_type: machine.r#type().as_str().to_string(),
                definition,
                role_arn: machine.role_arn().to_string(),
                logging,
                tracing_enabled,
            },
            tags,
            outputs: Self::outputs(ctx),
        }))
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        desired: &StateMachineSpec,
        tags: &Tags,
    ) -> Result<Outputs, DriverError> {
        let definition = desired.definition.to_string();
        while_role_propagates(ROLE_PROPAGATION, || async {
            ctx.aws
                .sfn
                .create_state_machine()
                .name(ctx.name())
                .definition(&definition)
                .role_arn(&desired.role_arn)
                .r#type(StateMachineType::from(desired.machine_type.as_str()))
                .logging_configuration(logging_configuration(&desired.logging))
                .tracing_configuration(tracing_configuration(desired.tracing_enabled))
                .set_tags(Some(sfn_tags(tags)))
                .send()
                .await
                .context(ctx.id, "states:CreateStateMachine")
        })
        .await
        .map_err(|mut e| {
            // Deletion is asynchronous: the name is free again shortly.
            if e.code.as_deref() == Some("StateMachineDeleting") {
                e.class = ErrorClass::Transient;
            }
            e
        })?;
        Ok(Self::outputs(ctx))
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        desired: &StateMachineSpec,
        tags: &Tags,
        observed: &Observed<StateMachineSpec>,
        changes: &Changes,
    ) -> Result<Outputs, DriverError> {
        let arn = Self::arn(ctx);
        if changes.touches("machineType") {
            return Err(AwsError::terminal(
                ctx.id,
                "states:UpdateStateMachine",
                format!(
                    "the state machine type is {} but should be {}: a type cannot be changed in place, the state machine must be replaced (delete it, and it is recreated)",
                    observed.spec.machine_type, desired.machine_type
                ),
            )
            .into());
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
            while_role_propagates(ROLE_PROPAGATION, || async {
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
                    .context(ctx.id, "states:UpdateStateMachine")
            })
            .await?;
        }
        if changes.touches("tags") {
            sync_tags(self, ctx, &arn, tags, &observed.tags).await?;
        }
        Ok(Self::outputs(ctx))
    }

    async fn delete(
        &self,
        ctx: &Ctx<'_>,
        _observed: &Observed<StateMachineSpec>,
    ) -> Result<(), AwsError> {
        ctx.aws
            .sfn
            .delete_state_machine()
            .state_machine_arn(Self::arn(ctx))
            .send()
            .await
            .context(ctx.id, "states:DeleteStateMachine")
            .optional()?;
        Ok(())
    }
}
