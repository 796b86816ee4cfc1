//! IAM roles: trust policy, inline and managed policies, tags.

use serde_json::{json, Value};
use tap_controller::desired::policies::{normalise_policy, parse_policy};
use tap_controller::desired::{Kind, ResourceSpec};
use tap_controller::drivers::diff;
use tap_controller::drivers::iam::Roles;
use tap_tests::lifecycle::written;
use tap_tests::stack::TestStack;

use super::{diff_of, fields, set};

#[tokio::test]
async fn role_create_observe_drift_update_delete() -> anyhow::Result<()> {
    let t = TestStack::example().await?;
    let role = t.subject(Roles, Kind::Role, "csv-validator-role")?;
    let (name, desired, tags) = (role.name(), &role.desired, &role.tags);
    role.assert_absent().await?;
    let outputs = role.create().await?;
    assert_eq!(
        outputs.arn.as_deref(),
        Some(t.stack.env.arns().role(name).as_str())
    );
    let observed = role.assert_converged().await?;
    assert_eq!(observed.outputs.arn, outputs.arn);

    // Out of band: the trust policy names another service, a statement of the inline policy is gone, a
    // foreign inline policy and a managed policy appear, a tag changed.
    let iam = &t.aws.iam;
    let mut trust = desired.assume_role_policy.clone();
    trust["Statement"]["Principal"]["Service"] = json!("ec2.amazonaws.com");
    iam.update_assume_role_policy()
        .role_name(name)
        .policy_document(trust.to_string())
        .send()
        .await?;
    let mut weakened = desired.inline_policies["least-privilege"].clone();
    weakened["Statement"]
        .as_array_mut()
        .expect("several statements")
        .pop();
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

    let (observed, changes) = role
        .assert_drift(&[
            "assumeRolePolicy.Statement.Principal.Service",
            "inlinePolicies.least-privilege.Statement",
            "inlinePolicies.rogue",
            "managedPolicyArns",
            "tags.team",
        ])
        .await?;
    let service = diff_of(&changes, "assumeRolePolicy.Statement.Principal.Service");
    assert_eq!(service.expected, json!("lambda.amazonaws.com"));
    assert_eq!(service.actual, json!("ec2.amazonaws.com"));
    assert_eq!(
        diff_of(&changes, "inlinePolicies.least-privilege.Statement").actual,
        normalise_policy(weakened["Statement"].clone())
    );
    assert_eq!(
        diff_of(&changes, "inlinePolicies.rogue").expected,
        Value::Null
    );
    assert_eq!(
        diff_of(&changes, "inlinePolicies.rogue").actual,
        normalise_policy(rogue.clone())
    );
    assert_eq!(diff_of(&changes, "managedPolicyArns").expected, json!([]));
    assert_eq!(
        diff_of(&changes, "managedPolicyArns").actual,
        json!([managed_arn])
    );
    assert_eq!(diff_of(&changes, "tags.team").expected, json!("payments"));
    assert_eq!(diff_of(&changes, "tags.team").actual, json!("oops"));
    let observed = role
        .correct(
            &observed,
            &changes,
            &[
                "UpdateAssumeRolePolicy",
                "PutRolePolicy",
                "DeleteRolePolicy",
                "DetachRolePolicy",
                "TagRole",
            ],
        )
        .await?;

    // A desired managed policy and a removed tag: attach and untag.
    let mut with_managed = desired.clone();
    with_managed.managed_policy_arns = vec![managed_arn.clone()];
    let mut fewer_tags = tags.clone();
    fewer_tags.remove("team");
    let changes = diff(&with_managed, &fewer_tags, &observed.spec, &observed.tags);
    assert_eq!(fields(&changes), set(&["managedPolicyArns", "tags.team"]));
    t.aws.calls.reset();
    role.update_with(&with_managed, &fewer_tags, &observed, &changes)
        .await?;
    assert_eq!(
        written(&t.aws),
        set(&["AttachRolePolicy", "UntagRole"]),
        "attach and untag, nothing else"
    );
    let observed = role.observe_as(&with_managed).await?.expect("still there");
    assert!(diff(&with_managed, &fewer_tags, &observed.spec, &observed.tags).is_empty());

    // Delete detaches and deletes the policies first (IAM refuses otherwise): those observed, then,
    // refused for one put after that read, those listed afresh.
    iam.put_role_policy()
        .role_name(name)
        .policy_name("late")
        .policy_document(rogue.to_string())
        .send()
        .await?;
    role.assert_deleted(&observed).await?;
    Ok(())
}

/// A crash between CreateRole and PutRolePolicy leaves a role without its policy: the engine then
/// observes and updates, and the update must complete it with just the missing write.
#[tokio::test]
async fn role_left_half_created_is_completed_by_update() -> anyhow::Result<()> {
    let t = TestStack::example().await?;
    let role = t.subject(Roles, Kind::Role, "data-transformer-role")?;
    let mut request = t
        .aws
        .iam
        .create_role()
        .role_name(role.name())
        .assume_role_policy_document(role.desired.assume_role_policy.to_string());
    for (k, v) in &role.tags {
        request = request.tags(aws_sdk_iam::types::Tag::builder().key(k).value(v).build()?);
    }
    request.send().await?;
    let (observed, changes) = role
        .assert_drift(&["inlinePolicies.least-privilege"])
        .await?;
    assert_eq!(changes.diffs[0].actual, Value::Null);
    role.correct(&observed, &changes, &["PutRolePolicy"])
        .await?;
    Ok(())
}

/// Every role of the stack, created as built, reads back equal on this emulator.
#[tokio::test]
async fn every_stack_role_round_trips() -> anyhow::Result<()> {
    let t = TestStack::example().await?;
    let roles: Vec<_> = t
        .stack
        .resources
        .iter()
        .filter(|r| r.id.kind == Kind::Role)
        .map(|r| t.subject(Roles, Kind::Role, &r.id.name))
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(roles.len(), 4);
    for role in roles {
        role.create().await?;
        role.assert_converged().await?;
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
    let stack = tap_tests::stack::offline_stack(tap_tests::stack::EXAMPLE);
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
