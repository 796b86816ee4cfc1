//! Storage and messaging drivers (S3, DynamoDB, ECR, SQS, SNS) against a local emulator: create →
//! converged (empty diff, observe sends no writes) → out-of-band drift detected field by field → update
//! corrects it → delete → gone → delete again is fine.
//!
//! `TAP_TEST_EMULATOR=moto|ministack` picks the emulator. Where one has a documented gap, only that
//! assertion is skipped on it, with a comment.

use std::collections::BTreeSet;

use anyhow::{bail, Context};
use serde_json::json;
use tap_controller::aws::Aws;
use tap_controller::desired::{build_stack, Kind, ResourceSpec, Stack, StackEnv, Tags};
use tap_controller::drivers::{
    diff, dynamodb::Tables, ecr, ecr::Repositories, s3::Buckets, sns::Topics, sqs::Queues, Changes,
    Ctx, Driver, Observed,
};
use tap_tests::{Emulator, EmulatorKind};

const SPEC: &str = r#"
environmentSuffix: dev1
tags: {team: payments}
functions:
  csvValidator: {image: {tag: v1}, memoryMb: 512, timeoutSeconds: 30}
  dataTransformer: {image: {tag: v1}}
  notificationSender: {image: {tag: v1}}
notifications: {emails: [ops@example.com]}
"#;

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},"layers":[]}"#;

async fn setup() -> anyhow::Result<(Emulator, Aws, Stack)> {
    let emu = Emulator::start().await?;
    let aws = Aws::connect(&emu.sdk_config()).await?;
    let spec = serde_yaml::from_str::<tap_controller::api::TransactionPipelineSpec>(SPEC)?;
    let stack = build_stack(
        &spec,
        &StackEnv {
            account_id: aws.account_id.clone(),
            region: aws.region.clone(),
            partition: aws.partition.clone(),
            owner: "default/payments-dev".into(),
            extra_tags: Default::default(),
        },
    );
    Ok((emu, aws, stack))
}

/// The first resource of `kind` (name, spec, tags), its spec unwrapped by `unwrap`.
fn pick<S>(
    stack: &Stack,
    kind: Kind,
    unwrap: impl Fn(&ResourceSpec) -> Option<&S>,
) -> anyhow::Result<(String, S, Tags)>
where
    S: Clone,
{
    let r = stack
        .resources
        .iter()
        .find(|r| r.id.kind == kind)
        .with_context(|| format!("no {kind} in the stack"))?;
    let spec = unwrap(&r.spec).context("spec of the wrong kind")?.clone();
    Ok((r.id.name.clone(), spec, r.tags.clone()))
}

/// Observes, requires the resource to exist and to match its desired spec exactly, and proves that
/// observing sends read calls only.
async fn assert_converged<D: Driver>(
    driver: &D,
    ctx: &Ctx<'_>,
    name: &str,
    desired: &D::Spec,
    tags: &Tags,
) -> anyhow::Result<Observed<D::Spec>> {
    let observed = driver
        .observe(ctx, name, desired)
        .await?
        .with_context(|| format!("{name} not found"))?;
    let changes = diff(desired, tags, &observed);
    if !changes.is_empty() {
        bail!("{name} is not converged: {:#?}", changes.diffs);
    }
    ctx.aws.calls.reset();
    let again = driver
        .observe(ctx, name, desired)
        .await?
        .context("gone on the second observe")?;
    assert_eq!(
        ctx.aws.calls.writes(),
        Default::default(),
        "observe must not write"
    );
    assert!(ctx.aws.calls.total() > 0, "the call counter saw the reads");
    assert_eq!(
        again, observed,
        "two observes of an unchanged resource agree"
    );
    Ok(observed)
}

/// Observes and returns the diff, asserting it names exactly `fields` (dotted paths).
async fn assert_drift<D: Driver>(
    driver: &D,
    ctx: &Ctx<'_>,
    name: &str,
    desired: &D::Spec,
    tags: &Tags,
    fields: &[&str],
) -> anyhow::Result<(Observed<D::Spec>, Changes)> {
    let observed = driver
        .observe(ctx, name, desired)
        .await?
        .context("resource gone")?;
    let changes = diff(desired, tags, &observed);
    let got: BTreeSet<&str> = changes.diffs.iter().map(|d| d.field.as_str()).collect();
    let want: BTreeSet<&str> = fields.iter().copied().collect();
    assert_eq!(got, want, "drift of {name}: {:#?}", changes.diffs);
    Ok((observed, changes))
}

