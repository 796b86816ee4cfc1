//! The deployed stack processes a transaction file: a pipeline converged by the CLI on moto, every piece
//! of wiring read back from the emulator (functions' environment and role, the state machine's definition
//! and role, the bucket notification, the REST API's method, validator, model and usage plan), the real
//! function binaries behind a local Lambda Runtime API with their roles' credentials under moto's IAM
//! enforcement, and the deployed ASL run by aws-local-stepfunctions (see `tap_tests::datapath`).
//!
//! What an operator would check: a valid file is accepted (202), stored under `validated/`, processed to
//! the last row with exact amounts, its status reaches NOTIFIED and one notification says so; a file with
//! bad rows is refused (400, rows and columns named) and nothing runs; a failing transform is retried as the
//! spec says, its input lands on the dead-letter queue and a failure notification goes out; a request
//! without the API key never reaches the function; and each role can do what its function needs and not
//! more.

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::{ensure, Context};
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{json, Value};
use tap_tests::datapath::{
    expected_row, transactions_csv, DataPath, ExecutionRun, Flow, HttpRequest, PipelineOptions,
};
use tap_tests::lambda_runtime_api::Fault;

fn s(item: &std::collections::BTreeMap<String, AttributeValue>, name: &str) -> String {
    item.get(name)
        .and_then(|v| v.as_s().or_else(|_| v.as_n()).ok())
        .cloned()
        .unwrap_or_default()
}

fn upload_id(flow: &Flow) -> anyhow::Result<String> {
    flow.response.json()["upload_id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("the response has no upload_id: {}", flow.response.body))
}

/// The one execution of a flow, which ran a valid definition.
fn one_run(dp: &DataPath, flow: &Flow) -> anyhow::Result<ExecutionRun> {
    ensure!(
        flow.deliveries.len() == 1 && flow.deliveries[0].succeeded(),
        "S3 should deliver one notification to csv-validator, which starts the state machine: {:?}\ncsv-validator log:\n{}",
        flow.deliveries,
        dp.function("csv-validator").log_tail(20)
    );
    ensure!(
        flow.runs.len() == 1,
        "one execution of the state machine should start, got {}",
        flow.runs.len()
    );
    let run = flow.runs[0].clone();
    ensure!(
        run.valid,
        "asl-validator rejects the deployed definition: {:?}",
        run.validation_errors
    );
    Ok(run)
}

fn describe(dp: &DataPath, run: &ExecutionRun) -> String {
    let events: Vec<String> = run
        .events
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {}",
                e.kind,
                e.state.as_deref().unwrap_or(""),
                e.error.as_deref().unwrap_or(""),
                e.cause.as_ref().map(Value::to_string).unwrap_or_default()
            )
        })
        .collect();
    let logs: Vec<String> = dp
        .functions
        .iter()
        .map(|(name, f)| format!("--- {name}:\n{}", f.log_tail(8)))
        .collect();
    format!(
        "status {:?} error {:?} cause {:?}\nevents:\n  {}\n{}",
        run.status,
        run.error,
        run.cause,
        events.join("\n  "),
        logs.join("\n")
    )
}

/// The notifications of one upload (SNS envelopes read through the operator's SQS subscription).
async fn notifications_of(dp: &DataPath, upload_id: &str) -> anyhow::Result<Vec<Value>> {
    Ok(dp
        .notifications()
        .await?
        .into_iter()
        .filter(|n| n["MessageAttributes"]["upload_id"]["Value"] == upload_id)
        .collect())
}

