//! Adoption: a stack deployed before by other tooling (`tests/scripts/legacy_stack.py`, standing in for
//! the CDKTF stack this controller replaces) has our names and none of our tags. With the default
//! `adoptionPolicy: Never` every such resource is a Conflict and stays as it was; with `Adopt` each one is
//! adopted once (tagged as the pipeline's, then converged), the stack converges with no duplicate, a
//! resync writes nothing, another pipeline adopts none of it, and `destroy` removes it all.

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{ensure, Context};
use tap_controller::api::AdoptionPolicy;
use tap_controller::aws::{Aws, ClientOptions};
use tap_controller::desired::OWNER_TAG;
use tap_controller::drivers::WaitReason;
use tap_controller::engine::{Action, DriftMemory, Mode, Pipeline, Report};
use tap_tests::inventory::Inventory;
use tap_tests::pipeline::{apply_counted, clients, destroy, engine, not_done, spec};

use super::{moto, quick_retries};

const SUFFIX: &str = "legacy1";

/// Runs the legacy deployment script; the `(kind, name)` of each resource it made.
fn deploy_legacy_stack(endpoint: &str, suffix: &str) -> anyhow::Result<BTreeSet<(String, String)>> {
    let python = std::env::var("TAP_MOTO_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/legacy_stack.py");
    let out = Command::new(python)
        .args([script, "--endpoint", endpoint, "--suffix", suffix])
        .output()
        .context("running legacy_stack.py")?;
    ensure!(
        out.status.success(),
        "legacy_stack.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, n)| (k.to_string(), n.to_string()))
        .collect())
}

fn by_action(report: &Report, f: impl Fn(&Action) -> bool) -> BTreeSet<(String, String)> {
    report
        .resources
        .iter()
        .filter(|r| f(&r.action))
        .map(|r| (r.id.kind.to_string(), r.id.name.clone()))
        .collect()
}

/// The tags of the legacy stack's dead-letter queue.
async fn queue_tags(
    aws: &Aws,
) -> anyhow::Result<aws_sdk_sqs::operation::list_queue_tags::ListQueueTagsOutput> {
    let url = aws
        .sqs
        .get_queue_url()
        .queue_name(format!("tap-{SUFFIX}-dlq"))
        .send()
        .await?;
    Ok(aws
        .sqs
        .list_queue_tags()
        .queue_url(url.queue_url().unwrap_or_default())
        .send()
        .await?)
}

/// What a user checks of the legacy resources: memory, log retention, the broad inline policy, the
/// other tooling's tag, and the data in the bucket.
async fn legacy_settings(aws: &Aws) -> anyhow::Result<(i32, Option<i32>, bool, bool, usize)> {
    let function = format!("tap-{SUFFIX}-csv-validator");
    let config = aws
        .lambda
        .get_function_configuration()
        .function_name(&function)
        .send()
        .await?;
    let groups = aws
        .logs
        .describe_log_groups()
        .log_group_name_prefix(format!("/aws/lambda/{function}"))
        .send()
        .await?;
    let retention = groups
        .log_groups()
        .first()
        .and_then(|g| g.retention_in_days());
    let policies = aws
        .iam
        .list_role_policies()
        .role_name(format!("{function}-role"))
        .send()
        .await?;
    let broad = policies
        .policy_names()
        .iter()
        .any(|p| p == "legacy-everything");
    let tags = queue_tags(aws).await?;
    let cdktf_tag = tags
        .tags()
        .is_some_and(|t| t.get("managed-by").map(String::as_str) == Some("cdktf"));
    let account = aws.account_id.clone();
    let objects = aws
        .s3
        .list_objects_v2()
        .bucket(format!("tap-{SUFFIX}-uploads-{account}"))
        .send()
        .await?
        .key_count()
        .unwrap_or(0) as usize;
    Ok((
        config.memory_size().unwrap_or_default(),
        retention,
        broad,
        cdktf_tag,
        objects,
    ))
}

/// The csv-validator's statements letting the bucket invoke it: exactly one, with the source account
/// condition the spec adds.
async fn ensure_one_bucket_permission(aws: &Aws, suffix: &str) -> anyhow::Result<()> {
    let policy = aws
        .lambda
        .get_policy()
        .function_name(format!("tap-{suffix}-csv-validator"))
        .send()
        .await?;
    let policy: serde_json::Value = serde_json::from_str(policy.policy().unwrap_or("{}"))?;
    let statements: Vec<&serde_json::Value> = policy["Statement"]
        .as_array()
        .map(|s| s.iter().filter(|s| s["Sid"] == "tap-s3-invoke").collect())
        .unwrap_or_default();
    ensure!(
        statements.len() == 1
            && statements[0]["Condition"]["StringEquals"]["AWS:SourceAccount"]
                == aws.account_id.as_str(),
        "the bucket's permission: one statement with the source account, not {statements:?}"
    );
    Ok(())
}

