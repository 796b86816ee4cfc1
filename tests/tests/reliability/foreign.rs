//! Ownership: for every kind, a resource under our name that someone else made (tagged as theirs, not
//! with our ownership tag) is a Conflict and is left as it was, after `apply` and after `destroy`.
//!
//! Each kind gets a fresh account: the stack is provisioned, then that one resource is handed to
//! someone else (our ownership tag replaced by `owner: someone-else`), which leaves exactly the account
//! that someone else creating it under our name would. A Permission and a Stage prove ownership
//! through their parent (the function, the REST API): handing the parent over makes them foreign too,
//! and the parent's snapshot includes them. The snapshot is what AWS answers to the kind's describe
//! and tag reads (request ids stripped): every field the controller could write, and more.

use anyhow::{ensure, Context};
use aws_sdk_s3::primitives::ByteStream;
use tap_controller::aws::{Aws, ClientOptions};
use tap_controller::desired::{Kind, OWNER_TAG};
use tap_controller::drivers::WaitReason;
use tap_controller::engine::{Action, Report, ResourceReport};
use tap_tests::pipeline::{apply, destroy, engine, not_done, spec};

use super::{moto, quick_retries};

const SUFFIX: &str = "own1";
const THEIRS: (&str, &str) = ("owner", "someone-else");

/// Every kind that proves ownership by its own tags.
const TAGGED: [Kind; 13] = [
    Kind::Bucket,
    Kind::Table,
    Kind::Repository,
    Kind::LogGroup,
    Kind::Queue,
    Kind::Topic,
    Kind::Role,
    Kind::Function,
    Kind::StateMachine,
    Kind::RestApi,
    Kind::ApiKey,
    Kind::UsagePlan,
    Kind::Alarm,
];

#[tokio::test]
async fn a_resource_someone_else_made_under_our_name_is_a_conflict_and_left_untouched(
) -> anyhow::Result<()> {
    let emu = moto().await?;
    let sdk = quick_retries(emu.sdk_config());
    let spec = spec(SUFFIX);
    let aws = Aws::connect(&sdk).await?;
    let engine = engine(sdk.clone(), ClientOptions::default());
    // Kinds not covered by TAGGED are covered through their parent.
    for kind in Kind::ALL {
        ensure!(
            TAGGED.contains(&kind) || matches!(kind, Kind::Permission | Kind::Stage),
            "{kind} is not covered"
        );
    }

    for kind in TAGGED {
        emu.reset().await?;
        let report = apply(&engine, &aws, &spec, 6).await?;
        ensure!(report.converged(), "{:?}", not_done(&report));
        let theirs = report
            .resources
            .iter()
            .find(|r| r.id.kind == kind)
            .with_context(|| format!("no {kind} in the stack"))?
            .clone();
        disown(&aws, &theirs)
            .await
            .with_context(|| format!("handing {} over", theirs.id))?;
        if kind == Kind::Bucket {
            // Their data: a teardown of ours empties our bucket, never theirs.
            aws.s3
                .put_object()
                .bucket(&theirs.id.name)
                .key("theirs.csv")
                .body(ByteStream::from_static(b"id,amount\n1,2\n"))
                .send()
                .await?;
        }
        let before = snapshot(&aws, &theirs).await?;

        let applied = apply(&engine, &aws, &spec, 2).await?;
        ensure!(
            is_conflict(&applied, &theirs),
            "apply with someone else's {}: {:?}",
            theirs.id,
            action(&applied, &theirs)
        );
        let after_apply = snapshot(&aws, &theirs).await?;
        ensure!(
            after_apply == before,
            "apply changed someone else's {}:\nbefore {before}\nafter  {after_apply}",
            theirs.id
        );

        let destroyed = destroy(&engine, &spec, 3).await?;
        ensure!(
            is_conflict(&destroyed, &theirs),
            "destroy with someone else's {}: {:?}",
            theirs.id,
            action(&destroyed, &theirs)
        );
        let after_destroy = snapshot(&aws, &theirs).await?;
        ensure!(
            after_destroy == before,
            "destroy changed someone else's {}:\nbefore {before}\nafter  {after_destroy}",
            theirs.id
        );
        // Everything else of ours is gone.
        let left: Vec<String> = destroyed
            .resources
            .iter()
            .filter(|r| r.id != theirs.id && !r.is_done())
            .filter(|r| !blocked_by(r, &theirs))
            .map(|r| format!("{}: {}", r.id, r.message()))
            .collect();
        ensure!(
            left.is_empty(),
            "with someone else's {kind}, destroy left {left:?}"
        );
        eprintln!("{kind}: Conflict on apply and destroy, unchanged");
    }
    Ok(())
}