/// Applies `changes`, checks that the update sent exactly the write operations `writes` (it touches the
/// drifted fields and nothing else), then that the resource is converged again.
#[allow(clippy::too_many_arguments)]
async fn correct<D: Driver>(
    driver: &D,
    ctx: &Ctx<'_>,
    name: &str,
    desired: &D::Spec,
    tags: &Tags,
    observed: &Observed<D::Spec>,
    changes: &Changes,
    writes: &[&str],
) -> anyhow::Result<Observed<D::Spec>> {
    ctx.aws.calls.reset();
    driver
        .update(ctx, name, desired, tags, observed, changes)
        .await?;
    let expected: BTreeSet<String> = writes.iter().map(|w| w.to_string()).collect();
    assert_eq!(written(ctx.aws), expected, "writes of the update of {name}");
    assert_converged(driver, ctx, name, desired, tags).await
}

/// The write operations counted since the last reset, by operation name.
fn written(aws: &Aws) -> BTreeSet<String> {
    aws.calls.writes().into_keys().map(|(_, op)| op).collect()
}

/// Deletes, checks it is gone, deletes again (not-found is success).
async fn assert_deleted<D: Driver>(
    driver: &D,
    ctx: &Ctx<'_>,
    name: &str,
    desired: &D::Spec,
    observed: &Observed<D::Spec>,
) -> anyhow::Result<()> {
    driver.delete(ctx, name, observed).await?;
    assert!(
        driver.observe(ctx, name, desired).await?.is_none(),
        "{name} still exists after delete"
    );
    driver
        .delete(ctx, name, observed)
        .await
        .context("second delete")?;
    Ok(())
}

fn drifted_tags(tags: &Tags) -> Tags {
    let mut t = tags.clone();
    t.insert("team".into(), "someone-else".into());
    t
}

fn s3_tags(tags: &Tags) -> anyhow::Result<aws_sdk_s3::types::Tagging> {
    let set = tags
        .iter()
        .map(|(k, v)| aws_sdk_s3::types::Tag::builder().key(k).value(v).build())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(aws_sdk_s3::types::Tagging::builder()
        .set_tag_set(Some(set))
        .build()?)
}

/// The bucket's notification target, created the way the Lambda driver would (the S3 driver only adds
/// the permission on it): an image function with a role.
async fn create_validator_function(aws: &Aws, stack: &Stack, function: &str) -> anyhow::Result<()> {
    let spec = stack
        .resources
        .iter()
        .find_map(|r| match &r.spec {
            ResourceSpec::Function(f) if r.id.name == function => Some(f.clone()),
            _ => None,
        })
        .context("validator function in the stack")?;
    let role = spec
        .role_arn
        .rsplit('/')
        .next()
        .context("role name")?
        .to_string();
    aws.iam
        .create_role()
        .role_name(&role)
        .assume_role_policy_document(
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
                .to_string(),
        )
        .send()
        .await?;
    let created = aws
        .lambda
        .create_function()
        .function_name(function)
        .package_type(aws_sdk_lambda::types::PackageType::Image)
        .code(
            aws_sdk_lambda::types::FunctionCode::builder()
                .image_uri(&spec.image_uri)
                .build(),
        )
        .role(&spec.role_arn)
        .architectures(aws_sdk_lambda::types::Architecture::Arm64)
        .send()
        .await;
    created.context("creating the validator function")?;
    Ok(())
}

// ------------------------------------------------------------------------------------------------- S3

