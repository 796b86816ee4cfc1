//! Helpers for tests and the benchmark against a local emulator: create the tables and bucket the
//! controller creates in AWS, with the same schemas.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType,
};

use crate::error::{aws_error, Result};

/// Creates a table with hash key `key` (S) and the GSI `timestamp-index` on `timestamp` (S),
/// PAY_PER_REQUEST, as the controller does.
pub async fn create_table(client: &aws_sdk_dynamodb::Client, table: &str, key: &str) -> Result<()> {
    let attr = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .expect("fields set")
    };
    let hash = |name: &str| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(KeyType::Hash)
            .build()
            .expect("fields set")
    };
    client
        .create_table()
        .table_name(table)
        .attribute_definitions(attr(key))
        .attribute_definitions(attr("timestamp"))
        .key_schema(hash(key))
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name("timestamp-index")
                .key_schema(hash("timestamp"))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .expect("fields set"),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .map_err(aws_error("CreateTable", format!("table {table}")))?;
    Ok(())
}

/// Creates the `transactions` and `processing-status` tables under the given names.
pub async fn create_tables(
    client: &aws_sdk_dynamodb::Client,
    transactions: &str,
    status: &str,
) -> Result<()> {
    create_table(client, transactions, "transaction_id").await?;
    create_table(client, status, "upload_id").await
}

/// Creates a bucket (us-east-1: no location constraint).
pub async fn create_bucket(client: &aws_sdk_s3::Client, bucket: &str) -> Result<()> {
    client
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .map_err(aws_error("CreateBucket", format!("s3://{bucket}")))?;
    Ok(())
}

/// A CSV of `rows` valid transactions in a few currencies, deterministic for a given `seed`.
pub fn generate_csv(rows: usize, seed: u64) -> String {
    let currencies = [("USD", 2), ("EUR", 2), ("JPY", 0), ("BHD", 3), ("gbp", 2)];
    let mut out = String::with_capacity(rows * 96 + 64);
    out.push_str("transaction_id,account_id,amount,currency,timestamp,merchant,description\n");
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for i in 0..rows {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r = state >> 33;
        let (code, digits) = currencies[(r % 5) as usize];
        let units = r % 100_000;
        let amount = match digits {
            0 => format!("{units}"),
            d => format!("{units}.{:0width$}", r % 10u64.pow(d), width = d as usize),
        };
        let second = r % 86_400;
        out.push_str(&format!(
            "tx-{seed}-{i:08},acct-{:04},{amount},{code},2024-05-{:02}T{:02}:{:02}:{:02}+02:00,\"Shop {}, Ltd\",order {i}\n",
            r % 1000,
            1 + (r % 28),
            second / 3600,
            (second / 60) % 60,
            second % 60,
            r % 50,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_csv_is_valid() {
        let csv = super::generate_csv(500, 7);
        let report = crate::validate_bytes(csv.as_bytes()).unwrap();
        assert!(report.is_valid(), "{}", report.summary(5));
        assert_eq!(report.row_count, 500);
    }
}
