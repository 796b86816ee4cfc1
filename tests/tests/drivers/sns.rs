//! SNS topics: the managed attributes, e-mail subscriptions, tags.

use std::collections::BTreeSet;

use anyhow::Context;
use serde_json::json;
use tap_controller::desired::Kind;
use tap_controller::drivers::sns::Topics;
use tap_tests::lifecycle::written;
use tap_tests::stack::TestStack;

use super::diff_of;

#[tokio::test]
async fn topic_lifecycle_and_drift() -> anyhow::Result<()> {
    let t = TestStack::example().await?;
    let topic = t.subject(Topics, Kind::Topic, "notifications")?;
    let name = topic.name();
    assert_eq!(topic.desired.email_subscriptions, ["ops@example.com"]);
    topic.assert_absent().await?;
    let outputs = topic.create().await?;
    let arn = format!("arn:aws:sns:{}:{}:{name}", t.aws.region, t.aws.account_id);
    assert_eq!(outputs.arn.as_deref(), Some(arn.as_str()));
    topic.assert_converged().await?;

    // Out of band: display name changed, a tag changed, an extra address subscribed.
    let sns = &t.aws.sns;
    sns.set_topic_attributes()
        .topic_arn(&arn)
        .attribute_name("DisplayName")
        .attribute_value("hijacked")
        .send()
        .await?;
    sns.tag_resource()
        .resource_arn(&arn)
        .tags(
            aws_sdk_sns::types::Tag::builder()
                .key("team")
                .value("someone-else")
                .build()?,
        )
        .send()
        .await?;
    let extra = sns
        .subscribe()
        .topic_arn(&arn)
        .protocol("email")
        .endpoint("intruder@example.com")
        .send()
        .await?;
    let (observed, changes) = topic
        .assert_drift(&["attributes.DisplayName", "emailSubscriptions", "tags.team"])
        .await?;
    assert_eq!(
        diff_of(&changes, "emailSubscriptions").actual,
        json!(["intruder@example.com", "ops@example.com"])
    );
    let display = diff_of(&changes, "attributes.DisplayName");
    assert_eq!(
        (&display.expected, &display.actual),
        (&json!("tap dev1 notifications"), &json!("hijacked"))
    );
    t.aws.calls.reset();
    topic
        .update_with(&topic.desired, &topic.tags, &observed, &changes)
        .await?;
    let pending = extra
        .subscription_arn()
        .is_none_or(|a| !a.starts_with("arn:"));
    let mut expected =
        BTreeSet::from(["SetTopicAttributes".to_string(), "TagResource".to_string()]);
    if !pending {
        expected.insert("Unsubscribe".to_string());
    }
    assert_eq!(written(&t.aws), expected, "writes of the topic update");
    eprintln!(
        "{}: an e-mail subscription is {}",
        t.emu.kind.name(),
        if pending {
            "pending"
        } else {
            "confirmed at once"
        }
    );
    if pending {
        // AWS (and an emulator that mimics it) keeps an unconfirmed e-mail subscription pending, and a
        // pending subscription cannot be unsubscribed: it expires by itself. Everything else converged.
        topic.assert_drift(&["emailSubscriptions"]).await?;
    } else {
        topic.assert_converged().await?;
    }

    // A missing subscription is added back.
    let mine = sns
        .list_subscriptions_by_topic()
        .topic_arn(&arn)
        .send()
        .await?;
    let ops = mine
        .subscriptions()
        .iter()
        .find(|s| s.endpoint() == Some("ops@example.com"))
        .and_then(|s| s.subscription_arn())
        .filter(|a| a.starts_with("arn:"));
    if let Some(ops) = ops {
        sns.unsubscribe().subscription_arn(ops).send().await?;
        let observed = topic.get().await?;
        let changes = topic.diff(&topic.desired, &topic.tags, &observed);
        assert!(changes.touches("emailSubscriptions"), "{changes:#?}");
        t.aws.calls.reset();
        topic
            .update_with(&topic.desired, &topic.tags, &observed, &changes)
            .await?;
        assert_eq!(written(&t.aws), BTreeSet::from(["Subscribe".to_string()]));
        let observed = topic.get().await?;
        assert!(observed
            .spec
            .email_subscriptions
            .contains(&"ops@example.com".to_string()));
    }
    if !pending {
        topic.assert_converged().await?;
    }
    let observed = topic.get().await.context("topic")?;
    topic.assert_deleted(&observed).await?;
    Ok(())
}
