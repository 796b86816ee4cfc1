//! notification-sender against the local AWS emulator: the topic is read through a subscribed SQS
//! queue, as a subscriber would (extra messages are tolerated).

use std::time::{Duration, Instant};

use notification_sender::{handle, Clients};
use serde_json::{json, Value};
use tap_lambda_shared::status::{get_status, update_status, Status, StatusUpdate};
use tap_lambda_shared::testing::create_tables;
use tap_lambda_shared::NotifierConfig;
use tap_tests::Emulator;

const STATUS: &str = "processing-status";

struct Stack {
    _emulator: Emulator,
    clients: Clients,
    config: NotifierConfig,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
}

async fn stack() -> anyhow::Result<Stack> {
    let emulator = Emulator::start().await?;
    let sdk = emulator.sdk_config();
    let clients = Clients::new(&sdk);
    create_tables(&clients.dynamodb, "transactions", STATUS).await?;
    let topic = clients
        .sns
        .create_topic()
        .name("tap-notifications")
        .send()
        .await?;
    let topic_arn = topic.topic_arn().unwrap().to_string();
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue_url = sqs
        .create_queue()
        .queue_name("tap-subscriber")
        .send()
        .await?
        .queue_url()
        .unwrap()
        .to_string();
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await?;
    let queue_arn =
        attrs.attributes().unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn].clone();
    clients
        .sns
        .subscribe()
        .topic_arn(&topic_arn)
        .protocol("sqs")
        .endpoint(queue_arn)
        .send()
        .await?;
    let config = NotifierConfig {
        topic_arn,
        status_table: STATUS.into(),
    };
    Ok(Stack {
        _emulator: emulator,
        clients,
        config,
        sqs,
        queue_url,
    })
}

/// Waits for the SNS envelope of the notification about `upload_id`.
async fn notification_for(stack: &Stack, upload_id: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let out = stack
            .sqs
            .receive_message()
            .queue_url(&stack.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await?;
        for message in out.messages() {
            let Ok(envelope) = serde_json::from_str::<Value>(message.body().unwrap_or_default())
            else {
                continue;
            };
            let attribute = envelope
                .pointer("/MessageAttributes/upload_id/Value")
                .and_then(Value::as_str);
            if attribute == Some(upload_id) {
                return Ok(envelope);
            }
        }
    }
    anyhow::bail!("no notification for {upload_id} within 10 s")
}

#[tokio::test]
async fn success_is_published_and_recorded() -> anyhow::Result<()> {
    let stack = stack().await?;
    let state = json!({"bucket": "b", "key": "validated/u-ok.csv",
        "validation": {"upload_id": "u-ok", "status": "VALIDATED", "row_count": 42},
        "transform": {"upload_id": "u-ok", "items_written": 42}});
    let out = handle(state, &stack.clients, &stack.config).await?;
    assert_eq!(out["status"], "SUCCEEDED");

    let envelope = notification_for(&stack, "u-ok").await?;
    assert_eq!(
        envelope["MessageAttributes"]["status"]["Value"],
        "SUCCEEDED"
    );
    let message: Value = serde_json::from_str(envelope["Message"].as_str().unwrap())?;
    assert_eq!(message["upload_id"], "u-ok");
    assert_eq!(message["status"], "SUCCEEDED");
    assert_eq!(
        (
            message["row_count"].as_u64(),
            message["items_written"].as_u64()
        ),
        (Some(42), Some(42))
    );
    assert!(envelope["Subject"].as_str().unwrap().contains("u-ok"));
    let status = get_status(&stack.clients.dynamodb, STATUS, "u-ok")
        .await?
        .expect("status item");
    assert_eq!(status.status, "NOTIFIED");
    Ok(())
}

#[tokio::test]
async fn failure_carries_first_errors_and_records_failed() -> anyhow::Result<()> {
    let stack = stack().await?;
    // What the validator left behind when the task rejected the object.
    let errors =
        vec!["row 1, amount: 1.5 has 1 decimal places but JPY allows at most 0".to_string()];
    let update = StatusUpdate {
        row_count: Some(7),
        error_count: Some(1),
        errors: Some(errors),
        ..Default::default()
    };
    update_status(
        &stack.clients.dynamodb,
        STATUS,
        "u-bad",
        Status::Rejected,
        update,
    )
    .await?;
    let cause = json!({"errorType": "ValidationFailed", "errorMessage": "s3://b/validated/u-bad.csv: 1 error(s) in 7 row(s)"});
    let state = json!({"bucket": "b", "key": "validated/u-bad.csv",
        "error": {"Error": "ValidationFailed", "Cause": cause.to_string()}});
    let out = handle(state, &stack.clients, &stack.config).await?;
    assert_eq!(out["status"], "FAILED");

    let envelope = notification_for(&stack, "u-bad").await?;
    assert_eq!(envelope["MessageAttributes"]["status"]["Value"], "FAILED");
    let message: Value = serde_json::from_str(envelope["Message"].as_str().unwrap())?;
    assert_eq!(message["error_type"], "ValidationFailed");
    assert_eq!(message["row_count"], 7);
    assert_eq!(message["error_count"], 1);
    let listed: Vec<&str> = message["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        listed.iter().any(|e| e.contains("1 error(s) in 7 row(s)")),
        "{listed:?}"
    );
    assert!(
        listed.iter().any(|e| e.contains("JPY allows at most 0")),
        "{listed:?}"
    );
    let status = get_status(&stack.clients.dynamodb, STATUS, "u-bad")
        .await?
        .expect("status item");
    assert_eq!(status.status, "FAILED");
    assert_eq!(status.row_count, Some(7), "earlier counts are kept");
    Ok(())
}
