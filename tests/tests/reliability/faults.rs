//! Faults through the proxy (microburst, in front of moto): answers lost after AWS acted on a create that
//! is not idempotent, throttling and 5xx in each service's own error shape beyond what the SDK's own
//! retries absorb, errors real AWS gives while a role propagates or a resource is busy, and a heavy mix
//! of all of them. Each test: the stack converges with exactly one of everything, and a teardown (under
//! API Gateway's 429s where said) leaves the account empty. Each checks that its faults fired.

use anyhow::ensure;
use serde_json::{json, Value};
use tap_controller::aws::{Aws, ClientOptions};
use tap_tests::faults::Microburst;
use tap_tests::inventory::Inventory;
use tap_tests::pipeline::{apply, apply_counted, destroy, destroy_counted, engine, not_done, spec};

use super::{moto, quick_retries};

/// Each service's own throttling error: (botocore service name, code, HTTP status).
const THROTTLING: [(&str, &str, u16); 12] = [
    ("s3", "SlowDown", 503),
    ("dynamodb", "ThrottlingException", 400),
    ("lambda", "TooManyRequestsException", 429),
    ("stepfunctions", "ThrottlingException", 400),
    ("apigateway", "TooManyRequestsException", 429),
    ("iam", "Throttling", 400),
    ("ecr", "ThrottlingException", 400),
    ("sns", "Throttling", 400),
    ("sqs", "RequestThrottled", 403),
    ("logs", "ThrottlingException", 400),
    ("cloudwatch", "Throttling", 400),
    ("sts", "Throttling", 400),
];

/// A rule that fails `operation` of `service` `times` times with AWS's `code` and `status`.
fn error(
    service: &str,
    operation: &str,
    code: &str,
    status: u16,
    message: &str,
    times: u32,
) -> Value {
    json!({
        "service": service,
        "operation": operation,
        "times": times,
        "error": {"code": code, "status": status, "message": message},
    })
}

/// A rule that forwards `operation` (AWS acts on it) and loses its answer, once.
fn lost_answer(service: &str, operation: &str) -> Value {
    json!({"service": service, "operation": operation, "times": 1, "response": {"abort_bytes": 0}})
}

/// Every rule fired at least once (else the test proved nothing); the total of faults injected.
async fn all_fired(proxy: &Microburst) -> anyhow::Result<u64> {
    let fired = proxy.fired().await?;
    let idle: Vec<&Value> = fired
        .iter()
        .filter(|(_, n)| *n == 0)
        .map(|(r, _)| r)
        .collect();
    ensure!(idle.is_empty(), "faults that never fired: {idle:?}");
    Ok(fired.iter().map(|(_, n)| n).sum())
}

/// The expected inventory of a stack: one of each resource, the count a clean provisioning leaves.
fn exactly_once(found: &Inventory) -> anyhow::Result<()> {
    ensure!(
        found.duplicates().is_empty(),
        "duplicates: {:?}",
        found.duplicates()
    );
    ensure!(
        found.total() == 29,
        "{} resources instead of 29: {found:#?}",
        found.total()
    );
    Ok(())
}

async fn deployments(aws: &Aws, api_name: &str) -> anyhow::Result<usize> {
    let apis = aws.apigateway.get_rest_apis().send().await?;
    let Some(api) = apis.items().iter().find(|a| a.name() == Some(api_name)) else {
        return Ok(0);
    };
    let found = aws
        .apigateway
        .get_deployments()
        .rest_api_id(api.id().unwrap_or_default())
        .send()
        .await?;
    Ok(found.items().len())
}

