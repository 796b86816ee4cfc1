//! IAM role, CloudWatch alarm and Step Functions state machine drivers against a local emulator
//! (`TAP_TEST_EMULATOR=moto|ministack`): create → observe equal → observe writes nothing → out-of-band
//! drift is reported field by field → update corrects exactly that → delete → gone → delete again is fine.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};
use tap_controller::aws::{Aws, ErrorClass};
use tap_controller::desired::{
    build_stack, names, AlarmSpec, Kind, ResourceId, ResourceSpec, RoleSpec, Stack, StackEnv,
    StateMachineSpec, Tags,
};
use tap_controller::drivers::cloudwatch::Alarms;
use tap_controller::drivers::iam::Roles;
use tap_controller::drivers::logs::LogGroups;
use tap_controller::drivers::sfn::StateMachines;
use tap_controller::drivers::{
    diff, normalise_policy, parse_policy, Changes, Ctx, Driver, Outputs,
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

fn stack(aws: &Aws) -> Stack {
    let spec: tap_controller::api::TransactionPipelineSpec =
        serde_yaml::from_str(SPEC).expect("example spec parses");
    build_stack(
        &spec,
        &StackEnv {
            account_id: aws.account_id.clone(),
            region: aws.region.clone(),
            partition: aws.partition.clone(),
            owner: "default/payments-dev".into(),
            extra_tags: Default::default(),
        },
    )
}

async fn start() -> anyhow::Result<(Emulator, Aws, Stack)> {
    let emu = Emulator::start().await?;
    let aws = Aws::connect(&emu.sdk_config()).await?;
    let stack = stack(&aws);
    Ok((emu, aws, stack))
}

/// The fields a diff names.
fn fields(changes: &Changes) -> BTreeSet<String> {
    changes.diffs.iter().map(|d| d.field.clone()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Write calls by operation name.
fn writes(aws: &Aws) -> BTreeMap<String, u64> {
    aws.calls
        .writes()
        .into_iter()
        .map(|((_, op), n)| (op, n))
        .collect()
}

fn role<'a>(stack: &'a Stack, name_part: &str) -> (&'a str, &'a RoleSpec, &'a Tags) {
    stack
        .resources
        .iter()
        .find_map(|r| match &r.spec {
            ResourceSpec::Role(spec) if r.name().contains(name_part) => {
                Some((r.name(), spec, &r.tags))
            }
            _ => None,
        })
        .expect("the stack has that role")
}

// ------------------------------------------------------------------------------------------------ IAM

#[tokio::test]
async fn role_create_observe_drift_update_delete() -> anyhow::Result<()> {
    let (_emu, aws, stack) = start().await?;
    let deps = BTreeMap::new();
    let ctx = Ctx {
        aws: &aws,
        deps: &deps,
    };
    let (name, desired, tags) = role(&stack, "csv-validator");

    assert!(
        Roles.observe(&ctx, name, desired).await?.is_none(),
        "absent before create"
    );
    let outputs = Roles.create(&ctx, name, desired, tags).await?;
    assert_eq!(
        outputs.arn.as_deref(),
        Some(stack.env.arns().role(name).as_str())
    );

    let observed = Roles.observe(&ctx, name, desired).await?.expect("created");
    let changes = diff(desired, tags, &observed);
    assert!(
        changes.is_empty(),
        "freshly created role differs: {:?}",
        changes.diffs
    );
    assert_eq!(observed.outputs.arn, outputs.arn);

    aws.calls.reset();
    Roles
        .observe(&ctx, name, desired)
        .await?
        .expect("still there");
    assert!(
        aws.calls.writes().is_empty(),
        "observe wrote: {:?}",
        aws.calls.writes()
    );

    // Out of band: the trust policy names another service, a statement of the inline policy is gone, a
    // foreign inline policy and a managed policy appear, a tag changed.
    let iam = &aws.iam;
    let mut trust = desired.assume_role_policy.clone();
    trust["Statement"]["Principal"]["Service"] = json!("ec2.amazonaws.com");
    iam.update_assume_role_policy()
        .role_name(name)
        .policy_document(trust.to_string())
        .send()
        .await?;
    let mut weakened = desired.inline_policies["least-privilege"].clone();
    let statements = weakened["Statement"]
        .as_array_mut()
        .expect("several statements");
    statements.pop();
    iam.put_role_policy()
        .role_name(name)
        .policy_name("least-privilege")
        .policy_document(weakened.to_string())
        .send()
        .await?;
    let rogue = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]});
    iam.put_role_policy()
        .role_name(name)
        .policy_name("rogue")
        .policy_document(rogue.to_string())
        .send()
        .await?;
    let managed = iam
        .create_policy()
        .policy_name("tap-test-extra")
        .policy_document(rogue.to_string())
        .send()
        .await?;
    let managed_arn = managed
        .policy()
        .and_then(|p| p.arn())
        .expect("policy arn")
        .to_string();
    iam.attach_role_policy()
        .role_name(name)
        .policy_arn(&managed_arn)
        .send()
        .await?;
    iam.tag_role()
        .role_name(name)
        .tags(
            aws_sdk_iam::types::Tag::builder()
                .key("team")
                .value("oops")
                .build()?,
        )
        .send()
        .await?;

    let observed = Roles
        .observe(&ctx, name, desired)
        .await?
        .expect("still there");
    let changes = diff(desired, tags, &observed);
    assert_eq!(
        fields(&changes),
        set(&[
            "assumeRolePolicy.Statement.Principal.Service",
            "inlinePolicies.least-privilege.Statement",
            "inlinePolicies.rogue",
            "managedPolicyArns",
            "tags.team",
        ])
    );
    let by_field = |f: &str| {
        changes
            .diffs
            .iter()
            .find(|d| d.field == f)
            .expect("diff present")
            .clone()
    };
    assert_eq!(
        by_field("assumeRolePolicy.Statement.Principal.Service").expected,
        json!("lambda.amazonaws.com")
    );
    assert_eq!(
        by_field("assumeRolePolicy.Statement.Principal.Service").actual,
        json!("ec2.amazonaws.com")
    );
    assert_eq!(
        by_field("inlinePolicies.least-privilege.Statement").actual,
        normalise_policy(weakened["Statement"].clone())
    );
    assert_eq!(by_field("inlinePolicies.rogue").expected, Value::Null);
    assert_eq!(
        by_field("inlinePolicies.rogue").actual,
        normalise_policy(rogue.clone())
    );
    assert_eq!(by_field("managedPolicyArns").expected, json!([]));
    assert_eq!(by_field("managedPolicyArns").actual, json!([managed_arn]));
    assert_eq!(by_field("tags.team").expected, json!("payments"));
    assert_eq!(by_field("tags.team").actual, json!("oops"));

    aws.calls.reset();
    Roles
        .update(&ctx, name, desired, tags, &observed, &changes)
        .await?;
    assert_eq!(
        writes(&aws),
        BTreeMap::from([
            ("UpdateAssumeRolePolicy".to_string(), 1),
            ("PutRolePolicy".to_string(), 1),
            ("DeleteRolePolicy".to_string(), 1),
            ("DetachRolePolicy".to_string(), 1),
            ("TagRole".to_string(), 1),
        ]),
        "update writes exactly the drifted parts"
    );
    let observed = Roles
        .observe(&ctx, name, desired)
        .await?
        .expect("still there");
    let changes = diff(desired, tags, &observed);
    assert!(changes.is_empty(), "after update: {:?}", changes.diffs);

    // A desired managed policy and a removed tag: attach and untag.
    let mut with_managed = desired.clone();
    with_managed.managed_policy_arns = vec![managed_arn.clone()];
    let mut fewer_tags = tags.clone();
    fewer_tags.remove("team");
    let changes = diff(&with_managed, &fewer_tags, &observed);
    assert_eq!(fields(&changes), set(&["managedPolicyArns", "tags.team"]));
    aws.calls.reset();
    Roles
        .update(&ctx, name, &with_managed, &fewer_tags, &observed, &changes)
        .await?;
    assert_eq!(
        writes(&aws),
        BTreeMap::from([
            ("AttachRolePolicy".to_string(), 1),
            ("UntagRole".to_string(), 1)
        ])
    );
    let observed = Roles
        .observe(&ctx, name, &with_managed)
        .await?
        .expect("still there");
    assert!(diff(&with_managed, &fewer_tags, &observed).is_empty());

    // Delete detaches and deletes the policies first (IAM refuses otherwise).
    Roles.delete(&ctx, name, &observed).await?;
    assert!(
        Roles.observe(&ctx, name, desired).await?.is_none(),
        "gone after delete"
    );
    Roles.delete(&ctx, name, &observed).await?;
    Ok(())
}