/// Defect 1 as found: an API key under our name, made beforehand by someone else, was bound to our
/// usage plan and deleted by `destroy`.
#[tokio::test]
async fn an_api_key_someone_else_made_first_is_neither_bound_nor_deleted() -> anyhow::Result<()> {
    let emu = moto().await?;
    let sdk = quick_retries(emu.sdk_config());
    let spec = spec("own2");
    let aws = Aws::connect(&sdk).await?;
    let engine = engine(sdk.clone(), ClientOptions::default());
    let key = aws
        .apigateway
        .create_api_key()
        .name("tap-own2-api-key")
        .enabled(true)
        .tags(THEIRS.0, THEIRS.1)
        .send()
        .await?;
    let key_id = key.id().context("key id")?.to_string();

    let report = apply(&engine, &aws, &spec, 6).await?;
    let ours = report
        .resources
        .iter()
        .find(|r| r.id.kind == Kind::ApiKey)
        .context("no api key in the report")?;
    ensure!(
        matches!(ours.action, Action::Conflict(_)),
        "their key: {:?}",
        ours.action
    );
    let plans = aws.apigateway.get_usage_plans().send().await?;
    for plan in plans.items() {
        let keys = aws
            .apigateway
            .get_usage_plan_keys()
            .usage_plan_id(plan.id().unwrap_or_default())
            .send()
            .await?;
        ensure!(
            keys.items().iter().all(|k| k.id() != Some(key_id.as_str())),
            "their key was bound to usage plan {:?}",
            plan.name()
        );
    }
    let _ = destroy(&engine, &spec, 3).await?;
    let still = aws.apigateway.get_api_key().api_key(&key_id).send().await;
    ensure!(still.is_ok(), "their key was deleted: {still:?}");
    Ok(())
}

fn action<'a>(report: &'a Report, theirs: &ResourceReport) -> Option<&'a Action> {
    report
        .resources
        .iter()
        .find(|r| r.id == theirs.id)
        .map(|r| &r.action)
}

/// A Conflict on the resource, or (in a teardown, where what lives inside a resource goes first) on a
/// part owned through it that the resource then waits for: a function's permission, an API's stage.
fn is_conflict(report: &Report, theirs: &ResourceReport) -> bool {
    match action(report, theirs) {
        Some(Action::Conflict(_)) => true,
        Some(Action::Wait(WaitReason::Dependency { id, .. })) => report.resources.iter().any(|r| {
            &r.id == id && owned_through(r, theirs) && matches!(r.action, Action::Conflict(_))
        }),
        _ => false,
    }
}

fn owned_through(part: &ResourceReport, parent: &ResourceReport) -> bool {
    matches!(part.id.kind, Kind::Permission | Kind::Stage)
        && (part.id.name.starts_with(&format!("{}/", parent.id.name))
            || part.message().contains(&parent.id.name))
}

/// A resource that waits on (or, in a teardown, is kept by) the foreign one: its dependents in the stack
/// cannot be converged by us, and say so.
fn blocked_by(resource: &ResourceReport, theirs: &ResourceReport) -> bool {
    resource.message().contains(&theirs.id.name)
}

