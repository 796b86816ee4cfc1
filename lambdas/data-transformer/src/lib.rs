//! `data-transformer` (Step Functions task). Input: the state `{"bucket","key","validation":{..}}`.
//! Streams the object from S3 record by record, normalises each row (currency upper case, amount
//! as an exact decimal string plus integer `amount_minor`, timestamp in UTC), and writes the items
//! to the transactions table with BatchWriteItem, 25 at a time, a few batches in flight, retrying
//! UnprocessedItems with exponential backoff. Items are keyed by `transaction_id`, so a re-run
//! overwrites identical items; the status item's counts are set, not added.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::{json, Value};
use tap_lambda_shared::status::{update_status, Status, StatusUpdate};
use tap_lambda_shared::validate::to_csv_record;
use tap_lambda_shared::{
    aws_error, upload_id_from_key, Error, Header, Result, Transaction, TransformerConfig,
};

/// BatchWriteItem's limit.
pub const BATCH_SIZE: usize = 25;
/// Batches in flight at once.
pub const DEFAULT_CONCURRENCY: usize = 4;

pub type Item = HashMap<String, AttributeValue>;

#[derive(Clone, Debug)]
pub struct Clients {
    pub s3: aws_sdk_s3::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
}

impl Clients {
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Clients {
            s3: tap_lambda_shared::aws::s3_client(sdk),
            dynamodb: aws_sdk_dynamodb::Client::new(sdk),
        }
    }
}

/// Where batches of items go: DynamoDB in production, memory in the benchmark.
pub trait ItemSink: Sync {
    /// Writes one batch (at most [`BATCH_SIZE`] items with distinct keys); returns how many were written.
    fn write_batch(&self, batch: Vec<Item>) -> impl Future<Output = Result<u64>> + Send;
}

/// BatchWriteItem to a table, retrying UnprocessedItems with exponential backoff.
#[derive(Clone, Debug)]
pub struct DynamoSink {
    pub client: aws_sdk_dynamodb::Client,
    pub table: String,
    pub max_attempts: u32,
    pub base_delay: Duration,
}

impl DynamoSink {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        DynamoSink {
            client,
            table: table.into(),
            max_attempts: 10,
            base_delay: Duration::from_millis(50),
        }
    }
}

/// Delays between attempts: base·2^n with jitter, capped at 5 s, `retries` of them.
pub fn retry_delays(base: Duration, retries: usize) -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(base)
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(retries)
        .with_jitter()
        .build()
}

impl ItemSink for DynamoSink {
    async fn write_batch(&self, batch: Vec<Item>) -> Result<u64> {
        let total = batch.len() as u64;
        let mut pending: Vec<WriteRequest> = batch
            .into_iter()
            .map(|item| {
                WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(item))
                            .build()
                            .expect("item is set"),
                    )
                    .build()
            })
            .collect();
        let mut delays = retry_delays(
            self.base_delay,
            self.max_attempts.saturating_sub(1) as usize,
        );
        let mut attempt = 0;
        while !pending.is_empty() {
            attempt += 1;
            let delay = if attempt > 1 {
                delays.next()
            } else {
                Some(Duration::ZERO)
            };
            let Some(delay) = delay else {
                return Err(Error::Aws {
                    call: "BatchWriteItem",
                    resource: format!("table {}", self.table),
                    message: format!(
                        "{} item(s) still unprocessed after {} attempts (throttled?)",
                        pending.len(),
                        self.max_attempts
                    ),
                });
            };
            tokio::time::sleep(delay).await;
            let out = self
                .client
                .batch_write_item()
                .request_items(&self.table, pending)
                .send()
                .await
                .map_err(aws_error("BatchWriteItem", format!("table {}", self.table)))?;
            pending = out
                .unprocessed_items
                .and_then(|mut m| m.remove(&self.table))
                .unwrap_or_default();
            if !pending.is_empty() {
                tracing::warn!(
                    table = self.table,
                    unprocessed = pending.len(),
                    attempt,
                    "retrying unprocessed items"
                );
            }
        }
        Ok(total)
    }
}

/// Counts what was written (for the benchmark and tests without a table).
#[derive(Debug, Default)]
pub struct MemorySink {
    pub items: std::sync::Mutex<HashMap<String, Item>>,
    pub keep_items: bool,
    pub batches: std::sync::atomic::AtomicU64,
}

