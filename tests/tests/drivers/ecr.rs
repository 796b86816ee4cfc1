//! ECR repositories: tag mutability, scan on push, the policy, tags; whether an image is pushed.

use serde_json::json;
use tap_controller::desired::Kind;
use tap_controller::drivers::ecr::{self, Repositories};
use tap_tests::stack::TestStack;
use tap_tests::{fake_image_manifest, EmulatorKind};

use super::diff_of;

#[tokio::test]
async fn repository_lifecycle_drift_and_image_exists() -> anyhow::Result<()> {
    let t = TestStack::example().await?;
    let repository = t.subject(Repositories, Kind::Repository, "csv-validator")?;
    let name = repository.name();
    let ctx = repository.ctx();
    repository.assert_absent().await?;
    assert!(
        !ecr::image_exists(&ctx, name, "v1").await?,
        "no repository: no image"
    );
    let outputs = repository.create().await?;
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
    let observed = repository.assert_converged().await?;
    assert_eq!(observed.outputs.url, outputs.url);

    // image_exists: false until pushed (ministack answers an empty list, AWS/moto an error), then true.
    assert!(!ecr::image_exists(&ctx, name, "v1").await?);
    t.aws
        .ecr
        .put_image()
        .repository_name(name)
        .image_tag("v1")
        .image_manifest(fake_image_manifest("v1"))
        .send()
        .await?;
    assert!(ecr::image_exists(&ctx, name, "v1").await?);
    assert!(!ecr::image_exists(&ctx, name, "v2").await?);

    // Out of band: tags made mutable, scan on push off, a tag changed.
    t.aws
        .ecr
        .put_image_tag_mutability()
        .repository_name(name)
        .image_tag_mutability(aws_sdk_ecr::types::ImageTagMutability::Mutable)
        .send()
        .await?;
    // moto gap: the Rust SDK leaves `scanOnPush: false` out of the JSON (false is the default), and moto
    // treats the resulting `{}` as "no change"; AWS applies the default. So scan on push is only turned
    // off out of band on the other emulators.
    let scan_drift = t.emu.kind != EmulatorKind::Moto;
    if scan_drift {
        t.aws
            .ecr
            .put_image_scanning_configuration()
            .repository_name(name)
            .image_scanning_configuration(
                aws_sdk_ecr::types::ImageScanningConfiguration::builder()
                    .scan_on_push(false)
                    .build(),
            )
            .send()
            .await?;
    }
    t.aws
        .ecr
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
    let (observed, changes) = repository.assert_drift(expected).await?;
    let mutability = diff_of(&changes, "tagMutability");
    assert_eq!(
        (&mutability.expected, &mutability.actual),
        (&json!("IMMUTABLE"), &json!("MUTABLE"))
    );
    let mut writes = vec!["PutImageTagMutability", "TagResource"];
    if scan_drift {
        writes.push("PutImageScanningConfiguration");
    }
    repository.correct(&observed, &changes, &writes).await?;

    // Out of band: the policy removed.
    t.aws
        .ecr
        .delete_repository_policy()
        .repository_name(name)
        .send()
        .await?;
    let (observed, changes) = repository.assert_drift(&["policy"]).await?;
    assert_eq!(changes.diffs[0].actual, serde_json::Value::Null);
    let observed = repository
        .correct(&observed, &changes, &["SetRepositoryPolicy"])
        .await?;

    // Deleted with its image (force).
    repository.assert_deleted(&observed).await?;
    assert!(!ecr::image_exists(&ctx, name, "v1").await?);
    Ok(())
}
