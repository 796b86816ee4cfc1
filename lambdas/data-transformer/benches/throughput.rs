//! Throughput and peak memory of validation and transformation on a generated CSV, plus the size of
//! the arm64 binaries. Not a test: it prints a table.
//!
//! Each measurement runs in a child process (this binary again, `TAP_BENCH_CHILD=<case>`), so its
//! peak RSS (`VmHWM` from /proc/self/status) is its own. Rows: `TAP_BENCH_ROWS` (default 100000);
//! the moto case writes `TAP_BENCH_MOTO_ROWS` (default 20000) rows through the real handler
//! (S3 GetObject stream → normalise → BatchWriteItem to moto's DynamoDB); `TAP_BENCH_MOTO=0` skips it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use data_transformer::{transform_stream, MemorySink, DEFAULT_CONCURRENCY};
use serde_json::{json, Value};
use tap_lambda_shared::testing::{create_bucket, create_tables, generate_csv};

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs one case in this process and prints `{"rows","secs","vmhwm_kib"}`.
fn child(case: &str, csv: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (rows, secs) = runtime.block_on(async {
        match case {
            "baseline" => (0, 0.0),
            "validate-bytes" => {
                let data = std::fs::read(csv).unwrap();
                let start = Instant::now();
                let report = tap_lambda_shared::validate_bytes(&data).unwrap();
                assert!(report.is_valid());
                (report.row_count, start.elapsed().as_secs_f64())
            }
            "validate-stream" => {
                let file = tokio::io::BufReader::new(tokio::fs::File::open(csv).await.unwrap());
                let start = Instant::now();
                let report = tap_lambda_shared::validate_async(file).await.unwrap();
                assert!(report.is_valid());
                (report.row_count, start.elapsed().as_secs_f64())
            }
            "transform-memory" => {
                let file = tokio::io::BufReader::new(tokio::fs::File::open(csv).await.unwrap());
                let sink = MemorySink::default();
                let start = Instant::now();
                let stats = transform_stream(file, "bench", &sink, DEFAULT_CONCURRENCY)
                    .await
                    .unwrap();
                (stats.items_written, start.elapsed().as_secs_f64())
            }
            "transform-moto" => {
                let emulator = tap_tests::Emulator::start().await.unwrap();
                let clients = data_transformer::Clients::new(&emulator.sdk_config());
                create_bucket(&clients.s3, "bench").await.unwrap();
                create_tables(&clients.dynamodb, "transactions", "processing-status")
                    .await
                    .unwrap();
                let rows = env_usize("TAP_BENCH_MOTO_ROWS", 20_000);
                let data = generate_csv(rows, 11).into_bytes();
                clients
                    .s3
                    .put_object()
                    .bucket("bench")
                    .key("validated/bench.csv")
                    .body(data.into())
                    .send()
                    .await
                    .unwrap();
                let config = tap_lambda_shared::TransformerConfig {
                    transactions_table: "transactions".into(),
                    status_table: "processing-status".into(),
                };
                let start = Instant::now();
                let out = data_transformer::handle(
                    json!({"bucket": "bench", "key": "validated/bench.csv"}),
                    &clients,
                    &config,
                )
                .await
                .unwrap();
                (
                    out["items_written"].as_u64().unwrap(),
                    start.elapsed().as_secs_f64(),
                )
            }
            other => panic!("unknown case {other}"),
        }
    });
    println!(
        "{}",
        json!({"rows": rows, "secs": secs, "vmhwm_kib": vm_hwm_kib()})
    );
}

fn run_child(case: &str, csv: &Path) -> Option<Value> {
    let out = Command::new(std::env::current_exe().unwrap())
        .env("TAP_BENCH_CHILD", case)
        .env("TAP_BENCH_CSV", csv)
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!("{case} failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
}

fn lambda_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().join("lambda")
}

fn main() {
    if let Ok(case) = std::env::var("TAP_BENCH_CHILD") {
        child(&case, Path::new(&std::env::var("TAP_BENCH_CSV").unwrap()));
        return;
    }
    let rows = env_usize("TAP_BENCH_ROWS", 100_000);
    let csv_path = std::env::temp_dir().join(format!("tap-bench-{}.csv", std::process::id()));
    let csv = generate_csv(rows, 42);
    std::fs::write(&csv_path, &csv).unwrap();
    println!(
        "input: {rows} generated rows, {:.1} MiB ({})",
        csv.len() as f64 / 1048576.0,
        csv_path.display()
    );
    drop(csv);

    let mut cases = vec![
        ("baseline", "process start-up only (reference for peak RSS)"),
        (
            "validate-bytes",
            "validation, whole file in memory (API upload path)",
        ),
        (
            "validate-stream",
            "validation, streamed from a file (Step Functions task path)",
        ),
        (
            "transform-memory",
            "transform: stream + normalise + 25-item batches, in-memory sink",
        ),
    ];
    if std::env::var("TAP_BENCH_MOTO").as_deref() != Ok("0") {
        cases.push((
            "transform-moto",
            "transform handler: S3 stream -> BatchWriteItem on moto",
        ));
    }
    println!();
    println!(
        "{:<18} {:>9} {:>9} {:>12} {:>14}  what",
        "case", "rows", "secs", "rows/s", "peak RSS MiB"
    );
    for (case, what) in cases {
        match run_child(case, &csv_path) {
            Some(v) => {
                let rows = v["rows"].as_u64().unwrap_or(0);
                let secs = v["secs"].as_f64().unwrap_or(0.0);
                let rate = if secs > 0.0 {
                    format!("{:.0}", rows as f64 / secs)
                } else {
                    "-".into()
                };
                let peak = v["vmhwm_kib"].as_u64().unwrap_or(0) as f64 / 1024.0;
                println!("{case:<18} {rows:>9} {secs:>9.3} {rate:>12} {peak:>14.1}  {what}");
            }
            None => println!(
                "{case:<18} {:>9} {:>9} {:>12} {:>14}  {what} (failed, see above)",
                "-", "-", "-", "-"
            ),
        }
    }
    let _ = std::fs::remove_file(&csv_path);

    println!();
    println!("arm64 binaries ({}):", lambda_dir().display());
    for f in ["csv-validator", "data-transformer", "notification-sender"] {
        let path = lambda_dir().join(f).join("bootstrap");
        match std::fs::metadata(&path) {
            Ok(m) => println!(
                "  {f:<20} {:>6.2} MiB ({} bytes)",
                m.len() as f64 / 1048576.0,
                m.len()
            ),
            Err(_) => println!("  {f:<20} not built (lambdas/build-arm64.sh)"),
        }
    }
}