/// A stack never written by us adopts at its first walk: what can only be created is created without a
/// read first, so the permission other tooling granted is met by AddPermission, which AWS refuses for an
/// existing statement id. The statement is then read and converged: never a second one of that id.
#[tokio::test]
async fn a_first_walk_adopting_a_function_converges_its_permission_once() -> anyhow::Result<()> {
    const SUFFIX: &str = "legacy2";
    let emu = moto().await?;
    let sdk = quick_retries(emu.sdk_config());
    let engine = engine(sdk.clone(), ClientOptions::default());
    let aws = clients(&engine).await?;
    let legacy = deploy_legacy_stack(&emu.endpoint, SUFFIX)?;
    ensure!(legacy.contains(&(
        "Permission".into(),
        format!("tap-{SUFFIX}-csv-validator/tap-s3-invoke")
    )));
    let mut adopt = spec(SUFFIX);
    adopt.adoption_policy = AdoptionPolicy::Adopt;
    let (report, _) = apply_counted(&engine, &aws, &adopt, 4).await?;
    ensure!(report.converged(), "{:?}", not_done(&report));
    ensure_one_bucket_permission(&aws, SUFFIX).await?;
    let destroyed = destroy(&engine, &adopt, 3).await?;
    ensure!(destroyed.converged(), "destroy: {:?}", not_done(&destroyed));
    Ok(())
}

#[tokio::test]
async fn a_stack_deployed_by_other_tooling_is_adopted_only_when_asked() -> anyhow::Result<()> {
    let emu = moto().await?;
    let sdk = quick_retries(emu.sdk_config());
    let engine = engine(sdk.clone(), ClientOptions::default());
    let aws = clients(&engine).await?;
    let legacy = deploy_legacy_stack(&emu.endpoint, SUFFIX)?;
    ensure!(legacy.len() >= 20, "the script made {legacy:?}");
    let before = legacy_settings(&aws).await?;
    ensure!(
        before == (256, Some(7), true, true, 1),
        "legacy stack: {before:?}"
    );

    // Never (the default): every legacy resource is a Conflict, and nothing of it changes.
    let mut never = spec(SUFFIX);
    never.adoption_policy = AdoptionPolicy::Never;
    let (report, _) = apply_counted(&engine, &aws, &never, 2).await?;
    // A Conflict, or (a function, the REST API…) waiting for a dependency that is one.
    let untouched = by_action(&report, |a| {
        matches!(
            a,
            Action::Conflict(_) | Action::Wait(WaitReason::Dependency { .. })
        )
    });
    ensure!(
        legacy.is_subset(&untouched),
        "not a Conflict under adoptionPolicy Never: {:?}",
        legacy.difference(&untouched).collect::<Vec<_>>()
    );
    ensure!(by_action(&report, |a| matches!(a, Action::Conflict(_))).len() >= 10);
    ensure!(by_action(&report, |a| matches!(a, Action::Adopt(_))).is_empty());
    ensure!(
        legacy_settings(&aws).await? == before,
        "adoptionPolicy Never changed the legacy stack"
    );

    // A plan with Adopt says what it would adopt, and writes nothing.
    let mut adopt = spec(SUFFIX);
    adopt.adoption_policy = AdoptionPolicy::Adopt;
    let pipeline = Pipeline {
        owner: tap_tests::stack::OWNER,
        spec: &adopt,
    };
    let writes = aws.calls.writes().values().sum::<u64>();
    let plan = engine
        .reconcile(&pipeline, Mode::DryRun, &mut DriftMemory::default())
        .await?;
    let planned = by_action(&plan, |a| matches!(a, Action::Adopt(_)));
    ensure!(
        legacy.is_subset(&planned),
        "the plan would not adopt {:?}",
        legacy.difference(&planned).collect::<Vec<_>>()
    );
    ensure!(
        aws.calls.writes().values().sum::<u64>() == writes,
        "the plan wrote"
    );

    // Adopt: each legacy resource adopted, in the first pass; then converged, exactly once each.
    let mut memory = DriftMemory::default();
    let first = engine
        .reconcile(&pipeline, Mode::Apply, &mut memory)
        .await?;
    let mut adopted = by_action(&first, |a| matches!(a, Action::Adopt(_)));
    let nested: BTreeSet<(String, String)> = adopted.difference(&legacy).cloned().collect();
    // A permission is a statement of its function's policy, ours with the function: read after the
    // function's adoption it is ours already, and updated rather than adopted.
    adopted.extend(
        by_action(&first, |a| matches!(a, Action::Update(_)))
            .into_iter()
            .filter(|(kind, _)| kind == "Permission"),
    );
    ensure!(
        legacy.is_subset(&adopted),
        "not adopted: {:?}",
        first
            .resources
            .iter()
            .filter(|r| !adopted.contains(&(r.id.kind.to_string(), r.id.name.clone())))
            .filter(|r| legacy.contains(&(r.id.kind.to_string(), r.id.name.clone())))
            .map(|r| format!("{}: {}", r.id, r.message()))
            .collect::<Vec<_>>()
    );
    // Only resources inside adopted ones (none here: the script made no stage) may be adopted beyond
    // what the script made. Its permission's create without a read first (the stack was never written by
    // us) is refused, then the statement read and converged as its function's.
    ensure!(
        nested.is_empty(),
        "adopted what the script did not make: {nested:?}"
    );
    let (report, passes) = apply_counted(&engine, &aws, &adopt, 4).await?;
    ensure!(
        report.converged(),
        "after adoption: {:?}",
        not_done(&report)
    );
    let inventory = Inventory::of(&aws, SUFFIX).await?;
    ensure!(
        inventory.duplicates().is_empty(),
        "duplicates after adoption: {:?}",
        inventory.duplicates()
    );
    let (memory_mb, retention, broad, cdktf_tag, objects) = legacy_settings(&aws).await?;
    ensure!(
        (memory_mb, retention, broad) == (512, Some(14), false),
        "not converged to the spec: memory {memory_mb}, retention {retention:?}, broad policy {broad}"
    );
    ensure!(
        cdktf_tag,
        "the other tooling's tag was removed (tagPolicy Merge keeps it)"
    );
    ensure!(objects == 1, "the bucket's data: {objects} objects");
    ensure_one_bucket_permission(&aws, SUFFIX).await?;
    let queue_tags = queue_tags(&aws).await?;
    ensure!(
        queue_tags
            .tags()
            .and_then(|t| t.get(OWNER_TAG))
            .map(String::as_str)
            == Some(tap_tests::stack::OWNER),
        "the adopted queue is not tagged as ours: {:?}",
        queue_tags.tags()
    );

    // A resync writes nothing and adopts nothing again.
    let writes = aws.calls.writes().values().sum::<u64>();
    let resync = engine
        .reconcile(&pipeline, Mode::Apply, &mut memory)
        .await?;
    ensure!(resync.converged(), "resync: {:?}", not_done(&resync));
    ensure!(by_action(&resync, |a| matches!(a, Action::Adopt(_))).is_empty());
    let resync_writes = aws.calls.writes().values().sum::<u64>() - writes;
    ensure!(resync_writes == 0, "the resync wrote {resync_writes} times");

    // Another pipeline with Adopt adopts none of it: it is this pipeline's now.
    let other = Pipeline {
        owner: "other-team/payments",
        spec: &adopt,
    };
    let theirs = engine
        .reconcile(&other, Mode::Apply, &mut DriftMemory::default())
        .await?;
    ensure!(
        by_action(&theirs, |a| matches!(a, Action::Adopt(_))).is_empty(),
        "another pipeline adopted {:?}",
        by_action(&theirs, |a| matches!(a, Action::Adopt(_)))
    );
    ensure!(
        aws.calls.writes().values().sum::<u64>() - writes == 0,
        "another pipeline wrote to the adopted stack"
    );

    let destroyed = destroy(&engine, &adopt, 3).await?;
    ensure!(destroyed.converged(), "destroy: {:?}", not_done(&destroyed));
    let left = Inventory::of(&aws, SUFFIX).await?;
    ensure!(left.total() == 0, "left after destroy: {left:?}");
    eprintln!(
        "adopted {} resources made by legacy_stack.py; converged in {passes} more passes",
        legacy.len()
    );
    Ok(())
}

