//! SNS topics: the managed attributes (only those the spec names), e-mail subscriptions, tags.
//!
//! An e-mail subscription stays `PendingConfirmation` until its recipient confirms it; it counts as
//! subscribed (the controller cannot confirm for them). AWS does not allow unsubscribing a pending
//! subscription (it expires by itself after 3 days), so an unwanted pending one is left alone: it keeps
//! appearing as drift until it expires, which the engine reports rather than hot-looping on.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_sns::types::{Subscription, Tag};

use crate::aws::{AwsError, ResultExt};
use crate::desired::{Tags, TopicSpec};

use super::{tag_delta, user_tags, Changes, Ctx, Driver, Observed, Outputs};

pub struct Topics;

fn resource(name: &str) -> String {
    format!("Topic {name}")
}

const EMAIL: &str = "email";
const PENDING: &str = "PendingConfirmation";

fn aws_tags(name: &str, tags: &Tags) -> Result<Vec<Tag>, AwsError> {
    tags.iter()
        .map(|(k, v)| {
            Tag::builder().key(k).value(v).build().map_err(|e| {
                AwsError::terminal(
                    resource(name),
                    "sns:TagResource",
                    format!("invalid request: {e}"),
                )
            })
        })
        .collect()
}

impl Topics {
    /// Topic ARNs are deterministic: no call needed.
    fn arn(ctx: &Ctx<'_>, name: &str) -> String {
        format!(
            "arn:{}:sns:{}:{}:{name}",
            ctx.aws.partition, ctx.aws.region, ctx.aws.account_id
        )
    }

    fn outputs(ctx: &Ctx<'_>, name: &str) -> Outputs {
        Outputs {
            arn: Some(Self::arn(ctx, name)),
            ..Default::default()
        }
    }

    /// Every e-mail subscription of the topic (pending ones included; deleted ones not).
    async fn email_subscriptions(ctx: &Ctx<'_>, name: &str) -> Result<Vec<Subscription>, AwsError> {
        let arn = Self::arn(ctx, name);
        let mut all = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page = ctx
                .aws
                .sns
                .list_subscriptions_by_topic()
                .topic_arn(&arn)
                .set_next_token(next.take())
                .send()
                .await
                .context(resource(name), "sns:ListSubscriptionsByTopic")?;
            all.extend(
                page.subscriptions()
                    .iter()
                    .filter(|s| {
                        s.protocol() == Some(EMAIL) && s.subscription_arn() != Some("Deleted")
                    })
                    .cloned(),
            );
            match page.next_token() {
                Some(token) if !token.is_empty() => next = Some(token.to_string()),
                _ => return Ok(all),
            }
        }
    }

    async fn subscribe(ctx: &Ctx<'_>, name: &str, email: &str) -> Result<(), AwsError> {
        ctx.aws
            .sns
            .subscribe()
            .topic_arn(Self::arn(ctx, name))
            .protocol(EMAIL)
            .endpoint(email)
            .send()
            .await
            .context(resource(name), "sns:Subscribe")?;
        Ok(())
    }

    async fn set_attribute(
        ctx: &Ctx<'_>,
        name: &str,
        key: &str,
        value: &str,
    ) -> Result<(), AwsError> {
        ctx.aws
            .sns
            .set_topic_attributes()
            .topic_arn(Self::arn(ctx, name))
            .attribute_name(key)
            .attribute_value(value)
            .send()
            .await
            .context(resource(name), "sns:SetTopicAttributes")?;
        Ok(())
    }
}

