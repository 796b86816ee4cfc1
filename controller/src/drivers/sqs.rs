//! SQS queues: the managed attributes (only those the spec names), tags.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_sqs::types::QueueAttributeName;

use crate::aws::{AwsError, ErrorClass, ResultExt};
use crate::desired::{QueueSpec, Tags};

use super::{tag_delta, user_tags, Changes, Ctx, Driver, Observed, Outputs};

pub struct Queues;

fn resource(name: &str) -> String {
    format!("Queue {name}")
}

fn attributes(map: &BTreeMap<String, String>) -> HashMap<QueueAttributeName, String> {
    map.iter()
        .map(|(k, v)| (QueueAttributeName::from(k.as_str()), v.clone()))
        .collect()
}

impl Queues {
    async fn url(ctx: &Ctx<'_>, name: &str) -> Result<Option<String>, AwsError> {
        match ctx
            .aws
            .sqs
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .context(resource(name), "sqs:GetQueueUrl")
        {
            Err(e) if e.is_not_found() => Ok(None),
            other => Ok(other?.queue_url().map(str::to_string)),
        }
    }

    async fn arn(ctx: &Ctx<'_>, name: &str, url: &str) -> Result<Option<String>, AwsError> {
        let out = ctx
            .aws
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .context(resource(name), "sqs:GetQueueAttributes")?;
        Ok(out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned())
    }
}

impl Driver for Queues {
    type Spec = QueueSpec;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &QueueSpec,
    ) -> Result<Option<Observed<QueueSpec>>, AwsError> {
        let Some(url) = Self::url(ctx, name).await? else {
            return Ok(None);
        };
        let attributes = match ctx
            .aws
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .context(resource(name), "sqs:GetQueueAttributes")
        {
            // Deleted between the two calls.
            Err(e) if e.is_not_found() => return Ok(None),
            other => other?.attributes.unwrap_or_default(),
        };
        let arn = attributes.get(&QueueAttributeName::QueueArn).cloned();
        // Only the attributes the spec manages; one AWS does not return is left out, so it diffs.
        let managed = attributes
            .into_iter()
            .map(|(k, v)| (k.as_str().to_string(), v))
            .filter(|(k, _)| desired.attributes.contains_key(k))
            .collect();
        let tags = ctx
            .aws
            .sqs
            .list_queue_tags()
            .queue_url(&url)
            .send()
            .await
            .context(resource(name), "sqs:ListQueueTags")?;
        Ok(Some(Observed {
            spec: QueueSpec {
                attributes: managed,
            },
            tags: user_tags(tags.tags.unwrap_or_default()),
            outputs: Outputs {
                arn,
                url: Some(url),
                ..Default::default()
            },
        }))
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &QueueSpec,
        tags: &Tags,
    ) -> Result<Outputs, AwsError> {
        let created = ctx
            .aws
            .sqs
            .create_queue()
            .queue_name(name)
            .set_attributes(
                (!desired.attributes.is_empty()).then(|| attributes(&desired.attributes)),
            )
            .set_tags((!tags.is_empty()).then(|| tags.clone().into_iter().collect()))
            .send()
            .await
            .context(resource(name), "sqs:CreateQueue")
            .map_err(|mut e| {
                // SQS refuses to reuse a name for 60 s after its queue was deleted: waiting helps.
                if e.code
                    .as_deref()
                    .is_some_and(|c| c.contains("QueueDeletedRecently"))
                {
                    e.class = ErrorClass::Transient;
                }
                e
            })?;
        let url = created.queue_url().map(str::to_string);
        let arn = match &url {
            Some(url) => Self::arn(ctx, name, url).await?,
            None => None,
        };
        Ok(Outputs {
            arn,
            url,
            ..Default::default()
        })
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &QueueSpec,
        tags: &Tags,
        observed: &Observed<QueueSpec>,
        changes: &Changes,
    ) -> Result<Outputs, AwsError> {
        let url = observed.outputs.url.clone().unwrap_or_default();
        if changes.touches("attributes") {
            let changed: BTreeMap<String, String> = desired
                .attributes
                .iter()
                .filter(|(k, v)| observed.spec.attributes.get(*k) != Some(v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !changed.is_empty() {
                ctx.aws
                    .sqs
                    .set_queue_attributes()
                    .queue_url(&url)
                    .set_attributes(Some(attributes(&changed)))
                    .send()
                    .await
                    .context(resource(name), "sqs:SetQueueAttributes")?;
            }
        }
        if changes.touches("tags") {
            let (set, remove) = tag_delta(tags, &observed.tags);
            if !set.is_empty() {
                ctx.aws
                    .sqs
                    .tag_queue()
                    .queue_url(&url)
                    .set_tags(Some(set.into_iter().collect()))
                    .send()
                    .await
                    .context(resource(name), "sqs:TagQueue")?;
            }
            if !remove.is_empty() {
                ctx.aws
                    .sqs
                    .untag_queue()
                    .queue_url(&url)
                    .set_tag_keys(Some(remove))
                    .send()
                    .await
                    .context(resource(name), "sqs:UntagQueue")?;
            }
        }
        Ok(observed.outputs.clone())
    }

    async fn delete(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        observed: &Observed<QueueSpec>,
    ) -> Result<(), AwsError> {
        let url = match &observed.outputs.url {
            Some(url) => url.clone(),
            None => match Self::url(ctx, name).await? {
                Some(url) => url,
                None => return Ok(()),
            },
        };
        match ctx
            .aws
            .sqs
            .delete_queue()
            .queue_url(url)
            .send()
            .await
            .context(resource(name), "sqs:DeleteQueue")
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }
}
