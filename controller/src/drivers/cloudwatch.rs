//! CloudWatch metric alarms. `PutMetricAlarm` both creates and rewrites an alarm (every field at once);
//! tags are only taken on creation, then changed with `TagResource`/`UntagResource`.

use std::collections::BTreeMap;

use aws_sdk_cloudwatch::types::{ComparisonOperator, Dimension, Statistic, Tag};

use crate::aws::{AwsError, Optional, ResultExt};
use crate::desired::{AlarmSpec, Tags};

use super::{sync_tags, user_tags, Changes, Ctx, Driver, DriverError, Observed, Outputs, TagApi};

pub struct Alarms;

fn cw_tags(tags: &Tags) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

impl Alarms {
    fn arn(ctx: &Ctx<'_>) -> String {
        ctx.arns().alarm(ctx.name())
    }

    /// Writes every field of the alarm (and the tags, when given: creation only).
    async fn put(ctx: &Ctx<'_>, desired: &AlarmSpec, tags: Option<&Tags>) -> Result<(), AwsError> {
        let dimensions = desired
            .dimensions
            .iter()
            .map(|(k, v)| Dimension::builder().name(k).value(v).build())
            .collect();
        ctx.aws
            .cloudwatch
            .put_metric_alarm()
            .alarm_name(ctx.name())
            .alarm_description(&desired.description)
            .namespace(&desired.namespace)
            .metric_name(&desired.metric_name)
            .set_dimensions(Some(dimensions))
            .statistic(Statistic::from(desired.statistic.as_str()))
            .period(desired.period_seconds)
            .evaluation_periods(desired.evaluation_periods)
            .threshold(desired.threshold)
            .comparison_operator(ComparisonOperator::from(
                desired.comparison_operator.as_str(),
            ))
            .treat_missing_data(&desired.treat_missing_data)
            .set_alarm_actions(Some(desired.alarm_actions.clone()))
            .set_tags(tags.map(cw_tags))
            .send()
            .await
            .context(ctx.id, "cloudwatch:PutMetricAlarm")?;
        Ok(())
    }
}

impl TagApi for Alarms {
    async fn tag(&self, ctx: &Ctx<'_>, arn: &str, tags: Tags) -> Result<(), AwsError> {
        ctx.aws
            .cloudwatch
            .tag_resource()
            .resource_arn(arn)
            .set_tags(Some(cw_tags(&tags)))
            .send()
            .await
            .context(ctx.id, "cloudwatch:TagResource")?;
        Ok(())
    }

    async fn untag(&self, ctx: &Ctx<'_>, arn: &str, keys: Vec<String>) -> Result<(), AwsError> {
        ctx.aws
            .cloudwatch
            .untag_resource()
            .resource_arn(arn)
            .set_tag_keys(Some(keys))
            .send()
            .await
            .context(ctx.id, "cloudwatch:UntagResource")?;
        Ok(())
    }
}

impl Driver for Alarms {
    type Spec = AlarmSpec;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        _desired: &AlarmSpec,
    ) -> Result<Option<Observed<AlarmSpec>>, AwsError> {
        // The stack's alarms in one DescribeAlarms per walk (see `batch`), else this one alone.
        let alarm = match super::batch::alarm(ctx).await {
            Some(alarm) => alarm,
            None => ctx
                .aws
                .cloudwatch
                .describe_alarms()
                .alarm_names(ctx.name())
                .send()
                .await
                .context(ctx.id, "cloudwatch:DescribeAlarms")?
                .metric_alarms
                .unwrap_or_default()
                .into_iter()
                .find(|a| a.alarm_name() == Some(ctx.name())),
        };
        let Some(alarm) = alarm else {
            return Ok(None);
        };
        let arn = alarm
            .alarm_arn()
            .map(str::to_string)
            .unwrap_or_else(|| Self::arn(ctx));
        let tags = super::batch::tags_or(ctx, &arn, || async {
            let tags = ctx
                .aws
                .cloudwatch
                .list_tags_for_resource()
                .resource_arn(&arn)
                .send()
                .await
                .context(ctx.id, "cloudwatch:ListTagsForResource")?;
            Ok(user_tags(tags.tags().iter().filter_map(|t| {
                Some((
                    t.key()?.to_string(),
                    t.value().unwrap_or_default().to_string(),
                ))
            })))
        })
        .await?;
        let dimensions: BTreeMap<String, String> = alarm
            .dimensions()
            .iter()
            .filter_map(|d| {
                Some((
                    d.name()?.to_string(),
                    d.value().unwrap_or_default().to_string(),
                ))
            })
            .collect();
        let mut alarm_actions = alarm.alarm_actions().to_vec();
        alarm_actions.sort();
        let spec = AlarmSpec {
            description: alarm.alarm_description().unwrap_or_default().to_string(),
            namespace: alarm.namespace().unwrap_or_default().to_string(),
            metric_name: alarm.metric_name().unwrap_or_default().to_string(),
            dimensions,
            statistic: alarm
                .statistic()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            period_seconds: alarm.period().unwrap_or(0),
            evaluation_periods: alarm.evaluation_periods().unwrap_or(0),
            threshold: alarm.threshold().unwrap_or(0.0),
            comparison_operator: alarm
                .comparison_operator()
                .map(|c| c.as_str().to_string())
                .unwrap_or_default(),
            // AWS's default when the alarm was written without it.
            treat_missing_data: alarm.treat_missing_data().unwrap_or("missing").to_string(),
            alarm_actions,
        };
        Ok(Some(Observed {
            parent_owner: None,
            namesakes: 0,
            spec,
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
        desired: &AlarmSpec,
        tags: &Tags,
    ) -> Result<Outputs, DriverError> {
        Self::put(ctx, desired, Some(tags)).await?;
        Ok(Outputs {
            arn: Some(Self::arn(ctx)),
            ..Default::default()
        })
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        desired: &AlarmSpec,
        tags: &Tags,
        observed: &Observed<AlarmSpec>,
        changes: &Changes,
    ) -> Result<Outputs, DriverError> {
        // Any alarm field at all: PutMetricAlarm rewrites the whole alarm (there is no partial update).
        if changes.top_fields().iter().any(|f| *f != "tags") {
            Self::put(ctx, desired, None).await?;
        }
        let arn = observed
            .outputs
            .arn
            .clone()
            .unwrap_or_else(|| Self::arn(ctx));
        if changes.touches("tags") {
            sync_tags(self, ctx, &arn, tags, &observed.tags).await?;
        }
        Ok(Outputs {
            arn: Some(arn),
            ..Default::default()
        })
    }

    async fn delete(&self, ctx: &Ctx<'_>, _observed: &Observed<AlarmSpec>) -> Result<(), AwsError> {
        ctx.aws
            .cloudwatch
            .delete_alarms()
            .alarm_names(ctx.name())
            .send()
            .await
            .context(ctx.id, "cloudwatch:DeleteAlarms")
            .optional()?;
        Ok(())
    }
}
