//! CloudWatch Logs log groups: retention and tags.

use crate::aws::{AwsError, ResultExt};
use crate::desired::{LogGroupSpec, Tags};

use super::{tag_delta, user_tags, Changes, Ctx, Driver, Observed, Outputs};

pub struct LogGroups;

fn resource(name: &str) -> String {
    format!("LogGroup {name}")
}

impl LogGroups {
    fn arn(ctx: &Ctx<'_>, name: &str) -> String {
        format!(
            "arn:{}:logs:{}:{}:log-group:{name}",
            ctx.aws.partition, ctx.aws.region, ctx.aws.account_id
        )
    }
}

impl Driver for LogGroups {
    type Spec = LogGroupSpec;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        _desired: &LogGroupSpec,
    ) -> Result<Option<Observed<LogGroupSpec>>, AwsError> {
        let page = ctx
            .aws
            .logs
            .describe_log_groups()
            .log_group_name_prefix(name)
            .send()
            .await
            .context(resource(name), "logs:DescribeLogGroups")?;
        let Some(group) = page
            .log_groups()
            .iter()
            .find(|g| g.log_group_name() == Some(name))
        else {
            return Ok(None);
        };
        let arn = Self::arn(ctx, name);
        let tags = ctx
            .aws
            .logs
            .list_tags_for_resource()
            .resource_arn(&arn)
            .send()
            .await
            .context(resource(name), "logs:ListTagsForResource")?;
        Ok(Some(Observed {
            spec: LogGroupSpec {
                retention_days: group.retention_in_days().unwrap_or(0),
            },
            tags: user_tags(tags.tags().cloned().unwrap_or_default()),
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
        desired: &LogGroupSpec,
        tags: &Tags,
    ) -> Result<Outputs, AwsError> {
        ctx.aws
            .logs
            .create_log_group()
            .log_group_name(name)
            .set_tags(Some(tags.clone().into_iter().collect()))
            .send()
            .await
            .context(resource(name), "logs:CreateLogGroup")?;
        ctx.aws
            .logs
            .put_retention_policy()
            .log_group_name(name)
            .retention_in_days(desired.retention_days)
            .send()
            .await
            .context(resource(name), "logs:PutRetentionPolicy")?;
        Ok(Outputs {
            arn: Some(Self::arn(ctx, name)),
            ..Default::default()
        })
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &LogGroupSpec,
        tags: &Tags,
        observed: &Observed<LogGroupSpec>,
        changes: &Changes,
    ) -> Result<Outputs, AwsError> {
        if changes.touches("retentionDays") {
            ctx.aws
                .logs
                .put_retention_policy()
                .log_group_name(name)
                .retention_in_days(desired.retention_days)
                .send()
                .await
                .context(resource(name), "logs:PutRetentionPolicy")?;
        }
        if changes.touches("tags") {
            let arn = Self::arn(ctx, name);
            let (set, remove) = tag_delta(tags, &observed.tags);
            if !set.is_empty() {
                ctx.aws
                    .logs
                    .tag_resource()
                    .resource_arn(&arn)
                    .set_tags(Some(set.into_iter().collect()))
                    .send()
                    .await
                    .context(resource(name), "logs:TagResource")?;
            }
            if !remove.is_empty() {
                ctx.aws
                    .logs
                    .untag_resource()
                    .resource_arn(&arn)
                    .set_tag_keys(Some(remove))
                    .send()
                    .await
                    .context(resource(name), "logs:UntagResource")?;
            }
        }
        Ok(observed.outputs.clone())
    }

    async fn delete(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        _observed: &Observed<LogGroupSpec>,
    ) -> Result<(), AwsError> {
        match ctx
            .aws
            .logs
            .delete_log_group()
            .log_group_name(name)
            .send()
            .await
            .context(resource(name), "logs:DeleteLogGroup")
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }
}
