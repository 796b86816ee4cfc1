//! S3 buckets: encryption, public access block, versioning, the notification, tags; deletion empties
//! every version.

use std::collections::BTreeSet;

use anyhow::Context;
use serde_json::json;
use tap_controller::desired::{Kind, Tags};
use tap_controller::drivers::s3::Buckets;
use tap_tests::lifecycle::drifted_tags;
use tap_tests::stack::TestStack;

use super::diff_of;

fn s3_tags(tags: &Tags) -> anyhow::Result<aws_sdk_s3::types::Tagging> {
    let set = tags
        .iter()
        .map(|(k, v)| aws_sdk_s3::types::Tag::builder().key(k).value(v).build())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(aws_sdk_s3::types::Tagging::builder()
        .set_tag_set(Some(set))
        .build()?)
}

#[tokio::test]
async fn bucket_lifecycle_and_drift() -> anyhow::Result<()> {
    let t = TestStack::example().await?;
    let bucket = t.subject(Buckets, Kind::Bucket, "")?;
    let name = bucket.name().to_string();
    bucket.assert_absent().await?;
    let outputs = bucket.create().await?;
    assert_eq!(
        outputs.arn.as_deref(),
        Some(format!("arn:aws:s3:::{name}").as_str())
    );
    assert_eq!(outputs.id.as_deref(), Some(name.as_str()));
    let observed = bucket.assert_converged().await?;
    assert_eq!(observed.outputs, outputs);

    // Out of band: versioning suspended, a tag changed.
    t.aws
        .s3
        .put_bucket_versioning()
        .bucket(&name)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Suspended)
                .build(),
        )
        .send()
        .await?;
    t.aws
        .s3
        .put_bucket_tagging()
        .bucket(&name)
        .tagging(s3_tags(&drifted_tags(&bucket.tags))?)
        .send()
        .await?;
    let (observed, changes) = bucket.assert_drift(&["versioning", "tags.team"]).await?;
    let versioning = diff_of(&changes, "versioning");
    assert_eq!(
        (&versioning.expected, &versioning.actual),
        (&json!(true), &json!(false))
    );
    let team = diff_of(&changes, "tags.team");
    assert_eq!(
        (&team.expected, &team.actual),
        (&json!("payments"), &json!("someone-else"))
    );
    bucket
        .correct(
            &observed,
            &changes,
            &["PutBucketVersioning", "PutBucketTagging"],
        )
        .await?;

    // Out of band: the notification's prefix changed.
    let desired = &bucket.desired;
    let notification = aws_sdk_s3::types::LambdaFunctionConfiguration::builder()
        .id(&desired.notification.id)
        .lambda_function_arn(&desired.notification.function_arn)
        .events(aws_sdk_s3::types::Event::from("s3:ObjectCreated:*"))
        .filter(
            aws_sdk_s3::types::NotificationConfigurationFilter::builder()
                .key(
                    aws_sdk_s3::types::S3KeyFilter::builder()
                        .filter_rules(
                            aws_sdk_s3::types::FilterRule::builder()
                                .name(aws_sdk_s3::types::FilterRuleName::Prefix)
                                .value("elsewhere/")
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .build()?;
    t.aws
        .s3
        .put_bucket_notification_configuration()
        .bucket(&name)
        .notification_configuration(
            aws_sdk_s3::types::NotificationConfiguration::builder()
                .lambda_function_configurations(notification)
                .build(),
        )
        .send()
        .await?;
    let (observed, changes) = bucket.assert_drift(&["notification.prefix"]).await?;
    assert_eq!(changes.top_fields(), BTreeSet::from(["notification"]));
    bucket
        .correct(&observed, &changes, &["PutBucketNotificationConfiguration"])
        .await?;

    // Several objects with several versions each, and a delete marker: delete must empty it all.
    for key in ["validated/a.csv", "validated/b.csv", "raw/c.csv"] {
        for version in 0..3 {
            t.aws
                .s3
                .put_object()
                .bucket(&name)
                .key(key)
                .body(aws_sdk_s3::primitives::ByteStream::from(
                    format!("id,amount\n{version},1\n").into_bytes(),
                ))
                .send()
                .await?;
        }
    }
    t.aws
        .s3
        .delete_object()
        .bucket(&name)
        .key("raw/c.csv")
        .send()
        .await?;
    let versions = t.aws.s3.list_object_versions().bucket(&name).send().await?;
    assert_eq!(versions.versions().len(), 9, "three keys × three versions");
    assert_eq!(versions.delete_markers().len(), 1);
    let observed = bucket.get().await?;
    bucket.assert_deleted(&observed).await?;
    Ok(())
}

/// More versions than one `ListObjectVersions` page (1000) and one `DeleteObjects` batch (1000) hold.
#[tokio::test]
async fn bucket_delete_empties_more_than_one_page() -> anyhow::Result<()> {
    use futures::{StreamExt, TryStreamExt};
    let t = TestStack::example().await?;
    let bucket = t.subject(Buckets, Kind::Bucket, "")?;
    bucket.create().await?;
    // 550 keys × 2 versions = 1100 versions.
    futures::stream::iter((0..1100).map(|i| {
        let (s3, name) = (t.aws.s3.clone(), bucket.name().to_string());
        async move {
            s3.put_object()
                .bucket(&name)
                .key(format!("raw/{:04}.csv", i % 550))
                .body(aws_sdk_s3::primitives::ByteStream::from_static(b"id\n1\n"))
                .send()
                .await
        }
    }))
    .buffer_unordered(16)
    .try_collect::<Vec<_>>()
    .await?;
    let observed = bucket.get().await.context("bucket")?;
    t.aws.calls.reset();
    bucket.assert_deleted(&observed).await?;
    let calls = t.aws.calls.snapshot();
    let count = |op: &str| {
        calls
            .iter()
            .filter(|((_, o), _)| o == op)
            .map(|(_, n)| *n)
            .sum::<u64>()
    };
    assert!(count("ListObjectVersions") >= 2, "paginated: {calls:?}");
    assert!(count("DeleteObjects") >= 2, "batched: {calls:?}");
    Ok(())
}
