//! SQS queues: the managed attributes, tags.

use serde_json::json;
use tap_controller::desired::Kind;
use tap_controller::drivers::sqs::Queues;
use tap_tests::stack::TestStack;

use super::diff_of;

#[tokio::test]
async fn queue_lifecycle_and_drift() -> anyhow::Result<()> {
    let t = TestStack::example().await?;
    let queue = t.subject(Queues, Kind::Queue, "dlq")?;
    let name = queue.name();
    queue.assert_absent().await?;
    let outputs = queue.create().await?;
    assert!(
        outputs
            .arn
            .as_deref()
            .is_some_and(|a| a.ends_with(&format!(":{name}"))),
        "{outputs:?}"
    );
    assert!(
        outputs
            .url
            .as_deref()
            .is_some_and(|u| u.ends_with(&format!("/{name}"))),
        "{outputs:?}"
    );
    let observed = queue.assert_converged().await?;
    assert_eq!(observed.outputs, outputs);

    // Out of band: retention shortened, a tag changed.
    let url = outputs.url.clone().unwrap_or_default();
    t.aws
        .sqs
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::MessageRetentionPeriod,
            "345600",
        )
        .send()
        .await?;
    t.aws
        .sqs
        .tag_queue()
        .queue_url(&url)
        .tags("team", "someone-else")
        .send()
        .await?;
    let (observed, changes) = queue
        .assert_drift(&["attributes.MessageRetentionPeriod", "tags.team"])
        .await?;
    let retention = diff_of(&changes, "attributes.MessageRetentionPeriod");
    assert_eq!(
        (&retention.expected, &retention.actual),
        (&json!("1209600"), &json!("345600"))
    );
    queue
        .correct(&observed, &changes, &["SetQueueAttributes", "TagQueue"])
        .await?;

    // An unmanaged attribute changed out of band is not drift.
    t.aws
        .sqs
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "45",
        )
        .send()
        .await?;
    let observed = queue.assert_converged().await?;
    queue.assert_deleted(&observed).await?;
    Ok(())
}
