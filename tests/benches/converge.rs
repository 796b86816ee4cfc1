//! Benchmark: converge 1 and 20 pipelines against moto with the graph executor (concurrency 8) and
//! sequentially (concurrency 1), once directly and once through the microburst proxy adding 40 ms to
//! every call (moto answers in ~3 ms and serialises requests; AWS APIs answer in tens of ms, and that
//! latency is what the graph executor overlaps). Then, on a converged stack, one resync and one drift
//! correction. Prints markdown tables. Run: `cargo bench -p tap-tests --bench converge`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::future::join_all;
use tap_controller::api::TransactionPipelineSpec;
use tap_controller::aws::{is_read, Aws};
use tap_controller::engine::{DriftMemory, Engine, Mode, Pipeline, Report};
use tap_tests::{fake_image_manifest, peak_rss_mib, Emulator};

fn spec(suffix: &str) -> TransactionPipelineSpec {
    serde_saphyr::from_str(&format!(
        "environmentSuffix: {suffix}\nfunctions:\n  csvValidator: {{image: {{tag: v1}}}}\n  dataTransformer: {{image: {{tag: v1}}}}\n  notificationSender: {{image: {{tag: v1}}}}\n"
    ))
    .unwrap()
}

async fn push_images(aws: &Aws, suffix: &str) {
    for f in ["csv-validator", "data-transformer", "notification-sender"] {
        aws.ecr
            .put_image()
            .repository_name(format!("tap-{suffix}-{f}"))
            .image_tag("v1")
            .image_manifest(fake_image_manifest("v1"))
            .send()
            .await
            .expect("push image");
    }
}

/// Converges one pipeline: first pass creates all but the functions (no images yet), then images are
/// pushed (not timed) and passes repeat until converged. Returns the timed wall clock.
async fn converge_one(engine: &Engine, aws: &Aws, suffix: &str) -> (Duration, Report) {
    let spec = spec(suffix);
    let owner = format!("bench/{suffix}");
    let pipeline = Pipeline {
        owner: &owner,
        spec: &spec,
    };
    let mut memory = DriftMemory::default();
    let started = Instant::now();
    engine
        .reconcile(&pipeline, Mode::Apply, &mut memory)
        .await
        .expect("reconcile");
    let mut timed = started.elapsed();
    push_images(aws, suffix).await;
    for _ in 0..10 {
        let t = Instant::now();
        let report = engine
            .reconcile(&pipeline, Mode::Apply, &mut memory)
            .await
            .expect("reconcile");
        timed += t.elapsed();
        if report.converged() {
            return (timed, report);
        }
    }
    panic!("{suffix} did not converge");
}

struct Row {
    latency_ms: u64,
    pipelines: usize,
    concurrency: usize,
    wall: Duration,
    calls: BTreeMap<(String, String), u64>,
    engine_rss: f64,
    moto_rss: f64,
}

/// microburst in front of the emulator, adding `latency_ms` to every call; killed on drop.
struct LatencyProxy {
    child: std::process::Child,
    endpoint: String,
}