impl ItemSink for MemorySink {
    async fn write_batch(&self, batch: Vec<Item>) -> Result<u64> {
        self.batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let n = batch.len() as u64;
        if self.keep_items {
            let mut items = self.items.lock().expect("not poisoned");
            for item in batch {
                let key = item["transaction_id"].as_s().expect("key is S").clone();
                items.insert(key, item);
            }
        }
        Ok(n)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransformStats {
    pub row_count: u64,
    pub items_written: u64,
}

/// Streams CSV from `reader`, normalises each row and writes the items through `sink`.
/// Any invalid row fails the whole transform (the object changed after validation).
pub async fn transform_stream<R, S>(
    reader: R,
    upload_id: &str,
    sink: &S,
    concurrency: usize,
) -> Result<TransformStats>
where
    R: tokio::io::AsyncRead + Unpin + Send,
    S: ItemSink,
{
    let mut csv = csv_async::AsyncReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .create_reader(reader);
    let mut record = csv_async::ByteRecord::new();
    let read_error =
        |e: csv_async::Error| Error::TransformFailed(format!("reading the CSV failed: {e}"));
    let has_header = csv
        .read_byte_record(&mut record)
        .await
        .map_err(read_error)?;
    let header = Header::parse(has_header.then(|| to_csv_record(&record)).as_ref())
        .map_err(|e| Error::TransformFailed(e.to_string()))?;
    let mut stats = TransformStats::default();
    let mut batch: Vec<Item> = Vec::with_capacity(BATCH_SIZE);
    let mut batch_keys: HashSet<String> = HashSet::with_capacity(BATCH_SIZE);
    let mut in_flight = FuturesUnordered::new();
    let concurrency = concurrency.max(1);
    loop {
        let more = csv
            .read_byte_record(&mut record)
            .await
            .map_err(read_error)?;
        if more {
            stats.row_count += 1;
            let tx = Transaction::parse(&header, &to_csv_record(&record)).map_err(|errors| {
                let details: Vec<String> = errors
                    .iter()
                    .map(|e| format!("{}: {}", e.column.map_or("record", |c| c.name()), e.message))
                    .collect();
                Error::TransformFailed(format!(
                    "row {} is invalid: {}",
                    stats.row_count,
                    details.join("; ")
                ))
            })?;
            // Two writes of one key in a batch are refused by DynamoDB: flush first (last one wins).
            if batch_keys.contains(&tx.transaction_id) {
                in_flight.push(sink.write_batch(std::mem::take(&mut batch)));
                batch_keys.clear();
            }
            batch_keys.insert(tx.transaction_id.clone());
            batch.push(tx.to_item(upload_id));
        }
        if batch.len() == BATCH_SIZE || (!more && !batch.is_empty()) {
            in_flight.push(sink.write_batch(std::mem::replace(
                &mut batch,
                Vec::with_capacity(BATCH_SIZE),
            )));
            batch_keys.clear();
        }
        while in_flight.len() >= concurrency || (!more && !in_flight.is_empty()) {
            stats.items_written += in_flight.next().await.expect("non-empty")?;
        }
        if !more {
            break;
        }
    }
    Ok(stats)
}

/// The task: transform `s3://bucket/key` into the transactions table and record TRANSFORMED.
pub async fn handle(event: Value, clients: &Clients, config: &TransformerConfig) -> Result<Value> {
    let bucket = event.get("bucket").and_then(Value::as_str);
    let key = event.get("key").and_then(Value::as_str);
    let (Some(bucket), Some(key)) = (bucket, key) else {
        return Err(Error::BadEvent(
            "expected the state {\"bucket\",\"key\",...}".into(),
        ));
    };
    let upload_id = event
        .pointer("/validation/upload_id")
        .and_then(Value::as_str)
        .map_or_else(|| upload_id_from_key(key), str::to_string);
    let reader = tap_lambda_shared::aws::open_object(&clients.s3, bucket, key).await?;
    let sink = DynamoSink::new(clients.dynamodb.clone(), &config.transactions_table);
    let stats = match transform_stream(reader, &upload_id, &sink, DEFAULT_CONCURRENCY).await {
        Ok(stats) => stats,
        Err(e) => {
            let update = StatusUpdate {
                errors: Some(vec![e.to_string()]),
                object_key: Some(key.into()),
                ..Default::default()
            };
            if let Err(status_error) = update_status(
                &clients.dynamodb,
                &config.status_table,
                &upload_id,
                Status::Failed,
                update,
            )
            .await
            {
                tracing::error!(error = %status_error, "could not record the failure");
            }
            return Err(e);
        }
    };
    let update = StatusUpdate {
        row_count: Some(stats.row_count),
        items_written: Some(stats.items_written),
        error_count: Some(0),
        object_key: Some(key.into()),
        ..Default::default()
    };
    update_status(
        &clients.dynamodb,
        &config.status_table,
        &upload_id,
        Status::Transformed,
        update,
    )
    .await?;
    tracing::info!(
        upload_id,
        rows = stats.row_count,
        items = stats.items_written,
        "transformed"
    );
    Ok(
        json!({ "upload_id": upload_id, "items_written": stats.items_written, "row_count": stats.row_count }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "transaction_id,account_id,amount,currency,timestamp,merchant\n";

    #[tokio::test]
    async fn normalises_and_batches() {
        let mut csv = HEADER.to_string();
        for i in 0..60 {
            csv.push_str(&format!(
                "t{i},a{i},{i}.5,usd,2024-05-01T14:30:00+02:00,\"Shop, Inc\"\n"
            ));
        }
        let sink = MemorySink {
            keep_items: true,
            ..Default::default()
        };
        let stats = transform_stream(csv.as_bytes(), "u1", &sink, 2)
            .await
            .unwrap();
        assert_eq!(
            stats,
            TransformStats {
                row_count: 60,
                items_written: 60
            }
        );
        assert_eq!(sink.batches.load(std::sync::atomic::Ordering::Relaxed), 3);
        let items = sink.items.lock().unwrap();
        let t7 = &items["t7"];
        assert_eq!(t7["amount"].as_s().unwrap(), "7.50");
        assert_eq!(t7["amount_minor"].as_n().unwrap(), "750");
        assert_eq!(t7["currency"].as_s().unwrap(), "USD");
        assert_eq!(t7["timestamp"].as_s().unwrap(), "2024-05-01T12:30:00Z");
        assert_eq!(t7["merchant"].as_s().unwrap(), "Shop, Inc");
        assert_eq!(t7["upload_id"].as_s().unwrap(), "u1");
        assert!(!t7.contains_key("description"));
    }

    #[tokio::test]
    async fn duplicate_key_in_a_batch_is_split() {
        let csv =
            format!("{HEADER}t1,a,1,USD,2024-01-01T00:00:00Z,\nt1,a,2,USD,2024-01-01T00:00:00Z,\n");
        let sink = MemorySink {
            keep_items: true,
            ..Default::default()
        };
        let stats = transform_stream(csv.as_bytes(), "u", &sink, 1)
            .await
            .unwrap();
        assert_eq!(stats.items_written, 2);
        assert_eq!(sink.batches.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert_eq!(
            sink.items.lock().unwrap()["t1"]["amount"].as_s().unwrap(),
            "2.00"
        );
    }

    #[tokio::test]
    async fn invalid_row_fails_with_its_number() {
        let csv = format!(
            "{HEADER}t1,a,1,USD,2024-01-01T00:00:00Z,\nt2,a,1.001,USD,2024-01-01T00:00:00Z,\n"
        );
        let err = transform_stream(csv.as_bytes(), "u", &MemorySink::default(), 1)
            .await
            .unwrap_err();
        assert_eq!(err.error_type(), "TransformFailed");
        assert!(
            err.to_string().contains("row 2") && err.to_string().contains("amount"),
            "{err}"
        );
    }

    #[test]
    fn retry_delays_grow_are_capped_and_run_out() {
        let base = Duration::from_millis(100);
        let delays: Vec<Duration> = retry_delays(base, 30).collect();
        assert_eq!(delays.len(), 30, "one delay per retry");
        // Jitter adds up to one more delay's worth: 100 ms·2^n ≤ d ≤ 2·100 ms·2^n, under the cap.
        assert!(
            delays[0] >= base && delays[0] <= base * 2,
            "{:?}",
            delays[0]
        );
        assert!(delays[3] >= Duration::from_millis(800), "{:?}", delays[3]);
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(10)),
            "{delays:?}"
        );
    }
}