async fn status(dp: &DataPath, upload_id: &str) -> anyhow::Result<(String, String, String)> {
    let item = dp
        .status_of(upload_id)
        .await?
        .with_context(|| format!("no status item for upload {upload_id}"))?;
    Ok((
        s(&item, "status"),
        s(&item, "row_count"),
        s(&item, "items_written"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_deployed_stack_processes_transaction_files() -> anyhow::Result<()> {
    let started = Instant::now();
    let dp = DataPath::start(PipelineOptions::default()).await?;
    eprintln!(
        "datapath: converged by the CLI in {:.1} s, moto at {}",
        dp.converge_time.as_secs_f64(),
        dp.emulator.endpoint
    );
    deployed_wiring(&dp)?;
    api_key_is_required(&dp).await?;
    the_validator_refuses_before_the_function(&dp).await?;
    a_valid_file_is_processed(&dp, 1000).await?;
    a_json_envelope_is_processed(&dp).await?;
    bad_rows_are_refused(&dp).await?;
    roles_are_least_privilege(&dp).await?;
    a_transient_failure_is_retried_without_duplicates(&dp).await?;
    exhausted_retries_go_to_the_dead_letter_queue(&dp).await?;
    a_missing_table_fails_to_the_dead_letter_queue(&dp).await?;
    eprintln!(
        "datapath: all scenarios in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The wiring the data path relies on, as deployed (what the scenarios below then exercise).
fn deployed_wiring(dp: &DataPath) -> anyhow::Result<()> {
    let d = &dp.deployed;
    ensure!(
        d.state_machine.machine_type == "EXPRESS",
        "{:?}",
        d.state_machine
    );
    let roles: BTreeSet<&str> = d.functions.values().map(|f| f.role_arn.as_str()).collect();
    ensure!(
        roles.len() == 3 && !roles.contains(d.state_machine.role_arn.as_str()),
        "each function and the state machine should have a role of its own: {roles:?}, {}",
        d.state_machine.role_arn
    );
    let definition: Value = serde_json::from_str(&d.state_machine.definition)?;
    let resources: BTreeSet<&str> = definition["States"]
        .as_object()
        .context("the definition has no States")?
        .values()
        .filter_map(|s| s["Resource"].as_str())
        .filter(|r| r.contains(":lambda:"))
        .collect();
    let functions: BTreeSet<&str> = d.functions.values().map(|f| f.arn.as_str()).collect();
    ensure!(
        resources == functions,
        "the state machine's Lambda tasks should be exactly the stack's functions: {resources:?} vs {functions:?}"
    );
    ensure!(
        d.notifications.len() == 1 && d.notifications[0].prefix == "validated/",
        "one notification on validated/: {:?}",
        d.notifications
    );
    Ok(())
}

async fn api_key_is_required(dp: &DataPath) -> anyhow::Result<()> {
    let api = &dp.deployed.api;
    ensure!(
        api.api_key_required,
        "POST {} must require an API key",
        api.resource_path
    );
    ensure!(
        api.stage_keys.iter().any(|(_, _, enabled)| *enabled),
        "an enabled API key must be bound to stage {} through a usage plan: {:?}",
        api.stage,
        api.stage_keys
    );
    let validator = dp.function("csv-validator");
    let before = validator.invocations();
    let csv = transactions_csv(3, "nokey");
    for request in [
        HttpRequest::post(&dp.upload_path(), csv.clone()).header("Content-Type", "text/csv"),
        HttpRequest::post(&dp.upload_path(), csv.clone())
            .header("Content-Type", "text/csv")
            .header("x-api-key", "not-the-key"),
    ] {
        let response = dp.post(&request).await?;
        ensure!(
            response.status == 403 && response.json()["message"] == "Forbidden" && !response.invoked,
            "a request without a valid API key should be refused by the method (403 Forbidden): {response:?}"
        );
    }
    ensure!(
        validator.invocations() == before,
        "csv-validator must not run for a refused request"
    );
    ensure!(dp.object_keys("validated/").await?.is_empty());
    Ok(())
}

async fn the_validator_refuses_before_the_function(dp: &DataPath) -> anyhow::Result<()> {
    let key = dp.api_key().context("an API key")?;
    let validator = dp.function("csv-validator");
    let before = validator.invocations();
    let no_type =
        HttpRequest::post(&dp.upload_path(), transactions_csv(2, "nt")).header("x-api-key", &key);
    let response = dp.post(&no_type).await?;
    ensure!(
        response.status == 400
            && response.json()["message"] == "Missing required request parameters: [Content-Type]",
        "the request validator should require Content-Type: {response:?}"
    );
    let not_the_model = HttpRequest::post(&dp.upload_path(), json!({"data": "x"}).to_string())
        .header("Content-Type", "application/json")
        .header("x-api-key", &key);
    let response = dp.post(&not_the_model).await?;
    ensure!(
        response.status == 400 && response.json()["message"] == "Invalid request body",
        "a JSON body that is not the UploadEnvelope model should be refused by the validator: {response:?}"
    );
    ensure!(
        validator.invocations() == before,
        "csv-validator must not run for refused requests"
    );
    Ok(())
}

async fn a_valid_file_is_processed(dp: &DataPath, rows: usize) -> anyhow::Result<()> {
    let csv = transactions_csv(rows, "ok");
    let flow = dp.upload(&dp.csv_request(&csv)).await?;
    ensure!(
        flow.response.status == 202,
        "a valid CSV should be accepted (202): {:?}\n{}",
        flow.response,
        dp.function("csv-validator").log_tail(20)
    );
    let id = upload_id(&flow)?;
    let key = format!("validated/{id}.csv");
    ensure!(
        dp.object_keys("validated/").await? == vec![key.clone()],
        "the upload should be stored as {key}"
    );
    let run = one_run(dp, &flow)?;
    ensure!(
        run.status.as_deref() == Some("SUCCEEDED")
            && run.path() == ["Validate", "Transform", "Notify"],
        "the execution should succeed through Validate, Transform, Notify: {}",
        describe(dp, &run)
    );
    ensure!(
        run.input == json!({"bucket": dp.deployed.bucket, "key": key}),
        "the execution's input should be the object: {}",
        run.input
    );

    let items = dp.transactions_of(&id).await?;
    ensure!(
        items.len() == rows,
        "{rows} rows should be in the transactions table, found {}",
        items.len()
    );
    for item in &items {
        let tid = s(item, "transaction_id");
        let i: usize = tid
            .rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("unexpected transaction id {tid}"))?;
        let expected = expected_row(i);
        ensure!(
            s(item, "amount") == expected.amount
                && s(item, "currency") == expected.currency
                && s(item, "amount_minor") == expected.amount_minor.to_string()
                && s(item, "timestamp") == expected.timestamp,
            "row {i}: expected {expected:?}, stored {item:?}"
        );
    }
    let (state, row_count, written) = status(dp, &id).await?;
    ensure!(
        (state.as_str(), row_count.as_str(), written.as_str()) == ("NOTIFIED", &*rows.to_string(), &*rows.to_string()),
        "the status row should reach NOTIFIED with {rows} rows written: {state} {row_count} {written}"
    );
    let notes = notifications_of(dp, &id).await?;
    ensure!(
        notes.len() == 1,
        "one notification for the upload, got {notes:?}"
    );
    let message: Value = serde_json::from_str(notes[0]["Message"].as_str().unwrap_or_default())?;
    ensure!(
        notes[0]["Subject"] == format!("Transaction upload {id}: SUCCEEDED")
            && message["status"] == "SUCCEEDED"
            && message["items_written"] == rows,
        "the notification should report success: {notes:?}"
    );
    ensure!(
        dp.dead_letters().await?.is_empty(),
        "nothing on the dead-letter queue"
    );
    Ok(())
}

async fn a_json_envelope_is_processed(dp: &DataPath) -> anyhow::Result<()> {
    let key = dp.api_key().context("an API key")?;
    let csv = transactions_csv(5, "json");
    let request = HttpRequest::post(&dp.upload_path(), json!({"csv": csv}).to_string())
        .header("Content-Type", "application/json")
        .header("x-api-key", &key);
    let flow = dp.upload(&request).await?;
    ensure!(
        flow.response.status == 202,
        "the JSON envelope should be accepted: {:?}",
        flow.response
    );
    let run = one_run(dp, &flow)?;
    ensure!(
        run.status.as_deref() == Some("SUCCEEDED"),
        "{}",
        describe(dp, &run)
    );
    let id = upload_id(&flow)?;
    ensure!(dp.transactions_of(&id).await?.len() == 5);
    ensure!(notifications_of(dp, &id).await?.len() == 1);
    Ok(())
}

async fn bad_rows_are_refused(dp: &DataPath) -> anyhow::Result<()> {
    let objects = dp.object_keys("validated/").await?;
    let executions = dp.execution_arns().await?;
    let csv = "transaction_id,account_id,amount,currency,timestamp\n\
               b1,a,1.00,USD,2024-05-01T12:00:00Z\n\
               b2,a,1.234,USD,2024-05-01T12:00:00Z\n\
               b3,,2.00,XXY,yesterday\n\
               b1,a,3.00,EUR,2024-05-01T12:00:00Z\n";
    let flow = dp.upload(&dp.csv_request(csv)).await?;
    let body = flow.response.json();
    ensure!(
        flow.response.status == 400,
        "a CSV with bad rows should be refused (400): {:?}",
        flow.response
    );
    let located: Vec<(u64, String)> = body["errors"]
        .as_array()
        .context("the 400 should list the errors")?
        .iter()
        .map(|e| {
            (
                e["row"].as_u64().unwrap_or(0),
                e["column"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let expected: Vec<(u64, String)> = [
        (2, "amount"),
        (3, "account_id"),
        (3, "currency"),
        (3, "timestamp"),
        (4, "transaction_id"),
    ]
    .iter()
    .map(|(r, c)| (*r, c.to_string()))
    .collect();
    ensure!(
        located == expected,
        "the errors should name rows and columns: {body}"
    );
    ensure!(
        dp.object_keys("validated/").await? == objects,
        "nothing new under validated/"
    );
    ensure!(
        flow.deliveries.is_empty() && flow.runs.is_empty(),
        "no notification, no execution: {flow:?}"
    );
    ensure!(
        dp.execution_arns().await? == executions,
        "no execution may start"
    );
    let id = body["upload_id"].as_str().context("upload_id")?;
    ensure!(
        status(dp, id).await?.0 == "REJECTED",
        "the status row should say REJECTED"
    );
    Ok(())
}

/// Each role may do what its function needs (the scenarios prove it) and is refused the rest.
async fn roles_are_least_privilege(dp: &DataPath) -> anyhow::Result<()> {
    let table = &dp.deployed.transactions_table;
    let item = |id: &str| {
        std::collections::HashMap::from([
            ("transaction_id".to_string(), AttributeValue::S(id.into())),
            ("upload_id".to_string(), AttributeValue::S("forged".into())),
        ])
    };
    let denied = |what: &str, e: String| -> anyhow::Result<()> {
        ensure!(
            e.contains("AccessDenied") || e.contains("not authorized"),
            "{what} should be denied by IAM, failed otherwise: {e}"
        );
        Ok(())
    };
    let notifier = aws_sdk_dynamodb::Client::new(&dp.function_role_config("notification-sender"));
    match notifier
        .put_item()
        .table_name(table)
        .set_item(Some(item("n1")))
        .send()
        .await
    {
        Ok(_) => anyhow::bail!("notification-sender's role could write the transactions table"),
        Err(e) => denied(
            "notification-sender writing the transactions table",
            format!("{e:?}"),
        )?,
    }
    let validator = aws_sdk_dynamodb::Client::new(&dp.function_role_config("csv-validator"));
    match validator
        .put_item()
        .table_name(table)
        .set_item(Some(item("v1")))
        .send()
        .await
    {
        Ok(_) => anyhow::bail!("csv-validator's role could write the transactions table"),
        Err(e) => denied(
            "csv-validator writing the transactions table",
            format!("{e:?}"),
        )?,
    }
    let transformer = aws_sdk_sns::Client::new(&dp.function_role_config("data-transformer"));
    match transformer
        .publish()
        .topic_arn(&dp.deployed.topic_arn)
        .message("forged")
        .send()
        .await
    {
        Ok(_) => anyhow::bail!("data-transformer's role could publish to the topic"),
        Err(e) => denied("data-transformer publishing to the topic", format!("{e:?}"))?,
    }
    let outside = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&dp.function_role_config("csv-validator"))
            .force_path_style(true)
            .build(),
    );
    match outside
        .put_object()
        .bucket(&dp.deployed.bucket)
        .key("elsewhere/x.csv")
        .body(b"x".to_vec().into())
        .send()
        .await
    {
        Ok(_) => anyhow::bail!("csv-validator's role could write outside validated/"),
        Err(e) => denied("csv-validator writing outside validated/", format!("{e:?}"))?,
    }
    Ok(())
}

fn retry_of(dp: &DataPath) -> (u32, f64, f64) {
    let o = &dp.options;
    (
        o.retry_max_attempts,
        f64::from(o.retry_interval_seconds),
        o.retry_backoff_rate,
    )
}

async fn a_transient_failure_is_retried_without_duplicates(dp: &DataPath) -> anyhow::Result<()> {
    let rows = 120;
    // The transformer runs (it writes every row), then Lambda answers 500: the state machine cannot know the
    // outcome and retries.
    dp.lambda_api.inject(
        &dp.deployed.functions["data-transformer"].name,
        Fault::ServiceExceptionAfterRun,
        1,
    );
    let flow = dp
        .upload(&dp.csv_request(&transactions_csv(rows, "retry")))
        .await?;
    dp.lambda_api.clear_faults();
    let run = one_run(dp, &flow)?;
    let (_, interval, _) = retry_of(dp);
    ensure!(
        run.status.as_deref() == Some("SUCCEEDED") && run.attempts("Transform") == 2,
        "Lambda.ServiceException should be retried once and then succeed: {}",
        describe(dp, &run)
    );
    let gaps = run.retry_gaps_ms("Transform");
    ensure!(
        gaps.len() == 1 && gaps[0] as f64 >= interval * 1000.0 - 50.0,
        "the retry should wait IntervalSeconds ({interval} s): {gaps:?}"
    );
    let id = upload_id(&flow)?;
    let items = dp.transactions_of(&id).await?;
    let ids: BTreeSet<String> = items.iter().map(|i| s(i, "transaction_id")).collect();
    ensure!(
        items.len() == rows && ids.len() == rows,
        "a retried transform must leave exactly {rows} rows, no duplicates: {} items, {} ids",
        items.len(),
        ids.len()
    );
    ensure!(status(dp, &id).await? == ("NOTIFIED".into(), rows.to_string(), rows.to_string()));
    ensure!(
        notifications_of(dp, &id).await?.len() == 1,
        "one notification"
    );
    Ok(())
}

async fn exhausted_retries_go_to_the_dead_letter_queue(dp: &DataPath) -> anyhow::Result<()> {
    let rows = 60;
    let (max_attempts, interval, backoff) = retry_of(dp);
    let transformer = dp.deployed.functions["data-transformer"].name.clone();
    dp.lambda_api.inject(
        &transformer,
        Fault::ServiceExceptionAfterRun,
        max_attempts as usize + 1,
    );
    let flow = dp
        .upload(&dp.csv_request(&transactions_csv(rows, "exhaust")))
        .await?;
    dp.lambda_api.clear_faults();
    let run = one_run(dp, &flow)?;
    ensure!(
        run.attempts("Transform") == max_attempts as usize + 1,
        "Transform should run once and be retried MaxAttempts ({max_attempts}) times: {}",
        describe(dp, &run)
    );
    let gaps = run.retry_gaps_ms("Transform");
    for (n, gap) in gaps.iter().enumerate() {
        let wait = interval * backoff.powi(n as i32) * 1000.0;
        ensure!(
            *gap as f64 >= wait - 50.0 && (*gap as f64) < wait + 1500.0,
            "retry {n} should wait IntervalSeconds × BackoffRate^{n} = {wait} ms, waited {gap} ms"
        );
    }
    failure_is_reported(dp, &flow, &run, "Lambda.ServiceException").await?;
    let id = upload_id(&flow)?;
    let items = dp.transactions_of(&id).await?;
    let ids: BTreeSet<String> = items.iter().map(|i| s(i, "transaction_id")).collect();
    ensure!(
        items.len() == rows && ids.len() == rows,
        "{} runs of the transform must leave exactly {rows} rows: {} items",
        max_attempts + 1,
        items.len()
    );
    Ok(())
}

async fn a_missing_table_fails_to_the_dead_letter_queue(dp: &DataPath) -> anyhow::Result<()> {
    dp.dynamodb()
        .delete_table()
        .table_name(&dp.deployed.transactions_table)
        .send()
        .await?;
    let flow = dp
        .upload(&dp.csv_request(&transactions_csv(20, "notable")))
        .await?;
    ensure!(
        flow.response.status == 202,
        "the upload itself is fine: {:?}",
        flow.response
    );
    let run = one_run(dp, &flow)?;
    ensure!(
        run.attempts("Transform") == 1,
        "AwsServiceError is not among the spec's retried errors: Transform should run once: {}",
        describe(dp, &run)
    );
    failure_is_reported(dp, &flow, &run, "AwsServiceError").await
}

/// The catch path: the execution failed, a FAILED notification, the input with the error on the dead-letter
/// queue, the status row FAILED.
async fn failure_is_reported(
    dp: &DataPath,
    flow: &Flow,
    run: &ExecutionRun,
    error: &str,
) -> anyhow::Result<()> {
    let id = upload_id(flow)?;
    ensure!(
        run.status.as_deref() == Some("FAILED")
            && run.error.as_deref() == Some("PipelineFailed")
            && run.path() == ["Validate", "Transform", "SendToDeadLetterQueue", "NotifyFailure", "Failed"],
        "a failed transform should be caught, sent to the dead-letter queue, notified, and fail the execution: {}",
        describe(dp, run)
    );
    let notes = notifications_of(dp, &id).await?;
    ensure!(notes.len() == 1, "one failure notification, got {notes:?}");
    let message: Value = serde_json::from_str(notes[0]["Message"].as_str().unwrap_or_default())?;
    ensure!(
        notes[0]["Subject"] == format!("Transaction upload {id}: FAILED")
            && message["status"] == "FAILED"
            && message["error_type"] == error,
        "the notification should report the {error} failure: {notes:?}"
    );
    let letters = dp.dead_letters().await?;
    ensure!(
        letters.len() == 1,
        "one message on the dead-letter queue, got {letters:?}"
    );
    let letter: Value = serde_json::from_str(&letters[0])?;
    ensure!(
        letter["bucket"] == run.input["bucket"]
            && letter["key"] == run.input["key"]
            && letter["error"]["Error"] == error,
        "the dead letter should hold the input and the {error} error: {letter}"
    );
    ensure!(
        status(dp, &id).await?.0 == "FAILED",
        "the status row should say FAILED"
    );
    Ok(())
}