impl LatencyProxy {
    async fn start(upstream: &str, latency_ms: u64) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = std::env::temp_dir().join(format!("tap-bench-latency-{port}.yml"));
        std::fs::write(&config, format!("rules:\n  - latency: {latency_ms}\n")).unwrap();
        let child = std::process::Command::new("microburst")
            .args([
                "--upstream",
                upstream,
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--config",
            ])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("microburst is installed (scripts/setup.sh)");
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        LatencyProxy {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn scenario(pipelines: usize, concurrency: usize, latency_ms: u64) -> Row {
    let emulator = Emulator::start().await.expect("emulator");
    let proxy = if latency_ms > 0 {
        Some(LatencyProxy::start(&emulator.endpoint, latency_ms).await)
    } else {
        None
    };
    let sdk = match &proxy {
        Some(p) => emulator
            .sdk_config()
            .to_builder()
            .endpoint_url(&p.endpoint)
            .build(),
        None => emulator.sdk_config(),
    };
    let engine = Engine::new(sdk, concurrency, BTreeMap::new());
    let aws = engine.aws(None).await.expect("sts");
    aws.calls.reset();
    let started = Instant::now();
    let suffixes: Vec<String> = (0..pipelines).map(|i| format!("b{i}")).collect();
    let results = join_all(suffixes.iter().map(|s| converge_one(&engine, &aws, s))).await;
    let wall = if pipelines == 1 {
        results[0].0
    } else {
        started.elapsed()
    };
    drop(proxy);
    Row {
        latency_ms,
        pipelines,
        concurrency,
        wall,
        calls: aws.calls.snapshot(),
        engine_rss: peak_rss_mib(None).unwrap_or(f64::NAN),
        moto_rss: peak_rss_mib(Some(emulator.pid())).unwrap_or(f64::NAN),
    }
}

#[tokio::main]
async fn main() {
    let mut rows = Vec::new();
    for latency_ms in [0, 40] {
        for pipelines in [1, 20] {
            for concurrency in [8, 1] {
                rows.push(scenario(pipelines, concurrency, latency_ms).await);
            }
        }
    }
    println!(
        "\n## Converge (moto, {} cores)\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!("| added latency per call | pipelines | executor | wall time | AWS calls | writes | reads | peak RSS engine (MiB) | peak RSS moto (MiB) |");
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let total: u64 = r.calls.values().sum();
        let writes: u64 = r
            .calls
            .iter()
            .filter(|((_, op), _)| !is_read(op))
            .map(|(_, c)| c)
            .sum();
        let executor = if r.concurrency == 1 {
            "sequential (concurrency 1)".to_string()
        } else {
            format!("graph (concurrency {})", r.concurrency)
        };
        println!(
            "| {} ms | {} | {executor} | {:.2} s | {total} | {writes} | {} | {:.1} | {:.1} |",
            r.latency_ms,
            r.pipelines,
            r.wall.as_secs_f64(),
            total - writes,
            r.engine_rss,
            r.moto_rss
        );
    }
    println!("\n### AWS calls by operation, 1 pipeline, graph executor\n");
    println!("| service | operation | calls |");
    println!("|---|---|---:|");
    for ((service, op), n) in &rows[0].calls {
        println!("| {service} | {op} | {n} |");
    }

    // Resync of a converged stack, and the time from an out-of-band change to its correction.
    let emulator = Emulator::start().await.expect("emulator");
    let engine = Engine::new(emulator.sdk_config(), 8, BTreeMap::new());
    let aws = engine.aws(None).await.expect("sts");
    let spec = spec("r1");
    let pipeline = Pipeline {
        owner: "bench/r1",
        spec: &spec,
    };
    let mut memory = DriftMemory::default();
    engine
        .reconcile(&pipeline, Mode::Apply, &mut memory)
        .await
        .unwrap();
    push_images(&aws, "r1").await;
    while !engine
        .reconcile(&pipeline, Mode::Apply, &mut memory)
        .await
        .unwrap()
        .converged()
    {}
    let mut resyncs = Vec::new();
    for _ in 0..5 {
        let r = engine
            .reconcile(&pipeline, Mode::Apply, &mut memory)
            .await
            .unwrap();
        assert!(!r.has_changes());
        resyncs.push(r);
    }
    let mut times: Vec<f64> = resyncs
        .iter()
        .map(|r| r.elapsed.as_secs_f64() * 1000.0)
        .collect();
    times.sort_by(f64::total_cmp);
    let reads: u64 = resyncs[0].calls.values().sum();
    let writes: u64 = resyncs
        .iter()
        .flat_map(|r| r.calls.iter())
        .filter(|((_, op), _)| !is_read(op))
        .map(|(_, c)| c)
        .sum();
    aws.lambda
        .update_function_configuration()
        .function_name("tap-r1-csv-validator")
        .memory_size(256)
        .send()
        .await
        .unwrap();
    let changed = Instant::now();
    let fix = engine
        .reconcile(&pipeline, Mode::Apply, &mut memory)
        .await
        .unwrap();
    let to_correction = changed.elapsed();
    assert!(fix.drift.iter().any(|d| d.field == "memoryMb"));
    println!("\n## Resync of a converged stack (moto, 30 resources)\n");
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| resync time, median of 5 | {:.1} ms |", times[2]);
    println!("| read calls per resync | {reads} |");
    println!("| write calls over 5 resyncs | {writes} |");
    println!(
        "| out-of-band change → corrected (one reconcile) | {:.1} ms |",
        to_correction.as_secs_f64() * 1000.0
    );
    println!(
        "| calls in the correcting reconcile | {} ({} writes) |",
        fix.calls.values().sum::<u64>(),
        fix.calls
            .iter()
            .filter(|((_, op), _)| !is_read(op))
            .map(|(_, c)| c)
            .sum::<u64>()
    );
}
