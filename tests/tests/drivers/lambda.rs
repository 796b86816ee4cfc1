//! Lambda functions: waits for its image, then converges configuration and code drift.
//!
//! moto's Lambda read-back gaps (DeadLetterConfig, TracingConfig updates) are closed by
//! tests/moto/lambda_config.py; none is left on either emulator.

use std::collections::BTreeMap;

use anyhow::Context;
use serde_json::json;
use tap_controller::desired::{EcrImage, Kind};
use tap_controller::drivers::iam::Roles;
use tap_controller::drivers::lambda::Functions;
use tap_controller::drivers::{DriverError, WaitReason};
use tap_tests::fake_image_manifest;
use tap_tests::lifecycle::Subject;
use tap_tests::stack::TestStack;

use super::{fields, set};

/// What the function's own stack would have created first: its role, repository and DLQ.
pub async fn prerequisites(t: &TestStack, function: &str) -> anyhow::Result<()> {
    t.subject(Roles, Kind::Role, &format!("{function}-role"))?
        .create()
        .await?;
    let repository = t.resource(Kind::Repository, function)?;
    t.aws
        .ecr
        .create_repository()
        .repository_name(&repository.id.name)
        .send()
        .await?;
    t.aws
        .sqs
        .create_queue()
        .queue_name(&t.resource(Kind::Queue, "dlq")?.id.name)
        .send()
        .await?;
    Ok(())
}

pub async fn push_image(t: &TestStack, repository: &str, tag: &str) -> anyhow::Result<()> {
    t.aws
        .ecr
        .put_image()
        .repository_name(repository)
        .image_tag(tag)
        .image_manifest(fake_image_manifest(tag))
        .send()
        .await?;
    Ok(())
}

/// The function through the driver, its prerequisites made and its image pushed first.
pub async fn function_with_prerequisites<'a>(
    t: &'a TestStack,
    function: &str,
) -> anyhow::Result<Subject<'a, Functions>> {
    prerequisites(t, function).await?;
    let subject = t.subject(Functions, Kind::Function, function)?;
    let image = subject
        .desired
        .image_in_repository
        .clone()
        .context("image in repository")?;
    push_image(t, &image.repository, &image.tag).await?;
    subject.create().await?;
    Ok(subject)
}