#[tokio::test]
async fn bucket_lifecycle_and_drift() -> anyhow::Result<()> {
    let (emu, aws, stack) = setup().await?;
    let deps = Default::default();
    let ctx = Ctx {
        aws: &aws,
        deps: &deps,
    };
    let (name, desired, tags) = pick(&stack, Kind::Bucket, |s| match s {
        ResourceSpec::Bucket(b) => Some(b),
        _ => None,
    })?;
    create_validator_function(&aws, &stack, &desired.invoke_permission.function_name).await?;
    let d = Buckets;
    assert!(
        d.observe(&ctx, &name, &desired).await?.is_none(),
        "absent before create"
    );

    let outputs = d.create(&ctx, &name, &desired, &tags).await?;
    assert_eq!(
        outputs.arn.as_deref(),
        Some(format!("arn:aws:s3:::{name}").as_str())
    );
    assert_eq!(outputs.id.as_deref(), Some(name.as_str()));
    let observed = assert_converged(&d, &ctx, &name, &desired, &tags).await?;
    assert_eq!(observed.outputs, outputs);

    // Out of band: versioning suspended, a tag changed.
    aws.s3
        .put_bucket_versioning()
        .bucket(&name)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Suspended)
                .build(),
        )
        .send()
        .await?;
    aws.s3
        .put_bucket_tagging()
        .bucket(&name)
        .tagging(s3_tags(&drifted_tags(&tags))?)
        .send()
        .await?;
    let (observed, changes) = assert_drift(
        &d,
        &ctx,
        &name,
        &desired,
        &tags,
        &["versioning", "tags.team"],
    )
    .await?;
    let versioning = changes
        .diffs
        .iter()
        .find(|c| c.field == "versioning")
        .context("versioning diff")?;
    assert_eq!(
        (&versioning.expected, &versioning.actual),
        (&json!(true), &json!(false))
    );
    let team = changes
        .diffs
        .iter()
        .find(|c| c.field == "tags.team")
        .context("tag diff")?;
    assert_eq!(
        (&team.expected, &team.actual),
        (&json!("payments"), &json!("someone-else"))
    );
    correct(
        &d,
        &ctx,
        &name,
        &desired,
        &tags,
        &observed,
        &changes,
        &["PutBucketVersioning", "PutBucketTagging"],
    )
    .await?;

    // Out of band: the invoke permission removed, the notification's prefix changed.
    let permission = &desired.invoke_permission;
    aws.lambda
        .remove_permission()
        .function_name(&permission.function_name)
        .statement_id(&permission.statement_id)
        .send()
        .await?;
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
    aws.s3
        .put_bucket_notification_configuration()
        .bucket(&name)
        .notification_configuration(
            aws_sdk_s3::types::NotificationConfiguration::builder()
                .lambda_function_configurations(notification)
                .build(),
        )
        .send()
        .await?;
    let (observed, changes) = assert_drift(
        &d,
        &ctx,
        &name,
        &desired,
        &tags,
        &[
            "notification.prefix",
            "invokePermission.statementId",
            "invokePermission.principal",
            "invokePermission.sourceArn",
            "invokePermission.sourceAccount",
        ],
    )
    .await?;
    assert_eq!(
        changes.top_fields(),
        BTreeSet::from(["notification", "invokePermission"])
    );
    correct(
        &d,
        &ctx,
        &name,
        &desired,
        &tags,
        &observed,
        &changes,
        &["AddPermission", "PutBucketNotificationConfiguration"],
    )
    .await?;

    // Several objects with several versions each, and a delete marker: delete must empty it all.
    for key in ["validated/a.csv", "validated/b.csv", "raw/c.csv"] {
        for version in 0..3 {
            aws.s3
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
    aws.s3
        .delete_object()
        .bucket(&name)
        .key("raw/c.csv")
        .send()
        .await?;
    let versions = aws.s3.list_object_versions().bucket(&name).send().await?;
    assert_eq!(versions.versions().len(), 9, "three keys × three versions");
    assert_eq!(versions.delete_markers().len(), 1);

    let observed = d.observe(&ctx, &name, &desired).await?.context("bucket")?;
    assert_deleted(&d, &ctx, &name, &desired, &observed).await?;
    // The invoke permission went with the bucket.
    let policy = aws
        .lambda
        .get_policy()
        .function_name(&permission.function_name)
        .send()
        .await;
    if let Ok(policy) = policy {
        assert!(
            !policy
                .policy()
                .unwrap_or_default()
                .contains(&permission.statement_id),
            "permission removed"
        );
    }
    drop(emu);
    Ok(())
}

// ------------------------------------------------------------------------------------------- DynamoDB

#[tokio::test]
async fn table_lifecycle_drift_and_index_change() -> anyhow::Result<()> {
    let (emu, aws, stack) = setup().await?;
    let deps = Default::default();
    let ctx = Ctx {
        aws: &aws,
        deps: &deps,
    };
    let (name, desired, tags) = pick(&stack, Kind::Table, |s| match s {
        ResourceSpec::Table(t) => Some(t),
        _ => None,
    })?;
    let d = Tables;
    assert!(d.observe(&ctx, &name, &desired).await?.is_none());

    let outputs = d.create(&ctx, &name, &desired, &tags).await?;
    assert!(
        outputs
            .arn
            .as_deref()
            .is_some_and(|a| a.ends_with(&format!(":table/{name}"))),
        "{outputs:?}"
    );
    assert_converged(&d, &ctx, &name, &desired, &tags).await?;

    // Out of band: PITR off, a tag changed.
    aws.dynamodb
        .update_continuous_backups()
        .table_name(&name)
        .point_in_time_recovery_specification(
            aws_sdk_dynamodb::types::PointInTimeRecoverySpecification::builder()
                .point_in_time_recovery_enabled(false)
                .build()?,
        )
        .send()
        .await?;
    aws.dynamodb
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
    let (observed, changes) = assert_drift(
        &d,
        &ctx,
        &name,
        &desired,
        &tags,
        &["pointInTimeRecovery", "tags.team"],
    )
    .await?;
    let pitr = &changes.diffs[0];
    assert_eq!(
        (&pitr.field[..], &pitr.expected, &pitr.actual),
        ("pointInTimeRecovery", &json!(true), &json!(false))
    );
    correct(
        &d,
        &ctx,
        &name,
        &desired,
        &tags,
        &observed,
        &changes,
        &["UpdateContinuousBackups", "TagResource"],
    )
    .await?;

    // A spec change: one more index (added in place, one index change per UpdateTable).
    let mut wider = desired.clone();
    wider
        .global_secondary_indexes
        .push(tap_controller::desired::GlobalSecondaryIndex {
            name: "user-index".into(),
            hash_key: tap_controller::desired::KeyAttribute {
                name: "user_id".into(),
                attribute_type: "S".into(),
            },
            range_key: Some(tap_controller::desired::KeyAttribute {
                name: "timestamp".into(),
                attribute_type: "S".into(),
            }),
            projection: "KEYS_ONLY".into(),
        });
    wider
        .global_secondary_indexes
        .sort_by(|a, b| a.name.cmp(&b.name));
    let (observed, changes) =
        assert_drift(&d, &ctx, &name, &wider, &tags, &["globalSecondaryIndexes"]).await?;
    correct(
        &d,
        &ctx,
        &name,
        &wider,
        &tags,
        &observed,
        &changes,
        &["UpdateTable"],
    )
    .await?;
    // And back: the index is dropped.
    let (observed, changes) = assert_drift(
        &d,
        &ctx,
        &name,
        &desired,
        &tags,
        &["globalSecondaryIndexes"],
    )
    .await?;
    let observed = correct(
        &d,
        &ctx,
        &name,
        &desired,
        &tags,
        &observed,
        &changes,
        &["UpdateTable"],
    )
    .await?;

    // A key change is refused (the table would have to be replaced), and nothing is written.
    let mut rekeyed = desired.clone();
    rekeyed.hash_key.name = "id".into();
    let changes = diff(&rekeyed, &tags, &observed);
    assert_eq!(changes.top_fields(), BTreeSet::from(["hashKey"]));
    aws.calls.reset();
    let err = d
        .update(&ctx, &name, &rekeyed, &tags, &observed, &changes)
        .await
        .expect_err("key change refused");
    assert_eq!(err.class, tap_controller::aws::ErrorClass::Terminal);
    assert!(err.message.contains("replaced"), "{err}");
    assert_eq!(
        aws.calls.writes(),
        Default::default(),
        "a refused key change writes nothing"
    );

    assert_deleted(&d, &ctx, &name, &desired, &observed).await?;
    drop(emu);
    Ok(())
}

// ------------------------------------------------------------------------------------------------ ECR

#[tokio::test]
async fn repository_lifecycle_drift_and_image_exists() -> anyhow::Result<()> {
    let (emu, aws, stack) = setup().await?;
    let deps = Default::default();
    let ctx = Ctx {
        aws: &aws,
        deps: &deps,
    };
    let (name, desired, tags) = pick(&stack, Kind::Repository, |s| match s {
        ResourceSpec::Repository(r) => Some(r),
        _ => None,
    })?;
    let d = Repositories;
    assert!(d.observe(&ctx, &name, &desired).await?.is_none());
    assert!(
        !ecr::image_exists(&aws, &name, "v1").await?,
        "no repository: no image"
    );

    let outputs = d.create(&ctx, &name, &desired, &tags).await?;
    assert!(
        outputs
            .url
            .as_deref()
            .is_some_and(|u| u.ends_with(&format!("/{name}"))),
        "{outputs:?}"
    );
    assert!(
        outputs
            .arn
            .as_deref()
            .is_some_and(|a| a.ends_with(&format!(":repository/{name}"))),
        "{outputs:?}"
    );
    let observed = assert_converged(&d, &ctx, &name, &desired, &tags).await?;
    assert_eq!(observed.outputs.url, outputs.url);

    // image_exists: false until pushed (ministack answers an empty list, AWS/moto an error), then true.
    assert!(!ecr::image_exists(&aws, &name, "v1").await?);
    aws.ecr
        .put_image()
        .repository_name(&name)
        .image_tag("v1")
        .image_manifest(MANIFEST)
        .send()
        .await?;
    assert!(ecr::image_exists(&aws, &name, "v1").await?);
    assert!(!ecr::image_exists(&aws, &name, "v2").await?);

    // Out of band: tags made mutable, scan on push off, a tag changed.
    aws.ecr
        .put_image_tag_mutability()
        .repository_name(&name)
        .image_tag_mutability(aws_sdk_ecr::types::ImageTagMutability::Mutable)
        .send()
        .await?;
    // moto gap: the Rust SDK leaves `scanOnPush: false` out of the JSON (false is the default), and moto
    // treats the resulting `{}` as "no change"; AWS applies the default. So scan on push is only turned
    // off out of band on the other emulators.
    let scan_drift = emu.kind != EmulatorKind::Moto;
    if scan_drift {
        aws.ecr
            .put_image_scanning_configuration()
            .repository_name(&name)
            .image_scanning_configuration(
                aws_sdk_ecr::types::ImageScanningConfiguration::builder()
                    .scan_on_push(false)
                    .build(),
            )
            .send()
            .await?;
    }
    aws.ecr
        .tag_resource()
        .resource_arn(outputs.arn.clone().unwrap_or_default())
        .tags(
            aws_sdk_ecr::types::Tag::builder()
                .key("team")
                .value("someone-else")
                .build()?,
        )
        .send()
        .await?;
    let expected: &[&str] = if scan_drift {
        &["scanOnPush", "tagMutability", "tags.team"]
    } else {
        &["tagMutability", "tags.team"]
    };
    let (observed, changes) = assert_drift(&d, &ctx, &name, &desired, &tags, expected).await?;
    let mutability = changes
        .diffs
        .iter()
        .find(|c| c.field == "tagMutability")
        .context("mutability diff")?;
    assert_eq!(
        (&mutability.expected, &mutability.actual),
        (&json!("IMMUTABLE"), &json!("MUTABLE"))
    );
    let mut ecr_writes = vec!["PutImageTagMutability", "TagResource"];
    if scan_drift {
        ecr_writes.push("PutImageScanningConfiguration");
    }
    correct(
        &d,
        &ctx,
        &name,
        &desired,
        &tags,
        &observed,
        &changes,
        &ecr_writes,
    )
    .await?;

    // Out of band: the policy removed.
    aws.ecr
        .delete_repository_policy()
        .repository_name(&name)
        .send()
        .await?;
    let (observed, changes) = assert_drift(&d, &ctx, &name, &desired, &tags, &["policy"]).await?;
    assert_eq!(changes.diffs[0].actual, serde_json::Value::Null);
    let observed = correct(
        &d,
        &ctx,
        &name,
        &desired,
        &tags,
        &observed,
        &changes,
        &["SetRepositoryPolicy"],
    )
    .await?;

    // Deleted with its image (force).
    assert_deleted(&d, &ctx, &name, &desired, &observed).await?;
    assert!(!ecr::image_exists(&aws, &name, "v1").await?);
    drop(emu);
    Ok(())
}

// ------------------------------------------------------------------------------------------------ SQS

#[tokio::test]
async fn queue_lifecycle_and_drift() -> anyhow::Result<()> {
    let (emu, aws, stack) = setup().await?;
    let deps = Default::default();
    let ctx = Ctx {
        aws: &aws,
        deps: &deps,
    };
    let (name, desired, tags) = pick(&stack, Kind::Queue, |s| match s {
        ResourceSpec::Queue(q) => Some(q),
        _ => None,
    })?;
    let d = Queues;
    assert!(d.observe(&ctx, &name, &desired).await?.is_none());

    let outputs = d.create(&ctx, &name, &desired, &tags).await?;
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
    let observed = assert_converged(&d, &ctx, &name, &desired, &tags).await?;
    assert_eq!(observed.outputs, outputs);

    // Out of band: retention shortened, a tag changed.
    let url = outputs.url.clone().unwrap_or_default();
    aws.sqs
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::MessageRetentionPeriod,
            "345600",
        )
        .send()
        .await?;
    aws.sqs
        .tag_queue()
        .queue_url(&url)
        .tags("team", "someone-else")
        .send()
        .await?;
    let (observed, changes) = assert_drift(
        &d,
        &ctx,
        &name,
        &desired,
        &tags,
        &["attributes.MessageRetentionPeriod", "tags.team"],
    )
    .await?;
    let retention = changes
        .diffs
        .iter()
        .find(|c| c.field == "attributes.MessageRetentionPeriod")
        .context("diff")?;
    assert_eq!(
        (&retention.expected, &retention.actual),
        (&json!("1209600"), &json!("345600"))
    );
    correct(
        &d,
        &ctx,
        &name,
        &desired,
        &tags,
        &observed,
        &changes,
        &["SetQueueAttributes", "TagQueue"],
    )
    .await?;

    // An unmanaged attribute changed out of band is not drift.
    aws.sqs
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "45",
        )
        .send()
        .await?;
    let observed = assert_converged(&d, &ctx, &name, &desired, &tags).await?;

    assert_deleted(&d, &ctx, &name, &desired, &observed).await?;
    drop(emu);
    Ok(())
}