/// What cannot be proven to be the one meant is never adopted: one of two same-named untagged API keys
/// (API Gateway does not keep names unique), or a queue carrying another tap-controller's `tap.dev/` tag.
#[tokio::test]
async fn an_ambiguous_or_half_tagged_resource_is_not_adopted() -> anyhow::Result<()> {
    let emu = moto().await?;
    let sdk = quick_retries(emu.sdk_config());
    let engine = engine(sdk.clone(), ClientOptions::default());
    let aws = clients(&engine).await?;
    let suffix = "legacy2";
    for _ in 0..2 {
        aws.apigateway
            .create_api_key()
            .name(format!("tap-{suffix}-api-key"))
            .enabled(true)
            .send()
            .await?;
    }
    aws.sqs
        .create_queue()
        .queue_name(format!("tap-{suffix}-dlq"))
        .tags("tap.dev/suffix", suffix)
        .send()
        .await?;
    let mut adopt = spec(suffix);
    adopt.adoption_policy = AdoptionPolicy::Adopt;
    let (report, _) = apply_counted(&engine, &aws, &adopt, 3).await?;
    let message = |kind: &str| {
        report
            .resources
            .iter()
            .find(|r| r.id.kind.as_str() == kind && matches!(r.action, Action::Conflict(_)))
            .map(|r| r.message())
    };
    let key = message("ApiKey").context("the API key is not a Conflict")?;
    ensure!(key.contains("one of 2 same-named resources"), "{key}");
    let queue = message("Queue").context("the queue is not a Conflict")?;
    ensure!(queue.contains("carries tap.dev/ tags"), "{queue}");
    ensure!(by_action(&report, |a| matches!(a, Action::Adopt(_))).is_empty());
    let keys = aws.apigateway.get_api_keys().send().await?;
    ensure!(
        keys.items().len() == 2
            && keys
                .items()
                .iter()
                .all(|k| k.tags().is_none_or(|t| t.is_empty())),
        "the keys were changed: {:?}",
        keys.items()
    );
    Ok(())
}
