//! csv-validator against the local AWS emulator (moto by default; `TAP_TEST_EMULATOR=ministack`).

use csv_validator::{handle, ApiResponse, Clients, ResponseBody};
use serde_json::{json, Value};
use tap_lambda_shared::status::get_status;
use tap_lambda_shared::testing::{create_bucket, create_tables};
use tap_lambda_shared::ValidatorConfig;
use tap_tests::Emulator;

const BUCKET: &str = "tap-uploads";
const STATUS: &str = "processing-status";
const GOOD: &str = "transaction_id,account_id,amount,currency,timestamp,description\r\n\
                    t1,acct-1,12.50,USD,2024-05-01T12:00:00Z,\"Coffee, large\"\r\n\
                    t2,acct-2,1.234,BHD,2024-05-01T14:00:00+02:00,\"two\nlines\"\r\n\
                    t3,acct-1,1500,jpy,2024-05-01T12:00:00.5Z,\r\n";

struct Stack {
    _emulator: Emulator,
    clients: Clients,
    config: ValidatorConfig,
}

async fn stack() -> anyhow::Result<Stack> {
    let emulator = Emulator::start().await?;
    let sdk = emulator.sdk_config();
    let clients = Clients::new(&sdk);
    create_bucket(&clients.s3, BUCKET).await?;
    create_tables(&clients.dynamodb, "transactions", STATUS).await?;
    let role = "arn:aws:iam::123456789012:role/tap-sfn";
    let definition = json!({"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": true}}});
    let machine = clients
        .sfn
        .create_state_machine()
        .name("tap-pipeline")
        .definition(definition.to_string())
        .role_arn(role)
        .r#type(aws_sdk_sfn::types::StateMachineType::Express)
        .send()
        .await?;
    let config = ValidatorConfig {
        bucket_name: BUCKET.into(),
        status_table: STATUS.into(),
        state_machine_arn: machine.state_machine_arn().to_string(),
        max_upload_bytes: 64 * 1024,
    };
    Ok(Stack {
        _emulator: emulator,
        clients,
        config,
    })
}

fn upload_event(content_type: &str, body: &str) -> Value {
    json!({
        "resource": "/upload", "path": "/upload", "httpMethod": "POST",
        "headers": {"Content-Type": content_type},
        "body": body, "isBase64Encoded": false,
        "requestContext": {"requestId": "r-1", "stage": "prod", "httpMethod": "POST", "resourcePath": "/upload"}
    })
}

async fn upload(stack: &Stack, content_type: &str, body: &str) -> anyhow::Result<ApiResponse> {
    let out = handle(
        upload_event(content_type, body),
        &stack.clients,
        &stack.config,
    )
    .await?;
    Ok(serde_json::from_value(out)?)
}

async fn validated_keys(stack: &Stack) -> anyhow::Result<Vec<String>> {
    let out = stack
        .clients
        .s3
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix("validated/")
        .send()
        .await?;
    Ok(out
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect())
}

#[tokio::test]
async fn valid_upload_is_stored_and_recorded() -> anyhow::Result<()> {
    let stack = stack().await?;
    let response = upload(&stack, "text/csv", GOOD).await?;
    assert_eq!(response.status_code, 202, "{}", response.body_text());
    let body = response.body_json();
    let upload_id = body["upload_id"].as_str().expect("upload_id").to_string();
    assert_eq!(body["row_count"], 3);

    let key = format!("validated/{upload_id}.csv");
    assert_eq!(validated_keys(&stack).await?, vec![key.clone()]);
    let object = stack
        .clients
        .s3
        .get_object()
        .bucket(BUCKET)
        .key(&key)
        .send()
        .await?;
    let stored = object.body.collect().await?.into_bytes();
    assert_eq!(
        stored,
        GOOD.as_bytes(),
        "the object is the upload, byte for byte"
    );

    let status = get_status(&stack.clients.dynamodb, STATUS, &upload_id)
        .await?
        .expect("status item");
    assert_eq!(status.status, "VALIDATED");
    assert_eq!(status.row_count, Some(3));
    assert_eq!(status.object_key.as_deref(), Some(key.as_str()));
    assert!(chrono::DateTime::parse_from_rfc3339(status.timestamp.as_deref().unwrap()).is_ok());
    Ok(())
}