/// Replaces our ownership tag with someone else's.
async fn disown(aws: &Aws, r: &ResourceReport) -> anyhow::Result<()> {
    let arn = r.outputs.arn.clone().unwrap_or_default();
    let id = r.outputs.id.clone().unwrap_or_default();
    let name = r.id.name.as_str();
    let (key, value) = (THEIRS.0.to_string(), THEIRS.1.to_string());
    let ours = OWNER_TAG.to_string();
    match r.id.kind {
        Kind::Bucket => {
            use aws_sdk_s3::types::{Tag, Tagging};
            aws.s3
                .put_bucket_tagging()
                .bucket(name)
                .tagging(
                    Tagging::builder()
                        .tag_set(Tag::builder().key(key).value(value).build()?)
                        .build()?,
                )
                .send()
                .await?;
        }
        Kind::Table => {
            use aws_sdk_dynamodb::types::Tag;
            let arn = table_arn(aws, name).await?;
            aws.dynamodb
                .tag_resource()
                .resource_arn(&arn)
                .tags(Tag::builder().key(key).value(value).build()?)
                .send()
                .await?;
            aws.dynamodb
                .untag_resource()
                .resource_arn(&arn)
                .tag_keys(ours)
                .send()
                .await?;
        }
        Kind::Repository => {
            use aws_sdk_ecr::types::Tag;
            let arn = repository_arn(aws, name).await?;
            aws.ecr
                .tag_resource()
                .resource_arn(&arn)
                .tags(Tag::builder().key(key).value(value).build()?)
                .send()
                .await?;
            aws.ecr
                .untag_resource()
                .resource_arn(&arn)
                .tag_keys(ours)
                .send()
                .await?;
        }
        Kind::LogGroup => {
            let arn = log_group_arn(aws, name);
            aws.logs
                .tag_resource()
                .resource_arn(&arn)
                .tags(key, value)
                .send()
                .await?;
            aws.logs
                .untag_resource()
                .resource_arn(&arn)
                .tag_keys(ours)
                .send()
                .await?;
        }
        Kind::Queue => {
            let url = queue_url(aws, name).await?;
            aws.sqs
                .tag_queue()
                .queue_url(&url)
                .tags(key, value)
                .send()
                .await?;
            aws.sqs
                .untag_queue()
                .queue_url(&url)
                .tag_keys(ours)
                .send()
                .await?;
        }
        Kind::Topic => {
            use aws_sdk_sns::types::Tag;
            aws.sns
                .tag_resource()
                .resource_arn(&arn)
                .tags(Tag::builder().key(key).value(value).build()?)
                .send()
                .await?;
            aws.sns
                .untag_resource()
                .resource_arn(&arn)
                .tag_keys(ours)
                .send()
                .await?;
        }
        Kind::Role => {
            use aws_sdk_iam::types::Tag;
            aws.iam
                .tag_role()
                .role_name(name)
                .tags(Tag::builder().key(key).value(value).build()?)
                .send()
                .await?;
            aws.iam
                .untag_role()
                .role_name(name)
                .tag_keys(ours)
                .send()
                .await?;
        }
        Kind::Function => {
            let arn = function_arn(aws, name).await?;
            aws.lambda
                .tag_resource()
                .resource(&arn)
                .tags(key, value)
                .send()
                .await?;
            aws.lambda
                .untag_resource()
                .resource(&arn)
                .tag_keys(ours)
                .send()
                .await?;
        }
        Kind::StateMachine => {
            use aws_sdk_sfn::types::Tag;
            aws.sfn
                .tag_resource()
                .resource_arn(&arn)
                .tags(Tag::builder().key(key).value(value).build())
                .send()
                .await?;
            aws.sfn
                .untag_resource()
                .resource_arn(&arn)
                .tag_keys(ours)
                .send()
                .await?;
        }
        Kind::RestApi | Kind::ApiKey | Kind::UsagePlan => {
            let collection = match r.id.kind {
                Kind::RestApi => "restapis",
                Kind::ApiKey => "apikeys",
                _ => "usageplans",
            };
            ensure!(!id.is_empty(), "{} has no id in the report", r.id);
            let arn = format!("arn:aws:apigateway:{}::/{collection}/{id}", aws.region);
            aws.apigateway
                .tag_resource()
                .resource_arn(&arn)
                .tags(key, value)
                .send()
                .await?;
            aws.apigateway
                .untag_resource()
                .resource_arn(&arn)
                .tag_keys(ours)
                .send()
                .await?;
        }
        Kind::Alarm => {
            use aws_sdk_cloudwatch::types::Tag;
            let arn = alarm_arn(aws, name).await?;
            aws.cloudwatch
                .tag_resource()
                .resource_arn(&arn)
                .tags(Tag::builder().key(key).value(value).build())
                .send()
                .await?;
            aws.cloudwatch
                .untag_resource()
                .resource_arn(&arn)
                .tag_keys(ours)
                .send()
                .await?;
        }
        Kind::Permission | Kind::Stage => unreachable!("owned through their parent"),
    }
    Ok(())
}

