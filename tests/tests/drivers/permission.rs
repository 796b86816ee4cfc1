//! Lambda permissions: a statement of csv-validator's policy, owned through the function.

use tap_controller::desired::{names, Kind, ResourceId};
use tap_controller::drivers::permission::Permissions;
use tap_controller::drivers::Outputs;
use tap_tests::stack::{TestStack, OWNER};

use super::lambda::function_with_prerequisites;

#[tokio::test]
async fn permission_lifecycle_drift_and_ownership_through_the_function() -> anyhow::Result<()> {
    let t = TestStack::example().await?;
    let function = function_with_prerequisites(&t, "csv-validator").await?;
    let s3 = t.subject(Permissions, Kind::Permission, names::S3_INVOKE_STATEMENT)?;
    s3.assert_absent().await?;
    s3.create().await?;
    let observed = s3.assert_converged().await?;
    assert_eq!(
        observed.owner(),
        Some(OWNER),
        "a statement is owned through its function's tag"
    );
    assert!(
        observed.tags.is_empty(),
        "a statement has no tags of its own"
    );

    // Out of band: the statement is replaced by one for another source.
    t.aws
        .lambda
        .remove_permission()
        .function_name(function.name())
        .statement_id(names::S3_INVOKE_STATEMENT)
        .send()
        .await?;
    s3.assert_absent().await?;
    t.aws
        .lambda
        .add_permission()
        .function_name(function.name())
        .statement_id(names::S3_INVOKE_STATEMENT)
        .action("lambda:InvokeFunction")
        .principal("s3.amazonaws.com")
        .source_arn("arn:aws:s3:::someone-elses-bucket")
        .send()
        .await?;
    let (observed, changes) = s3.assert_drift(&["sourceArn", "sourceAccount"]).await?;
    // A statement cannot be edited: removed and added again.
    let observed = s3
        .correct(&observed, &changes, &["RemovePermission", "AddPermission"])
        .await?;

    // The API's statement needs the API's id, from the dependency's outputs.
    let api = t.subject(Permissions, Kind::Permission, names::API_INVOKE_STATEMENT)?;
    let api_name = names::rest_api(&t.stack.suffix);
    let api = api.with_dep(
        ResourceId::new(Kind::RestApi, &api_name),
        Outputs {
            id: Some("abc123".into()),
            ..Default::default()
        },
    );
    api.create().await?;
    api.assert_converged().await?;
    let policy = t
        .aws
        .lambda
        .get_policy()
        .function_name(function.name())
        .send()
        .await?;
    assert!(
        policy
            .policy()
            .unwrap_or_default()
            .contains(":abc123/*/POST/upload"),
        "the source ARN names the API: {:?}",
        policy.policy()
    );

    s3.assert_deleted(&observed).await?;
    api.get().await.expect("the other statement stays");

    // Without the function's owner tag, the statement is not ours.
    let arn = t.stack.env.arns().function(function.name());
    t.aws
        .lambda
        .untag_resource()
        .resource(&arn)
        .tag_keys(tap_controller::desired::OWNER_TAG)
        .send()
        .await?;
    assert_eq!(api.get().await?.owner(), None);
    Ok(())
}
