//! SQS queues: the managed attributes (only those the spec names), tags.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_sqs::types::QueueAttributeName;

use crate::aws::{AwsError, ErrorClass, Optional, ResultExt};
use crate::desired::{QueueSpec, Tags};

use super::{sync_tags, user_tags, Changes, Ctx, Driver, DriverError, Observed, Outputs, TagApi};

pub struct Queues;

fn attributes(map: &BTreeMap<String, String>) -> HashMap<QueueAttributeName, String> {
    map.iter()
        .map(|(k, v)| (QueueAttributeName::from(k.as_str()), v.clone()))
        .collect()
}

impl Queues {
    async fn url(ctx: &Ctx<'_>) -> Result<Option<String>, AwsError> {
        Ok(ctx
            .aws
            .sqs
            .get_queue_url()
            .queue_name(ctx.name())
            .send()
            .await
            .context(ctx.id, "sqs:GetQueueUrl")
            .optional()?
            .and_then(|out| out.queue_url))
    }

    async fn tags(ctx: &Ctx<'_>, url: &str) -> Result<Tags, AwsError> {
        Ok(user_tags(
            ctx.aws
                .sqs
                .list_queue_tags()
                .queue_url(url)
                .send()
                .await
                .context(ctx.id, "sqs:ListQueueTags")?
                .tags
                .unwrap_or_default(),
        ))
    }
}

impl TagApi for Queues {
    async fn tag(&self, ctx: &Ctx<'_>, url: &str, tags: Tags) -> Result<(), AwsError> {
        ctx.aws
            .sqs
            .tag_queue()
            .queue_url(url)
            .set_tags(Some(tags.into_iter().collect()))
            .send()
            .await
            .context(ctx.id, "sqs:TagQueue")?;
        Ok(())
    }

    async fn untag(&self, ctx: &Ctx<'_>, url: &str, keys: Vec<String>) -> Result<(), AwsError> {
        ctx.aws
            .sqs
            .untag_queue()
            .queue_url(url)
            .set_tag_keys(Some(keys))
            .send()
            .await
            .context(ctx.id, "sqs:UntagQueue")?;
        Ok(())
    }
}

impl Driver for Queues {
    type Spec = QueueSpec;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        desired: &QueueSpec,
    ) -> Result<Option<Observed<QueueSpec>>, AwsError> {
        let Some(url) = Self::url(ctx).await? else {
            return Ok(None);
        };
        // Deleted between the two calls: absent.
        let Some(found) = ctx
            .aws
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .context(ctx.id, "sqs:GetQueueAttributes")
            .optional()?
        else {
            return Ok(None);
        };
        let attributes = found.attributes.unwrap_or_default();
        let arn = attributes.get(&QueueAttributeName::QueueArn).cloned();
        // Only the attributes the spec manages; one AWS does not return is left out, so it diffs.
        let managed = attributes
            .into_iter()
            .map(|(k, v)| (k.as_str().to_string(), v))
            .filter(|(k, _)| desired.attributes.contains_key(k))
            .collect();
        // A queue without an ARN in its answer is not in the batch: it reads its own tags.
        let tags = super::batch::tags_or(ctx, arn.as_deref().unwrap_or_default(), || {
            Self::tags(ctx, &url)
        })
        .await?;
        Ok(Some(Observed {
            parent_owner: None,
            namesakes: 0,
            spec: QueueSpec {
                attributes: managed,
            },
            tags,
            outputs: Outputs {
                arn,
                url: Some(url),
                ..Default::default()
            },
        }))
    }

    /// The queue's URL and tags: no attribute read.
    async fn observe_owner(
        &self,
        ctx: &Ctx<'_>,
        desired: &QueueSpec,
    ) -> Result<Option<Observed<QueueSpec>>, AwsError> {
        let Some(url) = Self::url(ctx).await? else {
            return Ok(None);
        };
        let tags = Self::tags(ctx, &url).await?;
        let outputs = Outputs {
            url: Some(url),
            ..Default::default()
        };
        Ok(Some(Observed::new(desired.clone(), tags, outputs)))
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        desired: &QueueSpec,
        tags: &Tags,
    ) -> Result<Outputs, DriverError> {
        let created = ctx
            .aws
            .sqs
            .create_queue()
            .queue_name(ctx.name())
            .set_attributes(
                (!desired.attributes.is_empty()).then(|| attributes(&desired.attributes)),
            )
            .set_tags((!tags.is_empty()).then(|| tags.clone().into_iter().collect()))
            .send()
            .await
            .context(ctx.id, "sqs:CreateQueue")
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
        let arn = Some(ctx.arns().queue(ctx.name()));
        Ok(Outputs {
            arn,
            url: created.queue_url,
            ..Default::default()
        })
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        desired: &QueueSpec,
        tags: &Tags,
        observed: &Observed<QueueSpec>,
        changes: &Changes,
    ) -> Result<Outputs, DriverError> {
        let url = observed.outputs.url.clone().unwrap_or_default();
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
                .context(ctx.id, "sqs:SetQueueAttributes")?;
        }
        if changes.touches("tags") {
            sync_tags(self, ctx, &url, tags, &observed.tags).await?;
        }
        Ok(observed.outputs.clone())
    }

    async fn delete(&self, ctx: &Ctx<'_>, observed: &Observed<QueueSpec>) -> Result<(), AwsError> {
        let url = match &observed.outputs.url {
            Some(url) => url.clone(),
            None => match Self::url(ctx).await? {
                Some(url) => url,
                None => return Ok(()),
            },
        };
        ctx.aws
            .sqs
            .delete_queue()
            .queue_url(url)
            .send()
            .await
            .context(ctx.id, "sqs:DeleteQueue")
            .optional()?;
        Ok(())
    }
}
