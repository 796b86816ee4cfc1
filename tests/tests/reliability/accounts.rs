//! Cross-account: a pipeline with `spec.aws.roleArn` makes every call as that role (assumed through STS
//! with its external id), so its whole stack lives in the role's account, which its outputs name; the
//! controller's own account is left empty.

use anyhow::{ensure, Context};
use tap_controller::api::AwsAccess;
use tap_controller::aws::ClientOptions;
use tap_tests::inventory::Inventory;
use tap_tests::pipeline::{apply, clients, destroy, engine, not_done, spec};

use super::{moto, quick_retries};

const TARGET_ACCOUNT: &str = "111111111111";

#[tokio::test]
async fn a_pipeline_with_a_role_arn_builds_its_stack_in_that_roles_account() -> anyhow::Result<()> {
    let emu = moto().await?;
    let sdk = quick_retries(emu.sdk_config());
    let engine = engine(sdk.clone(), ClientOptions::default());
    let own = clients(&engine).await?;
    ensure!(own.account_id != TARGET_ACCOUNT);
    let mut spec = spec("xacct1");
    spec.aws = Some(AwsAccess {
        role_arn: format!("arn:aws:iam::{TARGET_ACCOUNT}:role/tap-deployer"),
        external_id: Some("tap-payments-7f3a".into()),
    });
    let target = engine.aws_for(&spec).await?;
    ensure!(
        target.account_id == TARGET_ACCOUNT,
        "the assumed role acts in {}",
        target.account_id
    );

    // The role was assumed with the external id its trust policy requires (moto records each AssumeRole;
    // read before the stack exists: moto fails to serialise its whole state once it does).
    let state = emu.get_json("/moto-api/data.json").await?;
    let assumed = state["sts"]["AssumedRole"].to_string();
    ensure!(
        assumed.contains("tap-payments-7f3a") && assumed.contains("tap-deployer"),
        "AssumeRole calls recorded: {assumed}"
    );

    let report = apply(&engine, &target, &spec, 4).await?;
    ensure!(report.converged(), "{:?}", not_done(&report));
    ensure!(
        report.outputs.account_id.as_deref() == Some(TARGET_ACCOUNT)
            && report.outputs.region.as_deref() == Some(emu.region.as_str()),
        "outputs name {:?} / {:?}",
        report.outputs.account_id,
        report.outputs.region
    );
    let arn = report
        .outputs
        .state_machine_arn
        .clone()
        .context("no state machine ARN")?;
    ensure!(arn.contains(&format!(":{TARGET_ACCOUNT}:")), "{arn}");
    let there = Inventory::of(&target, "xacct1").await?;
    ensure!(there.total() >= 29, "in the role's account: {there:?}");
    let here = Inventory::of(&own, "xacct1").await?;
    ensure!(
        here.total() == 0,
        "in the controller's own account: {here:?}"
    );

    let destroyed = destroy(&engine, &spec, 3).await?;
    ensure!(destroyed.converged(), "{:?}", not_done(&destroyed));
    let left = Inventory::of(&target, "xacct1").await?;
    ensure!(left.total() == 0, "left: {left:?}");
    Ok(())
}