#[tokio::test]
async fn an_answer_lost_after_a_create_leaves_exactly_one_of_each() -> anyhow::Result<()> {
    let emu = moto().await?;
    let proxy = Microburst::start(&emu).await?;
    let aws = Aws::connect(&emu.sdk_config()).await?;
    let engine = engine(
        quick_retries(proxy.sdk_config(&emu)),
        ClientOptions::default(),
    );
    let spec = spec("lost1");
    proxy
        .set_rules(json!([
            lost_answer("apigateway", "CreateRestApi"),
            lost_answer("apigateway", "CreateApiKey"),
            lost_answer("apigateway", "CreateUsagePlan"),
            lost_answer("apigateway", "CreateDeployment"),
            lost_answer("logs", "CreateLogGroup"),
            lost_answer("sqs", "CreateQueue"),
            lost_answer("lambda", "CreateFunction"),
            lost_answer("s3", "CreateBucket"),
        ]))
        .await?;

    let report = apply(&engine, &aws, &spec, 8).await?;
    ensure!(report.converged(), "{:?}", not_done(&report));
    let injected = all_fired(&proxy).await?;
    exactly_once(&Inventory::of(&aws, "lost1").await?)?;
    ensure!(
        deployments(&aws, "tap-lost1-api").await? == 1,
        "two deployments"
    );

    let gone = destroy(&engine, &spec, 4).await?;
    ensure!(gone.converged(), "{:?}", not_done(&gone));
    let left = Inventory::of(&aws, "lost1").await?;
    ensure!(left.total() == 0, "left {left:#?}");
    eprintln!("{injected} answers lost after AWS acted: exactly one of each, nothing left");
    Ok(())
}

#[tokio::test]
async fn throttling_beyond_the_sdk_retries_and_busy_resources_do_not_wedge_the_stack(
) -> anyhow::Result<()> {
    let emu = moto().await?;
    let proxy = Microburst::start(&emu).await?;
    let aws = Aws::connect(&emu.sdk_config()).await?;
    let engine = engine(
        quick_retries(proxy.sdk_config(&emu)),
        ClientOptions::default(),
    );
    let spec = spec("busy1");
    // More failures in a row than the SDK's attempts: a pass fails, the next (or the engine's own retry)
    // carries on.
    let beyond = tap_controller::aws::MAX_ATTEMPTS + 1;
    proxy
        .set_rules(json!([
            error("s3", "PutBucketTagging", "SlowDown", 503, "Please reduce your request rate.", beyond),
            // The bucket's configuration writes go at once; S3 may refuse one while another runs.
            error(
                "s3",
                "PutPublicAccessBlock",
                "OperationAborted",
                409,
                "A conflicting conditional operation is currently in progress against this resource. Please try again.",
                beyond
            ),
            error("sts", "GetCallerIdentity", "Throttling", 400, "Rate exceeded", beyond),
            error(
                "dynamodb",
                "UpdateContinuousBackups",
                "ContinuousBackupsUnavailableException",
                400,
                "Backups are being enabled for the table: tap-busy1-transactions. Please retry later",
                beyond
            ),
            error(
                "lambda",
                "CreateFunction",
                "InvalidParameterValueException",
                400,
                "The role defined for the function cannot be assumed by Lambda.",
                3
            ),
            error(
                "stepfunctions",
                "CreateStateMachine",
                "AccessDeniedException",
                400,
                "Neither the global service principal states.amazonaws.com, nor the regional one is authorized to assume the provided role.",
                3
            ),
            error("apigateway", "CreateUsagePlan", "TooManyRequestsException", 429, "Too Many Requests", beyond),
        ]))
        .await?;

    let (report, passes) = apply_counted(&engine, &aws, &spec, 10).await?;
    ensure!(
        report.converged(),
        "after {passes} passes: {:?}",
        not_done(&report)
    );
    let mut injected = all_fired(&proxy).await?;
    exactly_once(&Inventory::of(&aws, "busy1").await?)?;

    // Drift to correct while the resources are busy: Lambda 409 during an update in progress, DynamoDB
    // ResourceInUseException while the table is being updated.
    aws.lambda
        .update_function_configuration()
        .function_name("tap-busy1-csv-validator")
        .memory_size(256)
        .send()
        .await?;
    aws.dynamodb
        .update_continuous_backups()
        .table_name("tap-busy1-transactions")
        .point_in_time_recovery_specification(
            aws_sdk_dynamodb::types::PointInTimeRecoverySpecification::builder()
                .point_in_time_recovery_enabled(false)
                .build()?,
        )
        .send()
        .await?;
    proxy
        .set_rules(json!([
            error(
                "lambda",
                "UpdateFunctionConfiguration",
                "ResourceConflictException",
                409,
                "The operation cannot be performed at this time. An update is in progress for resource: tap-busy1-csv-validator",
                beyond
            ),
            error(
                "dynamodb",
                "UpdateContinuousBackups",
                "ResourceInUseException",
                400,
                "Attempt to change a resource which is still in use: Table is being updated",
                beyond
            ),
        ]))
        .await?;
    let mut corrections = 0;
    let corrected = loop {
        corrections += 1;
        let report = apply(&engine, &aws, &spec, 1).await?;
        if (report.converged() && report.drift.is_empty()) || corrections == 6 {
            break report;
        }
    };
    ensure!(
        corrected.converged(),
        "after {corrections} passes: {:?}",
        not_done(&corrected)
    );
    injected += all_fired(&proxy).await?;
    let memory = aws
        .lambda
        .get_function_configuration()
        .function_name("tap-busy1-csv-validator")
        .send()
        .await?
        .memory_size();
    ensure!(memory == Some(512), "memory not corrected: {memory:?}");

    let gone = destroy(&engine, &spec, 4).await?;
    ensure!(gone.converged(), "{:?}", not_done(&gone));
    eprintln!(
        "{injected} throttles and busy errors absorbed; converged in {passes} passes, drift corrected in {corrections}"
    );
    Ok(())
}

