//! Storage and messaging: the dead-letter queue, the notification topic, the two tables, the upload bucket.

use std::collections::BTreeMap;

use super::{id, Builder};
use crate::desired::{
    names, BucketNotification, BucketSpec, GlobalSecondaryIndex, KeyAttribute, Kind, QueueSpec,
    ResourceSpec, TableSpec, TopicSpec,
};

pub(super) fn messaging(b: &mut Builder<'_>) {
    let suffix = b.suffix;
    b.add(
        id(Kind::Queue, names::dlq(suffix)),
        vec![],
        ResourceSpec::Queue(QueueSpec {
            attributes: BTreeMap::from([
                ("MessageRetentionPeriod".into(), "1209600".into()),
                ("SqsManagedSseEnabled".into(), "true".into()),
            ]),
        }),
    );
    let mut emails = b.spec.notifications.emails.clone();
    emails.sort();
    emails.dedup();
    b.add(
        id(Kind::Topic, names::topic(suffix)),
        vec![],
        ResourceSpec::Topic(TopicSpec {
            attributes: BTreeMap::from([(
                "DisplayName".into(),
                format!("tap {suffix} notifications"),
            )]),
            email_subscriptions: emails,
        }),
    );
}

/// `transactions` (key `transaction_id`) and `processing-status` (key `upload_id`), each with a GSI on
/// `timestamp`; on demand, point-in-time recovery on.
pub(super) fn tables(b: &mut Builder<'_>) {
    let suffix = b.suffix;
    for (table, hash) in [
        (names::transactions_table(suffix), "transaction_id"),
        (names::status_table(suffix), "upload_id"),
    ] {
        b.add(
            id(Kind::Table, table),
            vec![],
            ResourceSpec::Table(TableSpec {
                hash_key: KeyAttribute {
                    name: hash.into(),
                    attribute_type: "S".into(),
                },
                range_key: None,
                billing_mode: "PAY_PER_REQUEST".into(),
                global_secondary_indexes: vec![GlobalSecondaryIndex {
                    name: "timestamp-index".into(),
                    hash_key: KeyAttribute {
                        name: "timestamp".into(),
                        attribute_type: "S".into(),
                    },
                    range_key: None,
                    projection: "ALL".into(),
                }],
                point_in_time_recovery: true,
            }),
        );
    }
}

/// The upload bucket: its notification invokes csv-validator, so it comes after the function's
/// permission for S3 (AWS validates the destination of a notification).
pub(super) fn bucket(b: &mut Builder<'_>) {
    let suffix = b.suffix;
    let bucket = names::bucket(suffix, &b.arns.account_id);
    let validator = names::function(suffix, "csv-validator");
    b.add(
        id(Kind::Bucket, &bucket),
        vec![
            id(Kind::Function, &validator),
            id(
                Kind::Permission,
                names::permission(&validator, names::S3_INVOKE_STATEMENT),
            ),
        ],
        ResourceSpec::Bucket(BucketSpec {
            encryption: "AES256".into(),
            block_public_access: true,
            versioning: true,
            notification: BucketNotification {
                id: "tap-validated-uploads".into(),
                function_arn: b.arns.function(&validator),
                prefix: "validated/".into(),
                events: vec!["s3:ObjectCreated:*".into()],
            },
        }),
    );
}
