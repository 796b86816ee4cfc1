//! The desired model is where least privilege, naming rules and the state machine are proven.

use std::collections::BTreeSet;

use serde_json::Value;

use super::policies::UNSCOPABLE_ACTIONS;
use super::*;
use crate::api::{validate, TransactionPipelineSpec};

const LONGEST_SUFFIX: &str = "abcdefghij-klmnopq9"; // 19 chars + see below
fn spec(suffix: &str) -> TransactionPipelineSpec {
    serde_saphyr::from_str(&format!(
        r#"
environmentSuffix: {suffix}
tags: {{team: payments}}
functions:
  csvValidator: {{image: {{tag: v1}}, memoryMb: 512, timeoutSeconds: 30, environment: {{LOG_LEVEL: debug}}}}
  dataTransformer: {{image: {{tag: v2}}}}
  notificationSender: {{image: {{uri: "123456789012.dkr.ecr.us-east-1.amazonaws.com/other:v9"}}}}
stateMachine: {{retry: {{maxAttempts: 4, intervalSeconds: 3, backoffRate: 1.5}}, logLevel: ALL}}
"#
    ))
    .unwrap()
}

fn env() -> StackEnv {
    StackEnv {
        account_id: "123456789012".into(),
        region: "eu-central-1".into(),
        partition: "aws".into(),
        owner: "payments/payments-dev".into(),
        extra_tags: [("cost-center".to_string(), "42".to_string())].into(),
    }
}

fn stack(suffix: &str) -> Stack {
    let spec = spec(suffix);
    validate(&spec).expect("valid spec");
    build_stack(&spec, &env())
}

fn of_kind(stack: &Stack, kind: Kind) -> Vec<&Resource> {
    stack
        .resources
        .iter()
        .filter(|r| r.id.kind == kind)
        .collect()
}

#[test]
fn the_stack_has_every_resource_once() {
    let s = stack("dev1");
    let count = |k| of_kind(&s, k).len();
    assert_eq!(count(Kind::Bucket), 1);
    assert_eq!(count(Kind::Table), 2);
    assert_eq!(count(Kind::Repository), 3);
    assert_eq!(count(Kind::Function), 3);
    assert_eq!(count(Kind::Role), 4);
    assert_eq!(count(Kind::LogGroup), 4);
    assert_eq!(count(Kind::Queue), 1);
    assert_eq!(count(Kind::Topic), 1);
    assert_eq!(count(Kind::StateMachine), 1);
    assert_eq!(count(Kind::RestApi), 1);
    assert_eq!(count(Kind::Stage), 1);
    assert_eq!(count(Kind::ApiKey), 1);
    assert_eq!(count(Kind::UsagePlan), 1);
    assert_eq!(count(Kind::Permission), 2);
    assert_eq!(count(Kind::Alarm), 4);
    assert_eq!(s.resources.len(), 30);
    let ids: BTreeSet<_> = s.resources.iter().map(|r| &r.id).collect();
    assert_eq!(ids.len(), s.resources.len(), "resource ids are unique");
}

#[test]
fn names_fit_aws_limits_for_the_longest_suffix() {
    let suffix = format!("{LONGEST_SUFFIX}x");
    assert_eq!(suffix.len(), 20);
    let s = stack(&suffix);
    for r in &s.resources {
        let name = &r.id.name;
        let limit = match r.id.kind {
            Kind::Bucket => 63,
            Kind::Role | Kind::Function => 64,
            Kind::Queue | Kind::StateMachine => 80,
            Kind::Table | Kind::Repository | Kind::Topic | Kind::Alarm => 255,
            Kind::LogGroup => 512,
            Kind::RestApi | Kind::UsagePlan | Kind::ApiKey => 1024,
            // `<function>/<statement id>`: the statement id's limit is 100.
            Kind::Permission => 64 + 1 + 100,
            // `<api>/<stage>`: the stage name's limit is 128.
            Kind::Stage => 1024 + 1 + 128,
        };
        assert!(
            name.len() <= limit,
            "{} name {name} is {} > {limit}",
            r.id.kind,
            name.len()
        );
        assert!(name.contains(&suffix), "{name} carries the suffix");
        if r.id.kind == Kind::Stage {
            continue;
        }
    }
    let bucket = &of_kind(&s, Kind::Bucket)[0].id.name;
    assert!(
        bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "bucket names are lower case"
    );
    assert!(
        bucket.ends_with("-123456789012"),
        "bucket carries the account id: {bucket}"
    );
}