#[tokio::test]
async fn heavy_faults_converge_exactly_once_and_a_throttled_teardown_leaves_nothing(
) -> anyhow::Result<()> {
    let emu = moto().await?;
    let proxy = Microburst::start(&emu).await?;
    let aws = Aws::connect(&emu.sdk_config()).await?;
    let engine = engine(
        quick_retries(proxy.sdk_config(&emu)),
        ClientOptions::default(),
    );
    let spec = spec("heavy1");
    // 30% throttled (each service's own throttling error), 5% 500, 1% connection reset.
    let mut rules = vec![
        json!({"probability": 0.01, "reset": true}),
        json!({"probability": 0.05, "error": {"code": "InternalFailure", "status": 500, "message": "injected"}}),
    ];
    rules.extend(THROTTLING.iter().map(|(service, code, status)| {
        json!({"service": service, "probability": 0.3,
               "error": {"code": code, "status": status, "message": "Rate exceeded"}})
    }));
    proxy.set_rules(Value::Array(rules)).await?;
    let (report, passes) = apply_counted(&engine, &aws, &spec, 20).await?;
    ensure!(
        report.converged(),
        "after {passes} passes: {:?}",
        not_done(&report)
    );
    // Rules of a service with few calls may draw no fault: the total is what counts.
    let injected: u64 = proxy.fired().await?.iter().map(|(_, n)| n).sum();
    ensure!(injected >= 20, "only {injected} faults injected");
    exactly_once(&Inventory::of(&aws, "heavy1").await?)?;

    // Teardown with API Gateway answering 429 to half its calls (its control plane is throttled hard on
    // real AWS).
    proxy
        .set_rules(json!([
            {"service": "apigateway", "probability": 0.5,
             "error": {"code": "TooManyRequestsException", "status": 429, "message": "Too Many Requests"}},
        ]))
        .await?;
    let (gone, destroys) = destroy_counted(&engine, &spec, 10).await?;
    ensure!(
        gone.converged(),
        "after {destroys} passes: {:?}",
        not_done(&gone)
    );
    let throttled = all_fired(&proxy).await?;
    let left = Inventory::of(&aws, "heavy1").await?;
    ensure!(left.total() == 0, "left {left:#?}");
    eprintln!(
        "heavy faults: {injected} injected, converged in {passes} passes; teardown: {throttled} API Gateway 429s, done in {destroys} passes"
    );
    Ok(())
}
