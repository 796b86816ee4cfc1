//! CloudWatch Logs log groups: retention and tags.

use crate::aws::{AwsError, Optional, ResultExt};
use crate::desired::{LogGroupSpec, Tags};

use super::{sync_tags, user_tags, Changes, Ctx, Driver, DriverError, Observed, Outputs, TagApi};

pub struct LogGroups;

impl LogGroups {
    fn arn(ctx: &Ctx<'_>) -> String {
        ctx.arns().log_group(ctx.name())
    }

    fn outputs(ctx: &Ctx<'_>) -> Outputs {
        Outputs {
            arn: Some(Self::arn(ctx)),
            ..Default::default()
        }
    }

    async fn put_retention(ctx: &Ctx<'_>, desired: &LogGroupSpec) -> Result<(), AwsError> {
        ctx.aws
            .logs
            .put_retention_policy()
            .log_group_name(ctx.name())
            .retention_in_days(desired.retention_days)
            .send()
            .await
            .context(ctx.id, "logs:PutRetentionPolicy")?;
        Ok(())
    }
}

impl TagApi for LogGroups {
    async fn tag(&self, ctx: &Ctx<'_>, arn: &str, tags: Tags) -> Result<(), AwsError> {
        ctx.aws
            .logs
            .tag_resource()
            .resource_arn(arn)
            .set_tags(Some(tags.into_iter().collect()))
            .send()
            .await
            .context(ctx.id, "logs:TagResource")?;
        Ok(())
    }

    async fn untag(&self, ctx: &Ctx<'_>, arn: &str, keys: Vec<String>) -> Result<(), AwsError> {
        ctx.aws
            .logs
            .untag_resource()
            .resource_arn(arn)
            .set_tag_keys(Some(keys))
            .send()
            .await
            .context(ctx.id, "logs:UntagResource")?;
        Ok(())
    }
}

impl Driver for LogGroups {
    type Spec = LogGroupSpec;

    /// `CreateLogGroup` answers `ResourceAlreadyExistsException`.
    const CREATE_REFUSES_EXISTING: bool = true;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        _desired: &LogGroupSpec,
    ) -> Result<Option<Observed<LogGroupSpec>>, AwsError> {
        // The stack's function log groups in one DescribeLogGroups per walk (see `batch`), else this one.
        let group = match super::batch::log_group(ctx).await {
            Some(group) => group,
            None => ctx
                .aws
                .logs
                .describe_log_groups()
                .log_group_name_prefix(ctx.name())
                .send()
                .await
                .context(ctx.id, "logs:DescribeLogGroups")?
                .log_groups
                .unwrap_or_default()
                .into_iter()
                .find(|g| g.log_group_name() == Some(ctx.name())),
        };
        let Some(group) = group else {
            return Ok(None);
        };
        let arn = Self::arn(ctx);
        let tags = super::batch::tags_or(ctx, &arn, || async {
            Ok(user_tags(
                ctx.aws
                    .logs
                    .list_tags_for_resource()
                    .resource_arn(&arn)
                    .send()
                    .await
                    .context(ctx.id, "logs:ListTagsForResource")?
                    .tags
                    .unwrap_or_default(),
            ))
        })
        .await?;
        Ok(Some(Observed {
            parent_owner: None,
            namesakes: 0,
            spec: LogGroupSpec {
                retention_days: group.retention_in_days().unwrap_or(0),
            },
            tags,
            outputs: Self::outputs(ctx),
        }))
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        desired: &LogGroupSpec,
        tags: &Tags,
    ) -> Result<Outputs, DriverError> {
        ctx.aws
            .logs
            .create_log_group()
            .log_group_name(ctx.name())
            .set_tags(Some(tags.clone().into_iter().collect()))
            .send()
            .await
            .context(ctx.id, "logs:CreateLogGroup")?;
        Self::put_retention(ctx, desired).await?;
        Ok(Self::outputs(ctx))
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        desired: &LogGroupSpec,
        tags: &Tags,
        observed: &Observed<LogGroupSpec>,
        changes: &Changes,
    ) -> Result<Outputs, DriverError> {
        if changes.touches("retentionDays") {
            Self::put_retention(ctx, desired).await?;
        }
        if changes.touches("tags") {
            sync_tags(self, ctx, &Self::arn(ctx), tags, &observed.tags).await?;
        }
        Ok(Self::outputs(ctx))
    }

    async fn delete(
        &self,
        ctx: &Ctx<'_>,
        _observed: &Observed<LogGroupSpec>,
    ) -> Result<(), AwsError> {
        ctx.aws
            .logs
            .delete_log_group()
            .log_group_name(ctx.name())
            .send()
            .await
            .context(ctx.id, "logs:DeleteLogGroup")
            .optional()?;
        Ok(())
    }
}
