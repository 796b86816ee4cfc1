//! SNS topics: the managed attributes (only those the spec names), e-mail subscriptions, tags.
//!
//! An e-mail subscription stays `PendingConfirmation` until its recipient confirms it; it counts as
//! subscribed (the controller cannot confirm for them). AWS does not allow unsubscribing a pending
//! subscription (it expires by itself after 3 days), so an unwanted pending one is left alone: it keeps
//! appearing as drift until it expires, which the engine reports rather than hot-looping on.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_sns::operation::get_topic_attributes::GetTopicAttributesOutput;
use aws_sdk_sns::types::{Subscription, Tag};

use crate::aws::{AwsError, Optional, ResultExt};
use crate::desired::{Tags, TopicSpec};

use super::{sync_tags, user_tags, Changes, Ctx, Driver, DriverError, Observed, Outputs, TagApi};

pub struct Topics;

const EMAIL: &str = "email";
const PENDING: &str = "PendingConfirmation";

fn aws_tags(ctx: &Ctx<'_>, tags: &Tags) -> Result<Vec<Tag>, AwsError> {
    tags.iter()
        .map(|(k, v)| {
            Tag::builder().key(k).value(v).build().map_err(|e| {
                AwsError::terminal(ctx.id, "sns:TagResource", format!("invalid request: {e}"))
            })
        })
        .collect()
}

impl Topics {
    async fn attributes(
        ctx: &Ctx<'_>,
        arn: &str,
    ) -> Result<Option<GetTopicAttributesOutput>, AwsError> {
        ctx.aws
            .sns
            .get_topic_attributes()
            .topic_arn(arn)
            .send()
            .await
            .context(ctx.id, "sns:GetTopicAttributes")
            .optional()
    }

    async fn tags(ctx: &Ctx<'_>, arn: &str) -> Result<Tags, AwsError> {
        super::batch::tags_or(ctx, arn, || async {
            let tags = ctx
                .aws
                .sns
                .list_tags_for_resource()
                .resource_arn(arn)
                .send()
                .await
                .context(ctx.id, "sns:ListTagsForResource")?;
            Ok(user_tags(
                tags.tags()
                    .iter()
                    .map(|t| (t.key().to_string(), t.value().to_string())),
            ))
        })
        .await
    }

    /// Topic ARNs are deterministic: no call needed.
    fn arn(ctx: &Ctx<'_>) -> String {
        ctx.arns().topic(ctx.name())
    }

    fn outputs(ctx: &Ctx<'_>) -> Outputs {
        Outputs {
            arn: Some(Self::arn(ctx)),
            ..Default::default()
        }
    }

    /// Every e-mail subscription of the topic (pending ones included; deleted ones not).
    async fn email_subscriptions(ctx: &Ctx<'_>) -> Result<Vec<Subscription>, AwsError> {
        let all = ctx
            .aws
            .sns
            .list_subscriptions_by_topic()
            .topic_arn(Self::arn(ctx))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .context(ctx.id, "sns:ListSubscriptionsByTopic")?;
        Ok(all
            .into_iter()
            .filter(|s| s.protocol() == Some(EMAIL) && s.subscription_arn() != Some("Deleted"))
            .collect())
    }

    async fn subscribe(ctx: &Ctx<'_>, email: &str) -> Result<(), AwsError> {
        ctx.aws
            .sns
            .subscribe()
            .topic_arn(Self::arn(ctx))
            .protocol(EMAIL)
            .endpoint(email)
            .send()
            .await
            .context(ctx.id, "sns:Subscribe")?;
        Ok(())
    }
}

impl TagApi for Topics {
    async fn tag(&self, ctx: &Ctx<'_>, arn: &str, tags: Tags) -> Result<(), AwsError> {
        ctx.aws
            .sns
            .tag_resource()
            .resource_arn(arn)
            .set_tags(Some(aws_tags(ctx, &tags)?))
            .send()
            .await
            .context(ctx.id, "sns:TagResource")?;
        Ok(())
    }

    async fn untag(&self, ctx: &Ctx<'_>, arn: &str, keys: Vec<String>) -> Result<(), AwsError> {
        ctx.aws
            .sns
            .untag_resource()
            .resource_arn(arn)
            .set_tag_keys(Some(keys))
            .send()
            .await
            .context(ctx.id, "sns:UntagResource")?;
        Ok(())
    }
}