#[tokio::test]
async fn invalid_upload_is_rejected_with_row_errors() -> anyhow::Result<()> {
    let stack = stack().await?;
    let csv = "transaction_id,account_id,amount,currency,timestamp\n\
               t1,a,1.234,USD,2024-05-01T12:00:00Z\n\
               t2,a,1.5,JPY,2024-05-01T12:00:00Z\n\
               t1,a,1.00,XXY,yesterday\n\
               t4,a,2.00,EUR,2024-05-01T12:00:00Z\n";
    let response = upload(&stack, "application/csv", csv).await?;
    assert_eq!(response.status_code, 400, "{}", response.body_text());
    let body = response.body_json();
    assert_eq!(body["error_count"], 5, "{body}");
    let located: Vec<(u64, String)> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["row"].as_u64().unwrap(),
                e["column"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        located,
        vec![
            (1, "amount".into()),
            (2, "amount".into()),
            (3, "transaction_id".into()),
            (3, "currency".into()),
            (3, "timestamp".into())
        ]
    );
    let upload_id = body["upload_id"].as_str().unwrap();
    let status = get_status(&stack.clients.dynamodb, STATUS, upload_id)
        .await?
        .expect("status item");
    assert_eq!(status.status, "REJECTED");
    assert_eq!((status.row_count, status.error_count), (Some(4), Some(5)));
    assert!(
        status.errors[0].contains("row 1, amount"),
        "{:?}",
        status.errors
    );
    assert!(
        validated_keys(&stack).await?.is_empty(),
        "nothing may reach validated/"
    );

    // A header without the required columns: 400 too, and recorded.
    let response = upload(&stack, "text/csv", "id,amount\n1,2\n").await?;
    assert_eq!(response.status_code, 400);
    assert!(response.body_json()["message"]
        .as_str()
        .unwrap()
        .contains("account_id"));
    assert!(validated_keys(&stack).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn bad_requests_are_4xx_and_store_nothing() -> anyhow::Result<()> {
    let stack = stack().await?;
    let cases = [
        (upload_event("application/xml", GOOD), 415),
        // JSON uploads must be the {"csv": ...} envelope.
        (upload_event("application/json", GOOD), 400),
        (upload_event("text/csv", ""), 400),
        (upload_event("text/csv", &GOOD.repeat(1000)), 413),
        (
            json!({"httpMethod": "POST", "headers": {"content-type": "text/csv"}, "body": "%%%", "isBase64Encoded": true, "requestContext": {"httpMethod": "POST"}}),
            400,
        ),
        (
            json!({"httpMethod": "POST", "headers": null, "body": GOOD, "requestContext": {"httpMethod": "POST"}}),
            415,
        ),
    ];
    for (event, expected) in cases {
        let response: ApiResponse =
            serde_json::from_value(handle(event, &stack.clients, &stack.config).await?)?;
        assert_eq!(response.status_code, expected, "{}", response.body_text());
        assert!(!response.body_json()["message"]
            .as_str()
            .unwrap_or_default()
            .is_empty());
    }
    assert!(validated_keys(&stack).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn s3_event_starts_the_state_machine_with_decoded_key() -> anyhow::Result<()> {
    let stack = stack().await?;
    let event = json!({"Records": [
        {"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "eventTime": "2024-05-01T12:00:00.000Z",
         "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
         "s3": {"bucket": {"name": BUCKET}, "object": {"key": "validated/my+upload%3D1.csv", "size": 10}}},
        {"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "eventTime": "2024-05-01T12:00:00.000Z",
         "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
         "s3": {"bucket": {"name": BUCKET}, "object": {"key": "incoming/other.csv", "size": 10}}}
    ]});
    let out = handle(event, &stack.clients, &stack.config).await?;
    let started = out["started"].as_array().unwrap();
    assert_eq!(started.len(), 1, "{out}");
    assert_eq!(out["ignored"], json!(["incoming/other.csv"]));
    let arn = started[0]["execution_arn"].as_str().unwrap();
    let execution = stack
        .clients
        .sfn
        .describe_execution()
        .execution_arn(arn)
        .send()
        .await?;
    let input: Value = serde_json::from_str(execution.input().unwrap_or("{}"))?;
    assert_eq!(
        input,
        json!({"bucket": BUCKET, "key": "validated/my upload=1.csv"})
    );
    Ok(())
}

#[tokio::test]
async fn task_revalidates_the_object() -> anyhow::Result<()> {
    let stack = stack().await?;
    let s3 = &stack.clients.s3;
    s3.put_object()
        .bucket(BUCKET)
        .key("validated/good.csv")
        .body(GOOD.as_bytes().to_vec().into())
        .send()
        .await?;
    let out = handle(
        json!({"bucket": BUCKET, "key": "validated/good.csv"}),
        &stack.clients,
        &stack.config,
    )
    .await?;
    assert_eq!(
        out,
        json!({"upload_id": "good", "status": "VALIDATED", "row_count": 3})
    );

    // Reached validated/ without going through the API: still checked.
    let bad =
        "transaction_id,account_id,amount,currency,timestamp\nt1,a,1.5,JPY,2024-05-01T12:00:00Z\n";
    s3.put_object()
        .bucket(BUCKET)
        .key("validated/bad.csv")
        .body(bad.as_bytes().to_vec().into())
        .send()
        .await?;
    let err = handle(
        json!({"bucket": BUCKET, "key": "validated/bad.csv"}),
        &stack.clients,
        &stack.config,
    )
    .await
    .unwrap_err();
    assert_eq!(err.error_type(), "ValidationFailed");
    let diagnostic: lambda_runtime::Diagnostic = err.into();
    assert_eq!(diagnostic.error_type, "ValidationFailed");
    assert!(
        diagnostic.error_message.contains("JPY"),
        "{}",
        diagnostic.error_message
    );
    let status = get_status(&stack.clients.dynamodb, STATUS, "bad")
        .await?
        .expect("status item");
    assert_eq!(status.status, "REJECTED");
    assert_eq!(status.error_count, Some(1));

    // A missing object is an AWS error naming the call and the object, not a panic.
    let err = handle(
        json!({"bucket": BUCKET, "key": "validated/missing.csv"}),
        &stack.clients,
        &stack.config,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("GetObject") && err.to_string().contains("validated/missing.csv"),
        "{err}"
    );
    Ok(())
}
