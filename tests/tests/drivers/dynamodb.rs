//! DynamoDB tables: point-in-time recovery, global secondary indexes, tags; a key change is refused.

use std::collections::BTreeSet;

use serde_json::json;
use tap_controller::aws::ErrorClass;
use tap_controller::desired::{GlobalSecondaryIndex, KeyAttribute, Kind};
use tap_controller::drivers::dynamodb::Tables;
use tap_controller::drivers::{diff, DriverError};
use tap_tests::stack::TestStack;

#[tokio::test]
async fn table_lifecycle_drift_and_index_change() -> anyhow::Result<()> {
    let t = TestStack::example().await?;
    let table = t.subject(Tables, Kind::Table, "transactions")?;
    let name = table.name();
    table.assert_absent().await?;
    let outputs = table.create().await?;
    assert!(
        outputs
            .arn
            .as_deref()
            .is_some_and(|a| a.ends_with(&format!(":table/{name}"))),
        "{outputs:?}"
    );
    table.assert_converged().await?;

    // Out of band: PITR off, a tag changed.
    t.aws
        .dynamodb
        .update_continuous_backups()
        .table_name(name)
        .point_in_time_recovery_specification(
            aws_sdk_dynamodb::types::PointInTimeRecoverySpecification::builder()
                .point_in_time_recovery_enabled(false)
                .build()?,
        )
        .send()
        .await?;
    t.aws
        .dynamodb
        .tag_resource()
        .resource_arn(outputs.arn.clone().unwrap_or_default())
        .tags(
            aws_sdk_dynamodb::types::Tag::builder()
                .key("team")
                .value("someone-else")
                .build()?,
        )
        .send()
        .await?;
    let (observed, changes) = table
        .assert_drift(&["pointInTimeRecovery", "tags.team"])
        .await?;
    let pitr = &changes.diffs[0];
    assert_eq!(
        (&pitr.field[..], &pitr.expected, &pitr.actual),
        ("pointInTimeRecovery", &json!(true), &json!(false))
    );
    table
        .correct(
            &observed,
            &changes,
            &["UpdateContinuousBackups", "TagResource"],
        )
        .await?;

    // A spec change: one more index (added in place, one index change per UpdateTable).
    let mut wider = table.desired.clone();
    wider.global_secondary_indexes.push(GlobalSecondaryIndex {
        name: "user-index".into(),
        hash_key: KeyAttribute {
            name: "user_id".into(),
            attribute_type: "S".into(),
        },
        range_key: Some(KeyAttribute {
            name: "timestamp".into(),
            attribute_type: "S".into(),
        }),
        projection: "KEYS_ONLY".into(),
    });
    wider
        .global_secondary_indexes
        .sort_by(|a, b| a.name.cmp(&b.name));
    let (observed, changes) = table
        .assert_drift_as(&wider, &["globalSecondaryIndexes"])
        .await?;
    table
        .correct_as(&wider, &observed, &changes, &["UpdateTable"])
        .await?;
    // And back: the index is dropped.
    let (observed, changes) = table.assert_drift(&["globalSecondaryIndexes"]).await?;
    let observed = table.correct(&observed, &changes, &["UpdateTable"]).await?;

    // A key change is refused (the table would have to be replaced), and nothing is written.
    let mut rekeyed = table.desired.clone();
    rekeyed.hash_key.name = "id".into();
    let changes = diff(&rekeyed, &table.tags, &observed.spec, &observed.tags);
    assert_eq!(changes.top_fields(), BTreeSet::from(["hashKey"]));
    t.aws.calls.reset();
    let err = table
        .update_with(&rekeyed, &table.tags, &observed, &changes)
        .await
        .expect_err("key change refused");
    let DriverError::Aws(err) = err else {
        panic!("an AWS error: {err}")
    };
    assert_eq!(err.class, ErrorClass::Terminal);
    assert!(err.message.contains("replaced"), "{err}");
    assert_eq!(
        t.aws.calls.writes(),
        Default::default(),
        "a refused key change writes nothing"
    );

    table.assert_deleted(&observed).await?;
    Ok(())
}