#[tokio::test]
async fn function_waits_for_image_then_converges_drift_and_deletes() -> anyhow::Result<()> {
    let t = TestStack::example().await?;
    prerequisites(&t, "csv-validator").await?;
    let function = t.subject(Functions, Kind::Function, "csv-validator")?;
    let (name, desired) = (function.name(), function.desired.clone());

    // Not pushed yet: the pipeline waits, with the image named.
    let err = function
        .try_create()
        .await
        .expect_err("the image is not pushed");
    let DriverError::Wait(wait @ WaitReason::Image { .. }) = &err else {
        panic!("waits for the image: {err}")
    };
    assert!(
        wait.to_string()
            .contains(&format!("push image {}", desired.image_uri)),
        "{err}"
    );
    function.assert_absent().await?;

    let image = desired
        .image_in_repository
        .clone()
        .context("image in repository")?;
    push_image(&t, &image.repository, &image.tag).await?;
    let outputs = function.create().await?;
    assert_eq!(
        outputs.arn.as_deref(),
        Some(
            format!(
                "arn:aws:lambda:us-east-1:{}:function:{name}",
                t.aws.account_id
            )
            .as_str()
        )
    );
    let observed = function.assert_converged().await?;
    assert_eq!(observed.outputs, outputs);
    assert_eq!(observed.spec.memory_mb, 512);
    assert_eq!(observed.spec.architectures, vec!["arm64".to_string()]);
    assert_eq!(observed.spec.tracing_mode, "Active");
    assert_eq!(observed.spec.environment, desired.environment);

    // Drift out of band: memory and a tag.
    t.aws
        .lambda
        .update_function_configuration()
        .function_name(name)
        .memory_size(256)
        .send()
        .await?;
    let arn = outputs.arn.clone().context("arn")?;
    t.aws
        .lambda
        .tag_resource()
        .resource(&arn)
        .tags("team", "someone-else")
        .send()
        .await?;
    let (observed, changes) = function.assert_drift(&["memoryMb", "tags.team"]).await?;
    assert_eq!(
        (
            changes.diffs[0].expected.clone(),
            changes.diffs[0].actual.clone()
        ),
        (json!(512), json!(256))
    );
    assert_eq!(changes.diffs[1].actual, json!("someone-else"));
    // Configuration only: no code update.
    let observed = function
        .correct(
            &observed,
            &changes,
            &["UpdateFunctionConfiguration", "TagResource"],
        )
        .await?;

    // A new image and more memory at once: one code update, one configuration update.
    push_image(&t, &image.repository, "v2").await?;
    let mut v2 = desired.clone();
    v2.image_uri = desired.image_uri.replace(":v1", ":v2");
    v2.image_in_repository = Some(EcrImage {
        repository: image.repository.clone(),
        tag: "v2".into(),
    });
    v2.memory_mb = 1024;
    let changes = function.diff(&v2, &function.tags, &observed);
    assert_eq!(fields(&changes), set(&["imageUri", "memoryMb"]));
    t.aws.calls.reset();
    function
        .update_with(&v2, &function.tags, &observed, &changes)
        .await?;
    let writes = t.aws.calls.writes();
    for operation in ["UpdateFunctionCode", "UpdateFunctionConfiguration"] {
        assert_eq!(
            writes.get(&("Lambda".into(), operation.into())),
            Some(&1),
            "{writes:?}"
        );
    }
    let observed = function.assert_converged_as(&v2).await?;
    assert_eq!(observed.spec.image_uri, v2.image_uri);

    // An image update to a tag that is not pushed waits too, and changes nothing.
    let mut v3 = v2.clone();
    v3.image_uri = desired.image_uri.replace(":v1", ":v3");
    v3.image_in_repository = Some(EcrImage {
        repository: image.repository.clone(),
        tag: "v3".into(),
    });
    let changes = function.diff(&v3, &function.tags, &observed);
    t.aws.calls.reset();
    let err = function
        .update_with(&v3, &function.tags, &observed, &changes)
        .await
        .expect_err("v3 is not pushed");
    assert!(
        matches!(err, DriverError::Wait(WaitReason::Image { .. })),
        "{err}"
    );
    assert_eq!(t.aws.calls.writes(), BTreeMap::new());

    function.assert_deleted(&observed).await?;
    Ok(())
}

#[tokio::test]
async fn function_update_restores_every_configuration_field() -> anyhow::Result<()> {
    let t = TestStack::example().await?;
    let function = function_with_prerequisites(&t, "data-transformer").await?;

    // Environment, timeout and tracing drift together; an extra variable appears.
    let mut env: std::collections::HashMap<String, String> =
        function.desired.environment.clone().into_iter().collect();
    env.insert("DEBUG".into(), "1".into());
    env.remove("STATUS_TABLE");
    t.aws
        .lambda
        .update_function_configuration()
        .function_name(function.name())
        .timeout(90)
        .environment(
            aws_sdk_lambda::types::Environment::builder()
                .set_variables(Some(env))
                .build(),
        )
        .tracing_config(
            aws_sdk_lambda::types::TracingConfig::builder()
                .mode(aws_sdk_lambda::types::TracingMode::PassThrough)
                .build(),
        )
        .send()
        .await?;
    let (observed, changes) = function
        .assert_drift(&[
            "environment.DEBUG",
            "environment.STATUS_TABLE",
            "timeoutSeconds",
            "tracingMode",
        ])
        .await?;
    function
        .correct(&observed, &changes, &["UpdateFunctionConfiguration"])
        .await?;
    Ok(())
}