// ------------------------------------------------------------------------------------------------ SNS

#[tokio::test]
async fn topic_lifecycle_and_drift() -> anyhow::Result<()> {
    let (emu, aws, stack) = setup().await?;
    let deps = Default::default();
    let ctx = Ctx {
        aws: &aws,
        deps: &deps,
    };
    let (name, desired, tags) = pick(&stack, Kind::Topic, |s| match s {
        ResourceSpec::Topic(t) => Some(t),
        _ => None,
    })?;
    assert_eq!(desired.email_subscriptions, ["ops@example.com"]);
    let d = Topics;
    assert!(d.observe(&ctx, &name, &desired).await?.is_none());

    let outputs = d.create(&ctx, &name, &desired, &tags).await?;
    let arn = format!("arn:aws:sns:{}:{}:{name}", aws.region, aws.account_id);
    assert_eq!(outputs.arn.as_deref(), Some(arn.as_str()));
    assert_converged(&d, &ctx, &name, &desired, &tags).await?;

    // Out of band: display name changed, a tag changed, an extra address subscribed.
    aws.sns
        .set_topic_attributes()
        .topic_arn(&arn)
        .attribute_name("DisplayName")
        .attribute_value("hijacked")
        .send()
        .await?;
    aws.sns
        .tag_resource()
        .resource_arn(&arn)
        .tags(
            aws_sdk_sns::types::Tag::builder()
                .key("team")
                .value("someone-else")
                .build()?,
        )
        .send()
        .await?;
    let extra = aws
        .sns
        .subscribe()
        .topic_arn(&arn)
        .protocol("email")
        .endpoint("intruder@example.com")
        .send()
        .await?;
    let (observed, changes) = assert_drift(
        &d,
        &ctx,
        &name,
        &desired,
        &tags,
        &["attributes.DisplayName", "emailSubscriptions", "tags.team"],
    )
    .await?;
    let subs = changes
        .diffs
        .iter()
        .find(|c| c.field == "emailSubscriptions")
        .context("subscriptions diff")?;
    assert_eq!(
        subs.actual,
        json!(["intruder@example.com", "ops@example.com"])
    );
    let display = changes
        .diffs
        .iter()
        .find(|c| c.field == "attributes.DisplayName")
        .context("display name diff")?;
    assert_eq!(
        (&display.expected, &display.actual),
        (&json!("tap dev1 notifications"), &json!("hijacked"))
    );
    aws.calls.reset();
    d.update(&ctx, &name, &desired, &tags, &observed, &changes)
        .await?;
    let pending = extra
        .subscription_arn()
        .is_none_or(|a| !a.starts_with("arn:"));
    let mut expected =
        BTreeSet::from(["SetTopicAttributes".to_string(), "TagResource".to_string()]);
    if !pending {
        expected.insert("Unsubscribe".to_string());
    }
    assert_eq!(written(&aws), expected, "writes of the topic update");
    eprintln!(
        "{}: an e-mail subscription is {}",
        emu.kind.name(),
        if pending {
            "pending"
        } else {
            "confirmed at once"
        }
    );
    if pending {
        // AWS (and an emulator that mimics it) keeps an unconfirmed e-mail subscription pending, and a
        // pending subscription cannot be unsubscribed: it expires by itself. Everything else converged.
        assert_drift(&d, &ctx, &name, &desired, &tags, &["emailSubscriptions"]).await?;
    } else {
        assert_converged(&d, &ctx, &name, &desired, &tags).await?;
    }

    // A missing subscription is added back.
    let mine = aws
        .sns
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
        aws.sns.unsubscribe().subscription_arn(ops).send().await?;
        let observed = d.observe(&ctx, &name, &desired).await?.context("topic")?;
        let changes = diff(&desired, &tags, &observed);
        assert!(changes.touches("emailSubscriptions"), "{changes:#?}");
        aws.calls.reset();
        d.update(&ctx, &name, &desired, &tags, &observed, &changes)
            .await?;
        assert_eq!(written(&aws), BTreeSet::from(["Subscribe".to_string()]));
        let observed = d.observe(&ctx, &name, &desired).await?.context("topic")?;
        assert!(observed
            .spec
            .email_subscriptions
            .contains(&"ops@example.com".to_string()));
    }
    if !pending {
        assert_converged(&d, &ctx, &name, &desired, &tags).await?;
    }

    let observed = d.observe(&ctx, &name, &desired).await?.context("topic")?;
    assert_deleted(&d, &ctx, &name, &desired, &observed).await?;
    drop(emu);
    Ok(())
}