impl Driver for Topics {
    type Spec = TopicSpec;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        desired: &TopicSpec,
    ) -> Result<Option<Observed<TopicSpec>>, AwsError> {
        let arn = Self::arn(ctx);
        let Some(found) = Self::attributes(ctx, &arn).await? else {
            return Ok(None);
        };
        // Only the attributes the spec manages; one AWS does not return is left out, so it diffs.
        let managed: BTreeMap<String, String> = found
            .attributes
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| desired.attributes.contains_key(k))
            .collect();
        let tags = Self::tags(ctx, &arn);
        let (subscriptions, tags) = tokio::try_join!(Self::email_subscriptions(ctx), tags)?;
        let emails: BTreeSet<String> = subscriptions
            .iter()
            .filter_map(|s| s.endpoint().map(str::to_string))
            .collect();
        Ok(Some(Observed {
            parent_owner: None,
            namesakes: 0,
            spec: TopicSpec {
                attributes: managed,
                email_subscriptions: emails.into_iter().collect(),
            },
            tags,
            outputs: Self::outputs(ctx),
        }))
    }

    /// The topic and its tags: its subscriptions go with it.
    async fn observe_owner(
        &self,
        ctx: &Ctx<'_>,
        desired: &TopicSpec,
    ) -> Result<Option<Observed<TopicSpec>>, AwsError> {
        let arn = Self::arn(ctx);
        if Self::attributes(ctx, &arn).await?.is_none() {
            return Ok(None);
        }
        let tags = Self::tags(ctx, &arn).await?;
        Ok(Some(Observed::new(
            desired.clone(),
            tags,
            Self::outputs(ctx),
        )))
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        desired: &TopicSpec,
        tags: &Tags,
    ) -> Result<Outputs, DriverError> {
        ctx.aws
            .sns
            .create_topic()
            .name(ctx.name())
            .set_attributes(
                (!desired.attributes.is_empty())
                    .then(|| desired.attributes.clone().into_iter().collect()),
            )
            .set_tags(
                (!tags.is_empty())
                    .then(|| aws_tags(ctx, tags))
                    .transpose()?,
            )
            .send()
            .await
            .context(ctx.id, "sns:CreateTopic")?;
        for email in &desired.email_subscriptions {
            Self::subscribe(ctx, email).await?;
        }
        Ok(Self::outputs(ctx))
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        desired: &TopicSpec,
        tags: &Tags,
        observed: &Observed<TopicSpec>,
        changes: &Changes,
    ) -> Result<Outputs, DriverError> {
        // SNS sets one attribute per call.
        for (key, value) in &desired.attributes {
            if observed.spec.attributes.get(key) != Some(value) {
                ctx.aws
                    .sns
                    .set_topic_attributes()
                    .topic_arn(Self::arn(ctx))
                    .attribute_name(key)
                    .attribute_value(value)
                    .send()
                    .await
                    .context(ctx.id, "sns:SetTopicAttributes")?;
            }
        }
        if changes.touches("emailSubscriptions") {
            let wanted: BTreeSet<&str> = desired
                .email_subscriptions
                .iter()
                .map(String::as_str)
                .collect();
            let current = Self::email_subscriptions(ctx).await?;
            let have: BTreeSet<&str> = current.iter().filter_map(|s| s.endpoint()).collect();
            for email in wanted.difference(&have) {
                Self::subscribe(ctx, email).await?;
            }
            for subscription in &current {
                let (Some(endpoint), Some(arn)) =
                    (subscription.endpoint(), subscription.subscription_arn())
                else {
                    continue;
                };
                // A pending subscription cannot be unsubscribed (no ARN yet): it expires by itself.
                if wanted.contains(endpoint) || arn == PENDING || !arn.starts_with("arn:") {
                    continue;
                }
                ctx.aws
                    .sns
                    .unsubscribe()
                    .subscription_arn(arn)
                    .send()
                    .await
                    .context(ctx.id, "sns:Unsubscribe")
                    .optional()?;
            }
        }
        if changes.touches("tags") {
            sync_tags(self, ctx, &Self::arn(ctx), tags, &observed.tags).await?;
        }
        Ok(Self::outputs(ctx))
    }

    async fn delete(&self, ctx: &Ctx<'_>, _observed: &Observed<TopicSpec>) -> Result<(), AwsError> {
        ctx.aws
            .sns
            .delete_topic()
            .topic_arn(Self::arn(ctx))
            .send()
            .await
            .context(ctx.id, "sns:DeleteTopic")
            .optional()?;
        Ok(())
    }
}