/// What AWS answers about the resource (and what lives inside it), request ids stripped.
async fn snapshot(aws: &Aws, r: &ResourceReport) -> anyhow::Result<String> {
    let name = r.id.name.as_str();
    let id = r.outputs.id.clone().unwrap_or_default();
    let parts: Vec<String> = match r.id.kind {
        Kind::Bucket => vec![
            format!(
                "{:?}",
                aws.s3
                    .get_bucket_tagging()
                    .bucket(name)
                    .send()
                    .await?
                    .tag_set()
            ),
            format!(
                "{:?}",
                aws.s3
                    .get_bucket_encryption()
                    .bucket(name)
                    .send()
                    .await?
                    .server_side_encryption_configuration()
            ),
            format!(
                "{:?}",
                aws.s3
                    .get_public_access_block()
                    .bucket(name)
                    .send()
                    .await?
                    .public_access_block_configuration()
            ),
            format!(
                "{:?}",
                aws.s3
                    .get_bucket_notification_configuration()
                    .bucket(name)
                    .send()
                    .await?
                    .lambda_function_configurations()
            ),
            format!(
                "{:?}",
                aws.s3
                    .list_objects_v2()
                    .bucket(name)
                    .send()
                    .await?
                    .contents()
                    .iter()
                    .map(|o| (o.key().map(str::to_string), o.e_tag().map(str::to_string)))
                    .collect::<Vec<_>>()
            ),
        ],
        Kind::Table => {
            let arn = table_arn(aws, name).await?;
            vec![
                format!(
                    "{:?}",
                    aws.dynamodb
                        .describe_table()
                        .table_name(name)
                        .send()
                        .await?
                        .table()
                ),
                format!(
                    "{:?}",
                    aws.dynamodb
                        .list_tags_of_resource()
                        .resource_arn(&arn)
                        .send()
                        .await?
                        .tags()
                ),
            ]
        }
        Kind::Repository => {
            let arn = repository_arn(aws, name).await?;
            vec![
                format!(
                    "{:?}",
                    aws.ecr
                        .describe_repositories()
                        .repository_names(name)
                        .send()
                        .await?
                        .repositories()
                ),
                format!(
                    "{:?}",
                    aws.ecr
                        .list_tags_for_resource()
                        .resource_arn(&arn)
                        .send()
                        .await?
                        .tags()
                ),
                format!(
                    "{:?}",
                    aws.ecr
                        .describe_images()
                        .repository_name(name)
                        .send()
                        .await?
                        .image_details()
                        .iter()
                        .map(|i| i.image_digest().map(str::to_string))
                        .collect::<Vec<_>>()
                ),
            ]
        }
        Kind::LogGroup => vec![
            format!(
                "{:?}",
                aws.logs
                    .describe_log_groups()
                    .log_group_name_prefix(name)
                    .send()
                    .await?
                    .log_groups()
                    .iter()
                    .find(|g| g.log_group_name() == Some(name))
            ),
            format!(
                "{:?}",
                sorted(
                    aws.logs
                        .list_tags_for_resource()
                        .resource_arn(log_group_arn(aws, name))
                        .send()
                        .await?
                        .tags()
                )
            ),
        ],
        Kind::Queue => {
            let url = queue_url(aws, name).await?;
            let attributes = aws
                .sqs
                .get_queue_attributes()
                .queue_url(&url)
                .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
                .send()
                .await?;
            vec![
                format!("{:?}", sorted(attributes.attributes())),
                format!(
                    "{:?}",
                    sorted(
                        aws.sqs
                            .list_queue_tags()
                            .queue_url(&url)
                            .send()
                            .await?
                            .tags()
                    )
                ),
            ]
        }
        Kind::Topic => {
            let arn = r.outputs.arn.clone().unwrap_or_default();
            vec![
                format!(
                    "{:?}",
                    sorted(
                        aws.sns
                            .get_topic_attributes()
                            .topic_arn(&arn)
                            .send()
                            .await?
                            .attributes()
                    )
                ),
                format!(
                    "{:?}",
                    aws.sns
                        .list_tags_for_resource()
                        .resource_arn(&arn)
                        .send()
                        .await?
                        .tags()
                ),
                format!(
                    "{:?}",
                    aws.sns
                        .list_subscriptions_by_topic()
                        .topic_arn(&arn)
                        .send()
                        .await?
                        .subscriptions()
                ),
            ]
        }
        Kind::Role => vec![
            format!(
                "{:?}",
                aws.iam.get_role().role_name(name).send().await?.role()
            ),
            format!(
                "{:?}",
                aws.iam
                    .list_role_policies()
                    .role_name(name)
                    .send()
                    .await?
                    .policy_names()
            ),
            format!(
                "{:?}",
                aws.iam
                    .list_attached_role_policies()
                    .role_name(name)
                    .send()
                    .await?
                    .attached_policies()
            ),
        ],
        Kind::Function => {
            let function = aws.lambda.get_function().function_name(name).send().await?;
            let policy = aws.lambda.get_policy().function_name(name).send().await;
            let mut configuration = function.configuration().cloned();
            let environment = configuration
                .as_mut()
                .and_then(|c| c.environment.take())
                .and_then(|e| e.variables);
            vec![
                format!("{configuration:?}"),
                format!("{:?}", sorted(environment.as_ref())),
                format!("{:?}", sorted(function.tags())),
                format!("{:?}", policy.ok().and_then(|p| p.policy)),
            ]
        }
        Kind::StateMachine => {
            let arn = r.outputs.arn.clone().unwrap_or_default();
            vec![
                strip_request_ids(format!(
                    "{:?}",
                    aws.sfn
                        .describe_state_machine()
                        .state_machine_arn(&arn)
                        .send()
                        .await?
                )),
                format!(
                    "{:?}",
                    aws.sfn
                        .list_tags_for_resource()
                        .resource_arn(&arn)
                        .send()
                        .await?
                        .tags()
                ),
            ]
        }
        Kind::RestApi => {
            let mut api = aws
                .apigateway
                .get_rest_api()
                .rest_api_id(&id)
                .send()
                .await?;
            let tags = sorted(api.tags.take().as_ref());
            let resources = aws
                .apigateway
                .get_resources()
                .rest_api_id(&id)
                .embed("methods")
                .send()
                .await?;
            let mut methods = Vec::new();
            for resource in resources.items() {
                for (verb, method) in resource.resource_methods().into_iter().flatten() {
                    let integration = method.method_integration();
                    methods.push(format!(
                        "{:?} {verb} {:?} {:?} {:?} {:?} {:?}",
                        resource.path(),
                        method.authorization_type(),
                        method.api_key_required(),
                        method.request_validator_id(),
                        integration.and_then(|i| i.uri()),
                        integration.and_then(|i| i.r#type()),
                    ));
                }
            }
            methods.sort();
            let mut stages = aws
                .apigateway
                .get_stages()
                .rest_api_id(&id)
                .send()
                .await?
                .item;
            let stages: Vec<String> = stages
                .iter_mut()
                .flatten()
                .map(|stage| {
                    let tags = sorted(stage.tags.take().as_ref());
                    let variables = sorted(stage.variables.take().as_ref());
                    let settings = stage.method_settings.take().map(|m| m.len());
                    format!("{stage:?} {tags:?} {variables:?} {settings:?}")
                })
                .collect();
            let deployments = aws
                .apigateway
                .get_deployments()
                .rest_api_id(&id)
                .send()
                .await?;
            let deployments: Vec<String> = deployments
                .items()
                .iter()
                .map(|d| format!("{:?} {:?} {:?}", d.id(), d.description(), d.created_date()))
                .collect();
            vec![
                strip_request_ids(format!("{api:?}")),
                format!("{tags:?}"),
                format!("{methods:?}"),
                format!("{stages:?}"),
                format!("{deployments:?}"),
            ]
        }
        Kind::ApiKey => {
            let mut key = aws
                .apigateway
                .get_api_key()
                .api_key(&id)
                .include_value(true)
                .send()
                .await?;
            let tags = sorted(key.tags.take().as_ref());
            vec![strip_request_ids(format!("{key:?}")), format!("{tags:?}")]
        }
        Kind::UsagePlan => {
            let mut plan = aws
                .apigateway
                .get_usage_plan()
                .usage_plan_id(&id)
                .send()
                .await?;
            let tags = sorted(plan.tags.take().as_ref());
            let stages: Vec<String> = plan
                .api_stages
                .take()
                .into_iter()
                .flatten()
                .map(|mut s| {
                    let throttle = s.throttle.take().map(|t| sorted(Some(&t)));
                    format!("{s:?} {throttle:?}")
                })
                .collect();
            vec![
                strip_request_ids(format!("{plan:?}")),
                format!("{tags:?} {stages:?}"),
                format!(
                    "{:?}",
                    aws.apigateway
                        .get_usage_plan_keys()
                        .usage_plan_id(&id)
                        .send()
                        .await?
                        .items()
                ),
            ]
        }
        Kind::Alarm => {
            let arn = alarm_arn(aws, name).await?;
            vec![
                format!(
                    "{:?}",
                    aws.cloudwatch
                        .describe_alarms()
                        .alarm_names(name)
                        .send()
                        .await?
                        .metric_alarms()
                ),
                format!(
                    "{:?}",
                    aws.cloudwatch
                        .list_tags_for_resource()
                        .resource_arn(&arn)
                        .send()
                        .await?
                        .tags()
                ),
            ]
        }
        Kind::Permission | Kind::Stage => unreachable!("owned through their parent"),
    };
    Ok(parts.join("\n"))
}

fn sorted<V: std::fmt::Debug>(
    map: Option<&std::collections::HashMap<impl Ord + std::fmt::Debug, V>>,
) -> Vec<String> {
    let mut entries: Vec<String> = map
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k:?}={v:?}"))
        .collect();
    entries.sort();
    entries
}

