//! Rows per second through the whole local data path (`tap_tests::datapath`): `POST /upload` through the
//! deployed API's checks to csv-validator (validate, store under `validated/`), S3's notification to
//! csv-validator (StartExecution), and the deployed state machine (Validate re-reads and re-validates the
//! object, Transform writes every row to DynamoDB, Notify publishes), each function its real binary with its
//! role under moto's IAM enforcement. Prints a markdown table.
//!
//! `cargo bench -p tap-tests --bench datapath --profile dev`: the functions and tap-controller are the
//! binaries in `target/debug` (build them first: `cargo build -p tap-controller -p csv-validator
//! -p data-transformer -p notification-sender`), and moto does most of the work, so a release build of this
//! harness (and of the SDKs under it) would change little.

use std::time::Instant;

use anyhow::ensure;
use tap_tests::datapath::{transactions_csv, DataPath, PipelineOptions};

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let dp = DataPath::start(PipelineOptions {
        suffix: "dpb".into(),
        transformer_timeout_seconds: 300,
        ..PipelineOptions::default()
    })
    .await?;
    println!(
        "converged by the CLI in {:.1} s (moto, IAM enforced for the data path)\n",
        dp.converge_time.as_secs_f64()
    );
    println!("| rows | CSV | API → 202 | S3 notification → StartExecution | state machine (validate, transform, notify) | total | rows/s |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for rows in [10_000usize, 100_000] {
        let csv = transactions_csv(rows, "b");
        let size = csv.len();
        let request = dp.csv_request(&csv);
        let t0 = Instant::now();
        let response = dp.post(&request).await?;
        let t1 = Instant::now();
        ensure!(response.status == 202, "{rows} rows: {response:?}");
        let deliveries = dp.deliver_s3_notifications().await?;
        let t2 = Instant::now();
        ensure!(
            deliveries.len() == 1 && deliveries[0].succeeded(),
            "{deliveries:?}"
        );
        let runs = dp.run_new_executions().await?;
        let t3 = Instant::now();
        ensure!(
            runs.len() == 1 && runs[0].status.as_deref() == Some("SUCCEEDED"),
            "{rows} rows: the execution did not succeed: {:?}\n{}",
            runs.first().map(|r| (&r.status, &r.error, &r.cause)),
            dp.function("data-transformer").log_tail(10)
        );
        let id = response.json()["upload_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let status = dp.status_of(&id).await?.unwrap_or_default();
        let written = status
            .get("items_written")
            .and_then(|v| v.as_n().ok())
            .cloned()
            .unwrap_or_default();
        ensure!(
            written == rows.to_string(),
            "{rows} rows: {written} written"
        );
        let total = (t3 - t0).as_secs_f64();
        println!(
            "| {rows} | {:.1} MB | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.0} |",
            size as f64 / 1e6,
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
            total,
            rows as f64 / total
        );
        let _ = dp.notifications().await?;
    }
    Ok(())
}