#[test]
fn every_resource_carries_ownership_and_user_tags() {
    let s = stack("dev1");
    for r in s.resources.iter().filter(|r| r.id.kind.is_tagged()) {
        assert_eq!(
            r.tags.get(OWNER_TAG).map(String::as_str),
            Some("payments/payments-dev"),
            "{}",
            r.id
        );
        assert_eq!(r.tags.get(SUFFIX_TAG).map(String::as_str), Some("dev1"));
        assert_eq!(r.tags.get("team").map(String::as_str), Some("payments"));
        assert_eq!(r.tags.get("cost-center").map(String::as_str), Some("42"));
    }
}

fn statements(policy: &Value) -> Vec<&Value> {
    match &policy["Statement"] {
        Value::Array(items) => items.iter().collect(),
        single => vec![single],
    }
}

fn strings(v: &Value) -> Vec<&str> {
    match v {
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        Value::String(s) => vec![s.as_str()],
        _ => vec![],
    }
}

#[test]
fn every_iam_policy_is_least_privilege_and_scoped_to_this_stack() {
    let s = stack("dev1");
    let roles = of_kind(&s, Kind::Role);
    assert_eq!(
        roles.len(),
        4,
        "one role per function and one for the state machine"
    );
    let own_arn = |arn: &str| {
        arn.contains(":tap-dev1-")
            || arn.contains("/tap-dev1-")
            || arn.contains(":table/tap-dev1-")
            || arn.contains(":::tap-dev1-")
    };
    for role in roles {
        let ResourceSpec::Role(spec) = &role.spec else {
            unreachable!()
        };
        assert!(
            spec.managed_policy_arns.is_empty(),
            "{}: no broad managed policies",
            role.id
        );
        for (name, policy) in &spec.inline_policies {
            for st in statements(policy) {
                assert_eq!(st["Effect"], "Allow");
                let actions = strings(&st["Action"]);
                let resources = strings(&st["Resource"]);
                assert!(!actions.is_empty());
                for action in &actions {
                    assert!(
                        !action.contains('*'),
                        "{} {name}: wildcard action {action}",
                        role.id
                    );
                }
                for resource in &resources {
                    if *resource == "*" {
                        for action in &actions {
                            assert!(
                                UNSCOPABLE_ACTIONS.contains(action),
                                "{} {name}: {action} on * although AWS can scope it",
                                role.id
                            );
                        }
                    } else {
                        assert!(
                            own_arn(resource),
                            "{} {name}: {resource} is not one of this stack's ARNs",
                            role.id
                        );
                        assert!(
                            resource.contains("123456789012")
                                || resource.starts_with("arn:aws:s3:::"),
                            "{resource} names the account"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn each_function_gets_only_what_it_uses() {
    let s = stack("dev1");
    let actions_of = |role: &str| -> BTreeSet<String> {
        let r = s
            .get(&ResourceId {
                kind: Kind::Role,
                name: role.into(),
            })
            .unwrap();
        let ResourceSpec::Role(spec) = &r.spec else {
            unreachable!()
        };
        spec.inline_policies
            .values()
            .flat_map(|p| {
                statements(p).into_iter().flat_map(|st| {
                    strings(&st["Action"])
                        .into_iter()
                        .map(String::from)
                        .collect::<Vec<_>>()
                })
            })
            .collect()
    };
    let validator = actions_of("tap-dev1-csv-validator-role");
    assert!(validator.contains("states:StartExecution") && validator.contains("s3:PutObject"));
    assert!(!validator.contains("sns:Publish") && !validator.contains("dynamodb:BatchWriteItem"));
    let transformer = actions_of("tap-dev1-data-transformer-role");
    assert!(
        transformer.contains("dynamodb:BatchWriteItem") && !transformer.contains("s3:PutObject")
    );
    let notifier = actions_of("tap-dev1-notification-sender-role");
    assert!(notifier.contains("sns:Publish") && !notifier.contains("s3:GetObject"));
    let machine = actions_of("tap-dev1-pipeline-role");
    assert!(machine.contains("lambda:InvokeFunction") && machine.contains("sqs:SendMessage"));
}

#[test]
fn functions_are_arm64_images_with_tracing_dlq_and_stack_environment() {
    let s = stack("dev1");
    for f in of_kind(&s, Kind::Function) {
        let ResourceSpec::Function(spec) = &f.spec else {
            unreachable!()
        };
        assert_eq!(spec.architectures, ["arm64"]);
        assert_eq!(spec.tracing_mode, "Active");
        assert_eq!(
            spec.dead_letter_target_arn,
            "arn:aws:sqs:eu-central-1:123456789012:tap-dev1-dlq"
        );
        for key in [
            "TRANSACTIONS_TABLE",
            "STATUS_TABLE",
            "BUCKET_NAME",
            "TOPIC_ARN",
            "STATE_MACHINE_ARN",
        ] {
            assert!(spec.environment.contains_key(key), "{} lacks {key}", f.id);
        }
        assert!(f.depends_on.iter().any(|d| d.kind == Kind::Role));
    }
    let validator = s
        .get(&ResourceId {
            kind: Kind::Function,
            name: "tap-dev1-csv-validator".into(),
        })
        .unwrap();
    let ResourceSpec::Function(v) = &validator.spec else {
        unreachable!()
    };
    assert_eq!(
        v.image_uri,
        "123456789012.dkr.ecr.eu-central-1.amazonaws.com/tap-dev1-csv-validator:v1"
    );
    assert_eq!(
        v.image_in_repository,
        Some(EcrImage {
            repository: "tap-dev1-csv-validator".into(),
            tag: "v1".into()
        })
    );
    assert_eq!(v.environment["LOG_LEVEL"], "debug");
    assert_eq!(v.memory_mb, 512);
    let sender = s
        .get(&ResourceId {
            kind: Kind::Function,
            name: "tap-dev1-notification-sender".into(),
        })
        .unwrap();
    let ResourceSpec::Function(n) = &sender.spec else {
        unreachable!()
    };
    assert_eq!(
        n.image_uri,
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/other:v9"
    );
    assert_eq!(
        n.image_in_repository, None,
        "a full URI is not waited for in our repository"
    );
}

#[test]
fn the_state_machine_is_express_with_retries_and_a_catch_to_the_dlq() {
    let s = stack("dev1");
    let machine = of_kind(&s, Kind::StateMachine)[0];
    let ResourceSpec::StateMachine(spec) = &machine.spec else {
        unreachable!()
    };
    assert_eq!(spec.machine_type, "EXPRESS");
    assert_eq!(spec.logging.level, "ALL");
    assert!(spec
        .logging
        .log_group_arn
        .ends_with("log-group:/aws/vendedlogs/states/tap-dev1-pipeline:*"));
    let asl = &spec.definition;
    assert_eq!(asl["StartAt"], "Validate");
    let states = asl["States"].as_object().unwrap();
    let order = ["Validate", "Transform", "Notify"];
    for (i, name) in order.iter().enumerate() {
        let st = &states[*name];
        assert_eq!(st["Type"], "Task");
        let retry = &st["Retry"][0];
        assert_eq!(retry["MaxAttempts"], 4);
        assert_eq!(retry["IntervalSeconds"], 3);
        assert_eq!(retry["BackoffRate"], 1.5);
        assert_eq!(st["Catch"][0]["ErrorEquals"][0], "States.ALL");
        assert_eq!(st["Catch"][0]["Next"], "SendToDeadLetterQueue");
        match order.get(i + 1) {
            Some(next) => assert_eq!(st["Next"], *next),
            None => assert_eq!(st["End"], true),
        }
    }
    assert_eq!(
        states["Validate"]["Resource"],
        "arn:aws:lambda:eu-central-1:123456789012:function:tap-dev1-csv-validator"
    );
    let dlq = &states["SendToDeadLetterQueue"];
    assert_eq!(dlq["Resource"], "arn:aws:states:::sqs:sendMessage");
    assert_eq!(
        dlq["Parameters"]["QueueUrl"],
        "https://sqs.eu-central-1.amazonaws.com/123456789012/tap-dev1-dlq"
    );
    assert_eq!(
        dlq["Parameters"]["MessageBody.$"], "$",
        "the failed input goes to the DLQ"
    );
    assert_eq!(
        states[dlq["Next"].as_str().unwrap()]["Type"],
        "Task",
        "then a failure notification"
    );
    assert_eq!(states["Failed"]["Type"], "Fail");
    // Every Next points at a state that exists.
    for st in states.values() {
        for next in [&st["Next"], &st["Catch"][0]["Next"]] {
            if let Some(n) = next.as_str() {
                assert!(states.contains_key(n), "dangling Next {n}");
            }
        }
    }
}

#[test]
fn dependencies_exist_and_form_no_cycle() {
    let s = stack("dev1");
    let mut done: BTreeSet<&ResourceId> = BTreeSet::new();
    while done.len() < s.resources.len() {
        let before = done.len();
        for r in &s.resources {
            for d in &r.depends_on {
                assert!(s.get(d).is_some(), "{} depends on missing {d}", r.id);
            }
            if r.depends_on.iter().all(|d| done.contains(d)) {
                done.insert(&r.id);
            }
        }
        assert!(
            done.len() > before,
            "dependency cycle among {:?}",
            s.resources
                .iter()
                .filter(|r| !done.contains(&r.id))
                .map(|r| &r.id)
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn api_usage_plan_and_bucket_are_wired_to_the_validator() {
    let s = stack("dev1");
    let ResourceSpec::RestApi(api) = &of_kind(&s, Kind::RestApi)[0].spec else {
        unreachable!()
    };
    assert_eq!(api.resource_path, "/upload");
    assert_eq!(api.method.http_method, "POST");
    assert!(api.method.api_key_required);
    assert_eq!(api.integration.integration_type, "AWS_PROXY");
    assert!(api
        .integration
        .uri
        .contains("function:tap-dev1-csv-validator/invocations"));
    let permission = |statement: &str| {
        let found = of_kind(&s, Kind::Permission)
            .into_iter()
            .find(|r| r.id.name.ends_with(statement))
            .unwrap_or_else(|| panic!("no permission {statement}"));
        match &found.spec {
            ResourceSpec::Permission(p) => (found, p.clone()),
            _ => unreachable!(),
        }
    };
    let (api_permission, api_spec) = permission("tap-apigateway-invoke");
    assert_eq!(api_spec.function_name, "tap-dev1-csv-validator");
    assert_eq!(
        api_spec.source_arn,
        "arn:aws:execute-api:eu-central-1:123456789012:{api_id}/*/POST/upload"
    );
    assert!(
        api_permission
            .depends_on
            .iter()
            .any(|d| d.kind == Kind::RestApi),
        "the API's permission waits for the API's id"
    );
    let stage = of_kind(&s, Kind::Stage)[0];
    assert!(
        stage.depends_on.contains(&api_permission.id),
        "the stage goes live only once the API may invoke the function"
    );
    let ResourceSpec::UsagePlan(plan) = &of_kind(&s, Kind::UsagePlan)[0].spec else {
        unreachable!()
    };
    assert_eq!(
        (
            plan.throttle_rate_limit,
            plan.throttle_burst_limit,
            plan.quota_limit,
            plan.quota_period.as_str()
        ),
        (100.0, 200, 10_000, "DAY")
    );
    let ResourceSpec::Bucket(bucket) = &of_kind(&s, Kind::Bucket)[0].spec else {
        unreachable!()
    };
    assert!(bucket.block_public_access);
    assert_eq!(bucket.encryption, "AES256");
    assert_eq!(bucket.notification.prefix, "validated/");
    let (s3_permission, s3_spec) = permission("tap-s3-invoke");
    assert_eq!(
        s3_spec.source_arn,
        format!("arn:aws:s3:::{}", of_kind(&s, Kind::Bucket)[0].id.name)
    );
    assert!(
        of_kind(&s, Kind::Bucket)[0]
            .depends_on
            .contains(&s3_permission.id),
        "AWS checks that S3 may invoke the function before it takes the notification"
    );
    let plan = of_kind(&s, Kind::UsagePlan)[0];
    for kind in [Kind::Stage, Kind::ApiKey] {
        assert!(
            plan.depends_on.iter().any(|d| d.kind == kind),
            "plan after its {kind}"
        );
    }
}