impl Driver for Topics {
    type Spec = TopicSpec;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &TopicSpec,
    ) -> Result<Option<Observed<TopicSpec>>, AwsError> {
        let arn = Self::arn(ctx, name);
        let attributes = match ctx
            .aws
            .sns
            .get_topic_attributes()
            .topic_arn(&arn)
            .send()
            .await
            .context(resource(name), "sns:GetTopicAttributes")
        {
            Err(e) if e.is_not_found() => return Ok(None),
            other => other?.attributes.unwrap_or_default(),
        };
        // Only the attributes the spec manages; one AWS does not return is left out, so it diffs.
        let managed: BTreeMap<String, String> = attributes
            .into_iter()
            .filter(|(k, _)| desired.attributes.contains_key(k))
            .collect();
        let emails: BTreeSet<String> = Self::email_subscriptions(ctx, name)
            .await?
            .iter()
            .filter_map(|s| s.endpoint().map(str::to_string))
            .collect();
        let tags = ctx
            .aws
            .sns
            .list_tags_for_resource()
            .resource_arn(&arn)
            .send()
            .await
            .context(resource(name), "sns:ListTagsForResource")?;
        Ok(Some(Observed {
            spec: TopicSpec {
                attributes: managed,
                email_subscriptions: emails.into_iter().collect(),
            },
            tags: user_tags(
                tags.tags()
                    .iter()
                    .map(|t| (t.key().to_string(), t.value().to_string())),
            ),
            outputs: Self::outputs(ctx, name),
        }))
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &TopicSpec,
        tags: &Tags,
    ) -> Result<Outputs, AwsError> {
        ctx.aws
            .sns
            .create_topic()
            .name(name)
            .set_attributes(
                (!desired.attributes.is_empty())
                    .then(|| desired.attributes.clone().into_iter().collect()),
            )
            .set_tags(
                (!tags.is_empty())
                    .then(|| aws_tags(name, tags))
                    .transpose()?,
            )
            .send()
            .await
            .context(resource(name), "sns:CreateTopic")?;
        for email in &desired.email_subscriptions {
            Self::subscribe(ctx, name, email).await?;
        }
        Ok(Self::outputs(ctx, name))
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &TopicSpec,
        tags: &Tags,
        observed: &Observed<TopicSpec>,
        changes: &Changes,
    ) -> Result<Outputs, AwsError> {
        if changes.touches("attributes") {
            // SNS sets one attribute per call.
            for (key, value) in &desired.attributes {
                if observed.spec.attributes.get(key) != Some(value) {
                    Self::set_attribute(ctx, name, key, value).await?;
                }
            }
        }
        if changes.touches("emailSubscriptions") {
            let wanted: BTreeSet<&str> = desired
                .email_subscriptions
                .iter()
                .map(String::as_str)
                .collect();
            let current = Self::email_subscriptions(ctx, name).await?;
            let have: BTreeSet<&str> = current.iter().filter_map(|s| s.endpoint()).collect();
            for email in wanted.difference(&have) {
                Self::subscribe(ctx, name, email).await?;
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
                match ctx
                    .aws
                    .sns
                    .unsubscribe()
                    .subscription_arn(arn)
                    .send()
                    .await
                    .context(resource(name), "sns:Unsubscribe")
                {
                    Err(e) if e.is_not_found() => {}
                    other => {
                        other?;
                    }
                }
            }
        }
        if changes.touches("tags") {
            let arn = Self::arn(ctx, name);
            let (set, remove) = tag_delta(tags, &observed.tags);
            if !set.is_empty() {
                ctx.aws
                    .sns
                    .tag_resource()
                    .resource_arn(&arn)
                    .set_tags(Some(aws_tags(name, &set)?))
                    .send()
                    .await
                    .context(resource(name), "sns:TagResource")?;
            }
            if !remove.is_empty() {
                ctx.aws
                    .sns
                    .untag_resource()
                    .resource_arn(&arn)
                    .set_tag_keys(Some(remove))
                    .send()
                    .await
                    .context(resource(name), "sns:UntagResource")?;
            }
        }
        Ok(Self::outputs(ctx, name))
    }

    async fn delete(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        _observed: &Observed<TopicSpec>,
    ) -> Result<(), AwsError> {
        match ctx
            .aws
            .sns
            .delete_topic()
            .topic_arn(Self::arn(ctx, name))
            .send()
            .await
            .context(resource(name), "sns:DeleteTopic")
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }
}
