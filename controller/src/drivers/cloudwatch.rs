//! CloudWatch metric alarms. `PutMetricAlarm` both creates and rewrites an alarm (every field at once);
//! tags are only taken on creation, then changed with `TagResource`/`UntagResource`.

use std::collections::BTreeMap;

use aws_sdk_cloudwatch::types::{ComparisonOperator, Dimension, Statistic, Tag};

use crate::aws::{AwsError, ResultExt};
use crate::desired::{AlarmSpec, Tags};

use super::{tag_delta, user_tags, Changes, Ctx, Driver, Observed, Outputs};

pub struct Alarms;

fn resource(name: &str) -> String {
    format!("Alarm {name}")
}

fn cw_tags(tags: &Tags) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

impl Alarms {
    fn arn(ctx: &Ctx<'_>, name: &str) -> String {
        format!(
            "arn:{}:cloudwatch:{}:{}:alarm:{name}",
            ctx.aws.partition, ctx.aws.region, ctx.aws.account_id
        )
    }

    /// Writes every field of the alarm (and the tags, when given: creation only).
    async fn put(
        ctx: &Ctx<'_>,
        name: &str,
        desired: &AlarmSpec,
        tags: Option<&Tags>,
    ) -> Result<(), AwsError> {
        let dimensions = desired
            .dimensions
            .iter()
            .map(|(k, v)| Dimension::builder().name(k).value(v).build())
            .collect();
        ctx.aws
            .cloudwatch
            .put_metric_alarm()
            .alarm_name(name)
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
            .context(resource(name), "cloudwatch:PutMetricAlarm")?;
        Ok(())
    }
}

impl Driver for Alarms {
    type Spec = AlarmSpec;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        _desired: &AlarmSpec,
    ) -> Result<Option<Observed<AlarmSpec>>, AwsError> {
        let page = ctx
            .aws
            .cloudwatch
            .describe_alarms()
            .alarm_names(name)
            .send()
            .await
            .context(resource(name), "cloudwatch:DescribeAlarms")?;
        let Some(alarm) = page
            .metric_alarms()
            .iter()
            .find(|a| a.alarm_name() == Some(name))
        else {
            return Ok(None);
        };
        let arn = alarm
            .alarm_arn()
            .map(str::to_string)
            .unwrap_or_else(|| Self::arn(ctx, name));
        let tags = ctx
            .aws
            .cloudwatch
            .list_tags_for_resource()
            .resource_arn(&arn)
            .send()
            .await
            .context(resource(name), "cloudwatch:ListTagsForResource")?;
        let tags = user_tags(tags.tags().iter().filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        }));
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
        name: &str,
        desired: &AlarmSpec,
        tags: &Tags,
    ) -> Result<Outputs, AwsError> {
        Self::put(ctx, name, desired, Some(tags)).await?;
        Ok(Outputs {
            arn: Some(Self::arn(ctx, name)),
            ..Default::default()
        })
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &AlarmSpec,
        tags: &Tags,
        observed: &Observed<AlarmSpec>,
        changes: &Changes,
    ) -> Result<Outputs, AwsError> {
        // Any alarm field at all: PutMetricAlarm rewrites the whole alarm (there is no partial update).
        if changes.top_fields().iter().any(|f| *f != "tags") {
            Self::put(ctx, name, desired, None).await?;
        }
        let arn = observed
            .outputs
            .arn
            .clone()
            .unwrap_or_else(|| Self::arn(ctx, name));
        if changes.touches("tags") {
            let (set, remove) = tag_delta(tags, &observed.tags);
            if !set.is_empty() {
                ctx.aws
                    .cloudwatch
                    .tag_resource()
                    .resource_arn(&arn)
                    .set_tags(Some(cw_tags(&set)))
                    .send()
                    .await
                    .context(resource(name), "cloudwatch:TagResource")?;
            }
            if !remove.is_empty() {
                ctx.aws
                    .cloudwatch
                    .untag_resource()
                    .resource_arn(&arn)
                    .set_tag_keys(Some(remove))
                    .send()
                    .await
                    .context(resource(name), "cloudwatch:UntagResource")?;
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
        _observed: &Observed<AlarmSpec>,
    ) -> Result<(), AwsError> {
        match ctx
            .aws
            .cloudwatch
            .delete_alarms()
            .alarm_names(name)
            .send()
            .await
            .context(resource(name), "cloudwatch:DeleteAlarms")
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }
}
