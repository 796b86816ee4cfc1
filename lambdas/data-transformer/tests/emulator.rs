//! data-transformer against the local AWS emulator.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use data_transformer::{handle, Clients};
use serde_json::json;
use tap_lambda_shared::status::get_status;
use tap_lambda_shared::testing::{create_bucket, create_tables, generate_csv};
use tap_lambda_shared::TransformerConfig;
use tap_tests::Emulator;

const BUCKET: &str = "tap-uploads";
const TABLE: &str = "transactions";
const STATUS: &str = "processing-status";

async fn stack() -> anyhow::Result<(Emulator, Clients, TransformerConfig)> {
    let emulator = Emulator::start().await?;
    let clients = Clients::new(&emulator.sdk_config());
    create_bucket(&clients.s3, BUCKET).await?;
    create_tables(&clients.dynamodb, TABLE, STATUS).await?;
    let config = TransformerConfig {
        transactions_table: TABLE.into(),
        status_table: STATUS.into(),
    };
    Ok((emulator, clients, config))
}

async fn scan(
    clients: &Clients,
) -> anyhow::Result<HashMap<String, HashMap<String, AttributeValue>>> {
    let mut items = HashMap::new();
    let mut start = None;
    loop {
        let out = clients
            .dynamodb
            .scan()
            .table_name(TABLE)
            .set_exclusive_start_key(start)
            .send()
            .await?;
        for item in out.items() {
            items.insert(item["transaction_id"].as_s().unwrap().clone(), item.clone());
        }
        start = out.last_evaluated_key().cloned();
        if start.is_none() {
            return Ok(items);
        }
    }
}

#[tokio::test]
async fn transform_writes_normalised_items_idempotently() -> anyhow::Result<()> {
    let (_emulator, clients, config) = stack().await?;
    let mut csv = generate_csv(120, 3);
    csv.push_str("special,acct-9,-0.5,eur,2024-05-01T23:30:00-01:00,\"Caf\u{e9}, \"\"Le Bar\"\"\",\"multi\nline\"\n");
    let key = "validated/up-1.csv";
    clients
        .s3
        .put_object()
        .bucket(BUCKET)
        .key(key)
        .body(csv.into_bytes().into())
        .send()
        .await?;
    let state = json!({"bucket": BUCKET, "key": key,
        "validation": {"upload_id": "up-1", "status": "VALIDATED", "row_count": 121}});

    let out = handle(state.clone(), &clients, &config).await?;
    assert_eq!(out["upload_id"], "up-1");
    assert_eq!(out["items_written"], 121);
    let first = scan(&clients).await?;
    assert_eq!(first.len(), 121);
    let special = &first["special"];
    let s = |name: &str| special[name].as_s().unwrap().as_str();
    assert_eq!(s("amount"), "-0.50");
    assert_eq!(special["amount_minor"].as_n().unwrap(), "-50");
    assert_eq!(s("currency"), "EUR");
    assert_eq!(s("timestamp"), "2024-05-02T00:30:00Z");
    assert_eq!(s("merchant"), "Caf\u{e9}, \"Le Bar\"");
    assert_eq!(s("description"), "multi\nline");
    assert_eq!(s("upload_id"), "up-1");
    assert_eq!(s("account_id"), "acct-9");
    // Every amount is exact: minor units agree with the decimal string.
    for item in first.values() {
        let amount = item["amount"].as_s().unwrap().replace('.', "");
        let minor: i128 = item["amount_minor"].as_n().unwrap().parse()?;
        assert_eq!(amount.parse::<i128>()?, minor, "{item:?}");
    }
    let status = get_status(&clients.dynamodb, STATUS, "up-1")
        .await?
        .expect("status item");
    assert_eq!(
        (
            status.status.as_str(),
            status.row_count,
            status.items_written
        ),
        ("TRANSFORMED", Some(121), Some(121))
    );

    // Reprocessing: same items, same values, counts set not added.
    let again = handle(state, &clients, &config).await?;
    assert_eq!(again["items_written"], 121);
    assert_eq!(scan(&clients).await?, first);
    let status = get_status(&clients.dynamodb, STATUS, "up-1")
        .await?
        .expect("status item");
    assert_eq!(
        (status.row_count, status.items_written),
        (Some(121), Some(121))
    );
    Ok(())
}

#[tokio::test]
async fn object_changed_after_validation_fails_the_task() -> anyhow::Result<()> {
    let (_emulator, clients, config) = stack().await?;
    let csv = "transaction_id,account_id,amount,currency,timestamp\nt1,a,1.00,USD,2024-05-01T12:00:00Z\nt2,a,1.5,JPY,2024-05-01T12:00:00Z\n";
    clients
        .s3
        .put_object()
        .bucket(BUCKET)
        .key("validated/up-2.csv")
        .body(csv.as_bytes().to_vec().into())
        .send()
        .await?;
    let err = handle(
        json!({"bucket": BUCKET, "key": "validated/up-2.csv"}),
        &clients,
        &config,
    )
    .await
    .unwrap_err();
    assert_eq!(err.error_type(), "TransformFailed");
    assert!(err.to_string().contains("row 2"), "{err}");
    let status = get_status(&clients.dynamodb, STATUS, "up-2")
        .await?
        .expect("status item");
    assert_eq!(status.status, "FAILED");
    assert!(status.errors[0].contains("row 2"));
    Ok(())
}