/// Debug of a whole output minus its `_request_id` (different on every call).
fn strip_request_ids(debug: String) -> String {
    let mut out = String::with_capacity(debug.len());
    let mut rest = debug.as_str();
    while let Some(start) = rest.find("_request_id: ") {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let end = tail.find(['}', ',']).unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

async fn table_arn(aws: &Aws, name: &str) -> anyhow::Result<String> {
    let table = aws
        .dynamodb
        .describe_table()
        .table_name(name)
        .send()
        .await?;
    table
        .table()
        .and_then(|t| t.table_arn())
        .map(str::to_string)
        .context("table arn")
}

async fn repository_arn(aws: &Aws, name: &str) -> anyhow::Result<String> {
    let found = aws
        .ecr
        .describe_repositories()
        .repository_names(name)
        .send()
        .await?;
    found
        .repositories()
        .first()
        .and_then(|r| r.repository_arn())
        .map(str::to_string)
        .context("repository arn")
}

fn log_group_arn(aws: &Aws, name: &str) -> String {
    format!(
        "arn:aws:logs:{}:{}:log-group:{name}",
        aws.region, aws.account_id
    )
}

async fn queue_url(aws: &Aws, name: &str) -> anyhow::Result<String> {
    let found = aws.sqs.get_queue_url().queue_name(name).send().await?;
    found.queue_url().map(str::to_string).context("queue url")
}

async fn function_arn(aws: &Aws, name: &str) -> anyhow::Result<String> {
    let found = aws.lambda.get_function().function_name(name).send().await?;
    found
        .configuration()
        .and_then(|c| c.function_arn())
        .map(str::to_string)
        .context("function arn")
}

async fn alarm_arn(aws: &Aws, name: &str) -> anyhow::Result<String> {
    let found = aws
        .cloudwatch
        .describe_alarms()
        .alarm_names(name)
        .send()
        .await?;
    found
        .metric_alarms()
        .first()
        .and_then(|a| a.alarm_arn())
        .map(str::to_string)
        .context("alarm arn")
}