/// A crash between CreateRole and PutRolePolicy leaves a role without its policy: the engine then
/// observes and updates, and the update must complete it with just the missing write.
#[tokio::test]
async fn role_left_half_created_is_completed_by_update() -> anyhow::Result<()> {
    let (_emu, aws, stack) = start().await?;
    let deps = BTreeMap::new();
    let ctx = Ctx {
        aws: &aws,
        deps: &deps,
    };
    let (name, desired, tags) = role(&stack, "data-transformer");
    let mut request = aws
        .iam
        .create_role()
        .role_name(name)
        .assume_role_policy_document(desired.assume_role_policy.to_string());
    for (k, v) in tags {
        request = request.tags(aws_sdk_iam::types::Tag::builder().key(k).value(v).build()?);
    }
    request.send().await?;

    let observed = Roles.observe(&ctx, name, desired).await?.expect("exists");
    let changes = diff(desired, tags, &observed);
    assert_eq!(fields(&changes), set(&["inlinePolicies.least-privilege"]));
    assert_eq!(changes.diffs[0].actual, Value::Null);
    aws.calls.reset();
    Roles
        .update(&ctx, name, desired, tags, &observed, &changes)
        .await?;
    assert_eq!(
        writes(&aws),
        BTreeMap::from([("PutRolePolicy".to_string(), 1)])
    );
    let observed = Roles.observe(&ctx, name, desired).await?.expect("exists");
    assert!(diff(desired, tags, &observed).is_empty());
    Ok(())
}