/// More versions than one `ListObjectVersions` page (1000) and one `DeleteObjects` batch (1000) hold.
#[tokio::test]
async fn bucket_delete_empties_more_than_one_page() -> anyhow::Result<()> {
    use futures::{StreamExt, TryStreamExt};
    let (emu, aws, stack) = setup().await?;
    let deps = Default::default();
    let ctx = Ctx {
        aws: &aws,
        deps: &deps,
    };
    let (name, desired, tags) = pick(&stack, Kind::Bucket, |s| match s {
        ResourceSpec::Bucket(b) => Some(b),
        _ => None,
    })?;
    create_validator_function(&aws, &stack, &desired.invoke_permission.function_name).await?;
    let d = Buckets;
    d.create(&ctx, &name, &desired, &tags).await?;
    // 550 keys × 2 versions = 1100 versions.
    futures::stream::iter((0..1100).map(|i| {
        let (s3, name) = (aws.s3.clone(), name.clone());
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
    let observed = d.observe(&ctx, &name, &desired).await?.context("bucket")?;
    aws.calls.reset();
    assert_deleted(&d, &ctx, &name, &desired, &observed).await?;
    let calls = aws.calls.snapshot();
    let count = |op: &str| {
        calls
            .iter()
            .filter(|((_, o), _)| o == op)
            .map(|(_, n)| *n)
            .sum::<u64>()
    };
    assert!(count("ListObjectVersions") >= 2, "paginated: {calls:?}");
    assert!(count("DeleteObjects") >= 2, "batched: {calls:?}");
    drop(emu);
    Ok(())
}