/// Every role of the stack, created as built, reads back equal on this emulator.
#[tokio::test]
async fn every_stack_role_round_trips() -> anyhow::Result<()> {
    let (_emu, aws, stack) = start().await?;
    let deps = BTreeMap::new();
    let ctx = Ctx {
        aws: &aws,
        deps: &deps,
    };
    let roles: Vec<_> = stack
        .resources
        .iter()
        .filter_map(|r| match &r.spec {
            ResourceSpec::Role(spec) => Some((r.name(), spec, &r.tags)),
            _ => None,
        })
        .collect();
    assert_eq!(roles.len(), 4);
    for (name, desired, tags) in roles {
        Roles.create(&ctx, name, desired, tags).await?;
        let observed = Roles.observe(&ctx, name, desired).await?.expect("created");
        assert!(
            diff(desired, tags, &observed).is_empty(),
            "{name}: {:?}",
            diff(desired, tags, &observed).diffs
        );
    }
    Ok(())
}

/// Percent-encodes everything but unreserved characters, as IAM does to the documents it returns.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Serialises with object keys in reverse order and every scalar `Action`/`Resource` wrapped in a
/// one-element array: same policy, different text.
fn reshuffled(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.reverse();
            let body: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("Action" | "Resource", Value::String(_)) => format!("[{}]", reshuffled(v)),
                        _ => reshuffled(v),
                    };
                    format!("{}:{v}", Value::String(k.clone()))
                })
                .collect();
            format!("{{{}}}", body.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(reshuffled).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

#[test]
fn role_policies_round_trip_despite_iam_reordering_and_url_encoding() {
    let aws_env = StackEnv {
        account_id: "123456789012".into(),
        region: "us-east-1".into(),
        partition: "aws".into(),
        owner: "default/payments-dev".into(),
        extra_tags: Default::default(),
    };
    let spec: tap_controller::api::TransactionPipelineSpec =
        serde_yaml::from_str(SPEC).expect("example spec parses");
    let stack = build_stack(&spec, &aws_env);
    let mut checked = 0;
    for r in &stack.resources {
        let ResourceSpec::Role(desired) = &r.spec else {
            continue;
        };
        let documents =
            std::iter::once(&desired.assume_role_policy).chain(desired.inline_policies.values());
        for document in documents {
            let sent = document.to_string();
            let returned = url_encode(&reshuffled(document));
            assert_ne!(sent, returned);
            assert_eq!(
                &parse_policy(&returned),
                document,
                "{}: {returned}",
                r.name()
            );
            // Plain (not encoded) text, as some emulators return it, parses the same.
            assert_eq!(&parse_policy(&reshuffled(document)), document);
            checked += 1;
        }
    }
    assert_eq!(checked, 8, "4 roles × (trust + 1 inline policy)");
}

// ------------------------------------------------------------------------------------------------ CloudWatch

#[tokio::test]
async fn alarm_create_observe_drift_update_delete() -> anyhow::Result<()> {
    let (_emulator, aws, stack) = start().await?;
    let deps = BTreeMap::new();
    let ctx = Ctx {
        aws: &aws,
        deps: &deps,
    };
    let alarms: Vec<(&str, &AlarmSpec, &Tags)> = stack
        .resources
        .iter()
        .filter_map(|r| match &r.spec {
            ResourceSpec::Alarm(spec) => Some((r.name(), spec, &r.tags)),
            _ => None,
        })
        .collect();
    assert_eq!(alarms.len(), 4);

    // Every alarm of the stack reads back equal.
    for (name, desired, tags) in &alarms {
        assert!(
            Alarms.observe(&ctx, name, desired).await?.is_none(),
            "absent before create"
        );
        let outputs = Alarms.create(&ctx, name, desired, tags).await?;
        let observed = Alarms.observe(&ctx, name, desired).await?.expect("created");
        assert!(
            diff(*desired, tags, &observed).is_empty(),
            "{name}: {:?}",
            diff(*desired, tags, &observed).diffs
        );
        assert_eq!(observed.outputs.arn, outputs.arn);
    }

    let (name, desired, tags) = alarms[0];
    aws.calls.reset();
    Alarms
        .observe(&ctx, name, desired)
        .await?
        .expect("still there");
    assert!(
        aws.calls.writes().is_empty(),
        "observe wrote: {:?}",
        aws.calls.writes()
    );

    // Out of band: the threshold is raised (PutMetricAlarm rewrites the whole alarm) and a tag changed.
    let observed = Alarms
        .observe(&ctx, name, desired)
        .await?
        .expect("still there");
    let arn = observed.outputs.arn.clone().expect("alarm arn");
    let cw = &aws.cloudwatch;
    cw.put_metric_alarm()
        .alarm_name(name)
        .alarm_description(&desired.description)
        .namespace(&desired.namespace)
        .metric_name(&desired.metric_name)
        .set_dimensions(Some(
            desired
                .dimensions
                .iter()
                .map(|(k, v)| {
                    aws_sdk_cloudwatch::types::Dimension::builder()
                        .name(k)
                        .value(v)
                        .build()
                })
                .collect(),
        ))
        .statistic(desired.statistic.as_str().into())
        .period(desired.period_seconds)
        .evaluation_periods(desired.evaluation_periods)
        .threshold(desired.threshold + 10.0)
        .comparison_operator(desired.comparison_operator.as_str().into())
        .treat_missing_data(&desired.treat_missing_data)
        .set_alarm_actions(Some(desired.alarm_actions.clone()))
        .send()
        .await?;
    cw.tag_resource()
        .resource_arn(&arn)
        .tags(
            aws_sdk_cloudwatch::types::Tag::builder()
                .key("team")
                .value("oops")
                .build(),
        )
        .send()
        .await?;

    let observed = Alarms
        .observe(&ctx, name, desired)
        .await?
        .expect("still there");
    let changes = diff(desired, tags, &observed);
    assert_eq!(fields(&changes), set(&["tags.team", "threshold"]));
    let threshold = changes
        .diffs
        .iter()
        .find(|d| d.field == "threshold")
        .expect("threshold diff");
    assert_eq!(threshold.expected.as_f64(), Some(desired.threshold));
    assert_eq!(threshold.actual.as_f64(), Some(desired.threshold + 10.0));

    aws.calls.reset();
    Alarms
        .update(&ctx, name, desired, tags, &observed, &changes)
        .await?;
    assert_eq!(
        writes(&aws),
        BTreeMap::from([
            ("PutMetricAlarm".to_string(), 1),
            ("TagResource".to_string(), 1)
        ])
    );
    let observed = Alarms
        .observe(&ctx, name, desired)
        .await?
        .expect("still there");
    let changes = diff(desired, tags, &observed);
    assert!(changes.is_empty(), "after update: {:?}", changes.diffs);

    // A tag-only change does not rewrite the alarm.
    let mut fewer_tags = tags.clone();
    fewer_tags.remove("team");
    let changes = diff(desired, &fewer_tags, &observed);
    assert_eq!(fields(&changes), set(&["tags.team"]));
    aws.calls.reset();
    Alarms
        .update(&ctx, name, desired, &fewer_tags, &observed, &changes)
        .await?;
    assert_eq!(
        writes(&aws),
        BTreeMap::from([("UntagResource".to_string(), 1)])
    );
    let observed = Alarms
        .observe(&ctx, name, desired)
        .await?
        .expect("still there");
    assert!(diff(desired, &fewer_tags, &observed).is_empty());

    Alarms.delete(&ctx, name, &observed).await?;
    assert!(
        Alarms.observe(&ctx, name, desired).await?.is_none(),
        "gone after delete"
    );
    Alarms.delete(&ctx, name, &observed).await?;
    // The others are untouched.
    for (other, spec, _) in &alarms[1..] {
        assert!(
            Alarms.observe(&ctx, other, spec).await?.is_some(),
            "{other} still there"
        );
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------ Step Functions

/// The state machine of the stack, with its role and log group created (its prerequisites).
async fn state_machine_with_prerequisites<'a>(
    ctx: &Ctx<'_>,
    stack: &'a Stack,
) -> anyhow::Result<(&'a str, &'a StateMachineSpec, &'a Tags)> {
    let role_name = names::state_machine_role(&stack.suffix);
    let (role_name, role_spec, role_tags) = role(stack, &role_name);
    Roles.create(ctx, role_name, role_spec, role_tags).await?;
    let log_group = stack
        .get(&ResourceId {
            kind: Kind::LogGroup,
            name: names::state_machine_log_group(&stack.suffix),
        })
        .expect("state machine log group");
    let ResourceSpec::LogGroup(lg_spec) = &log_group.spec else {
        panic!("a log group")
    };
    let lg_name = log_group.name();
    LogGroups
        .create(ctx, lg_name, lg_spec, &log_group.tags)
        .await?;
    let machine = stack
        .resources
        .iter()
        .find_map(|r| match &r.spec {
            ResourceSpec::StateMachine(spec) => Some((r.name(), spec, &r.tags)),
            _ => None,
        })
        .expect("the stack has a state machine");
    assert!(
        machine.1.logging.log_group_arn.contains(lg_name),
        "logging goes to {lg_name}"
    );
    assert!(
        machine.1.role_arn.ends_with(&format!("role/{role_name}")),
        "runs as {role_name}"
    );
    Ok(machine)
}

/// Drift fields, minus what this emulator cannot keep. ministack drops `tracingConfiguration` on
/// read-back (notes, gap 3): the driver reports it as it is (tracing off), and the engine's
/// uncorrectable-drift back-off handles it; here that one field is not asserted on ministack.
fn sfn_fields(emu: &Emulator, changes: &Changes) -> BTreeSet<String> {
    let mut f = fields(changes);
    if emu.kind == EmulatorKind::Ministack {
        f.remove("tracingEnabled");
    }
    f
}

#[tokio::test]
async fn state_machine_create_observe_drift_update_delete() -> anyhow::Result<()> {
    let (emu, aws, stack) = start().await?;
    let deps: BTreeMap<ResourceId, Outputs> = BTreeMap::new();
    let ctx = Ctx {
        aws: &aws,
        deps: &deps,
    };
    let (name, desired, tags) = state_machine_with_prerequisites(&ctx, &stack).await?;

    assert!(
        StateMachines.observe(&ctx, name, desired).await?.is_none(),
        "absent before create"
    );
    let outputs = StateMachines.create(&ctx, name, desired, tags).await?;
    assert_eq!(
        outputs.arn.as_deref(),
        Some(stack.env.arns().state_machine(name).as_str())
    );

    let observed = StateMachines
        .observe(&ctx, name, desired)
        .await?
        .expect("created");
    let changes = diff(desired, tags, &observed);
    assert_eq!(
        sfn_fields(&emu, &changes),
        BTreeSet::new(),
        "freshly created: {:?}",
        changes.diffs
    );
    if emu.kind == EmulatorKind::Moto {
        assert!(observed.spec.tracing_enabled, "moto keeps tracing");
    }
    assert_eq!(observed.outputs.arn, outputs.arn);

    aws.calls.reset();
    StateMachines
        .observe(&ctx, name, desired)
        .await?
        .expect("still there");
    assert!(
        aws.calls.writes().is_empty(),
        "observe wrote: {:?}",
        aws.calls.writes()
    );

    // Out of band: the definition's comment and the log level change (fields both emulators keep), and a tag.
    let mut definition = desired.definition.clone();
    definition["Comment"] = json!("edited by hand");
    let other_level = if desired.logging.level == "ALL" {
        "FATAL"
    } else {
        "ALL"
    };
    let sfn = &aws.sfn;
    let arn = outputs.arn.clone().expect("arn");
    sfn.update_state_machine()
        .state_machine_arn(&arn)
        .definition(definition.to_string())
        .logging_configuration(
            aws_sdk_sfn::types::LoggingConfiguration::builder()
                .level(aws_sdk_sfn::types::LogLevel::from(other_level))
                .include_execution_data(desired.logging.include_execution_data)
                .destinations(
                    aws_sdk_sfn::types::LogDestination::builder()
                        .cloud_watch_logs_log_group(
                            aws_sdk_sfn::types::CloudWatchLogsLogGroup::builder()
                                .log_group_arn(&desired.logging.log_group_arn)
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .send()
        .await?;
    sfn.tag_resource()
        .resource_arn(&arn)
        .tags(
            aws_sdk_sfn::types::Tag::builder()
                .key("team")
                .value("oops")
                .build(),
        )
        .send()
        .await?;

    let observed = StateMachines
        .observe(&ctx, name, desired)
        .await?
        .expect("still there");
    let changes = diff(desired, tags, &observed);
    assert_eq!(
        sfn_fields(&emu, &changes),
        set(&["definition.Comment", "logging.level", "tags.team"]),
        "{:?}",
        changes.diffs
    );
    let level = changes
        .diffs
        .iter()
        .find(|d| d.field == "logging.level")
        .expect("level diff");
    assert_eq!(
        (level.expected.clone(), level.actual.clone()),
        (json!(desired.logging.level), json!(other_level))
    );
    let comment = changes
        .diffs
        .iter()
        .find(|d| d.field == "definition.Comment")
        .expect("comment diff");
    assert_eq!(comment.actual, json!("edited by hand"));

    aws.calls.reset();
    StateMachines
        .update(&ctx, name, desired, tags, &observed, &changes)
        .await?;
    assert_eq!(
        writes(&aws),
        BTreeMap::from([
            ("UpdateStateMachine".to_string(), 1),
            ("TagResource".to_string(), 1)
        ]),
        "one UpdateStateMachine call for every drifted part"
    );
    let observed = StateMachines
        .observe(&ctx, name, desired)
        .await?
        .expect("still there");
    let changes = diff(desired, tags, &observed);
    assert_eq!(
        sfn_fields(&emu, &changes),
        BTreeSet::new(),
        "after update: {:?}",
        changes.diffs
    );

    // A tag-only change does not touch the state machine itself.
    let mut fewer_tags = tags.clone();
    fewer_tags.remove("team");
    let changes = diff(desired, &fewer_tags, &observed);
    assert_eq!(sfn_fields(&emu, &changes), set(&["tags.team"]));
    let changes = Changes {
        diffs: changes
            .diffs
            .into_iter()
            .filter(|d| d.top() == "tags")
            .collect(),
    };
    aws.calls.reset();
    StateMachines
        .update(&ctx, name, desired, &fewer_tags, &observed, &changes)
        .await?;
    assert_eq!(
        writes(&aws),
        BTreeMap::from([("UntagResource".to_string(), 1)])
    );

    StateMachines.delete(&ctx, name, &observed).await?;
    assert!(
        StateMachines.observe(&ctx, name, desired).await?.is_none(),
        "gone after delete"
    );
    StateMachines.delete(&ctx, name, &observed).await?;
    Ok(())
}

#[tokio::test]
async fn state_machine_type_change_is_terminal_and_writes_nothing() -> anyhow::Result<()> {
    let (_emu, aws, stack) = start().await?;
    let deps: BTreeMap<ResourceId, Outputs> = BTreeMap::new();
    let ctx = Ctx {
        aws: &aws,
        deps: &deps,
    };
    let (name, desired, tags) = state_machine_with_prerequisites(&ctx, &stack).await?;
    StateMachines.create(&ctx, name, desired, tags).await?;

    let mut standard = desired.clone();
    standard.machine_type = "STANDARD".into();
    let observed = StateMachines
        .observe(&ctx, name, &standard)
        .await?
        .expect("created");
    let changes = diff(&standard, tags, &observed);
    assert!(changes.touches("machineType"), "{:?}", changes.diffs);
    aws.calls.reset();
    let err = StateMachines
        .update(&ctx, name, &standard, tags, &observed, &changes)
        .await
        .expect_err("type cannot change in place");
    assert_eq!(err.class, ErrorClass::Terminal);
    assert!(err.message.contains("replaced"), "{}", err.message);
    assert!(
        aws.calls.writes().is_empty(),
        "nothing written: {:?}",
        aws.calls.writes()
    );
    Ok(())
}
