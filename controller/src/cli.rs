//! The command-line front end over the engine: `plan`, `apply` and `destroy` on a manifest file (no
//! cluster needed), `crd`, and `run` (the Kubernetes controller).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::CustomResourceExt;

use crate::api::{Phase, TransactionPipeline};
use crate::engine::{Action, DriftMemory, Engine, Mode, Pipeline, Report};

#[derive(Parser, Debug)]
#[command(
    name = "tap-controller",
    version,
    about = "Keeps a serverless transaction-processing stack on AWS converged"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the Kubernetes controller.
    Run(RunArgs),
    /// Converge the stack of a TransactionPipeline manifest, then print its outputs.
    Apply(ManifestArgs),
    /// Show what `apply` would change (read calls only). Exit code 0: nothing; 2: changes; 1: error.
    Plan(ManifestArgs),
    /// Delete every AWS resource the manifest's pipeline owns (per `deletionPolicy`).
    Destroy(ManifestArgs),
    /// Print the TransactionPipeline CustomResourceDefinition (YAML).
    Crd,
}

#[derive(Args, Debug)]
pub struct ManifestArgs {
    /// A TransactionPipeline manifest (YAML).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Maximum AWS resources worked on at once.
    #[arg(long, env = "TAP_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// How long `apply` keeps retrying while resources are still provisioning (seconds).
    #[arg(long, default_value_t = 300)]
    pub timeout_seconds: u64,
    /// Tags added to every AWS resource, `k=v,k2=v2`.
    #[arg(long, env = "TAP_EXTRA_TAGS", default_value = "", value_parser = parse_tags)]
    pub extra_tags: BTreeMap<String, String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Seconds between full re-reads of a converged stack (drift detection).
    #[arg(long, env = "TAP_RESYNC_SECONDS", default_value_t = 120)]
    pub resync_seconds: u64,
    /// Maximum AWS resources worked on at once, per pipeline.
    #[arg(long, env = "TAP_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "TAP_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: std::net::SocketAddr,
    /// Namespaces to watch, comma-separated (empty: all).
    #[arg(
        long,
        env = "TAP_WATCH_NAMESPACES",
        default_value = "",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,
    /// Elect a leader through a Lease (required with more than one replica).
    #[arg(long, env = "TAP_LEADER_ELECTION", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub leader_election: bool,
    #[arg(long, env = "TAP_LEASE_NAME", default_value = "tap-controller")]
    pub lease_name: String,
    /// Seconds the Lease stays valid without renewal (a standby takes over within this).
    #[arg(long, env = "TAP_LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub lease_duration_seconds: u64,
    /// Seconds in-flight reconciles may run on after SIGTERM before they are abandoned; the process
    /// exits at the latest 5 s after that.
    #[arg(long, env = "TAP_SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 5)]
    pub shutdown_timeout_seconds: u64,
    /// Tags added to every AWS resource, `k=v,k2=v2`.
    #[arg(long, env = "TAP_EXTRA_TAGS", default_value = "", value_parser = parse_tags)]
    pub extra_tags: BTreeMap<String, String>,
    #[command(flatten)]
    pub logging: LogArgs,
}

#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    #[arg(long, env = "TAP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// A tracing filter: `info`, `debug`, `tap_controller=debug,kube=info`, …
    #[arg(long, env = "TAP_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

fn parse_tags(s: &str) -> Result<BTreeMap<String, String>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| format!("tag {pair:?} is not key=value"))
        })
        .collect()
}

/// Reads a TransactionPipeline manifest.
pub fn load_manifest(path: &Path) -> anyhow::Result<TransactionPipeline> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let pipeline: TransactionPipeline = serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not a TransactionPipeline manifest", path.display()))?;
    anyhow::ensure!(
        pipeline.metadata.name.is_some(),
        "{}: metadata.name is required",
        path.display()
    );
    Ok(pipeline)
}

pub fn crd_yaml() -> String {
    let yaml =
        serde_yaml::to_string(&TransactionPipeline::crd()).expect("the CRD serializes to YAML");
    quote_yaml11_booleans(&yaml)
}

/// serde_yaml writes YAML 1.2, where `OFF` is a string; kubectl and the API server read YAML 1.1, where an
/// unquoted `OFF`, `ON`, `YES`, `NO`, `Y` or `N` is a boolean (the `logLevel` enum has `OFF`). Quote them.
fn quote_yaml11_booleans(yaml: &str) -> String {
    const YAML11_BOOLEANS: &[&str] = &["y", "yes", "n", "no", "on", "off"];
    let mut out = String::with_capacity(yaml.len());
    for line in yaml.lines() {
        let value_start = if let Some(rest) = line.trim_start().strip_prefix("- ") {
            line.len() - rest.len()
        } else if let Some(i) = line.find(": ") {
            i + 2
        } else {
            line.len()
        };
        let value = &line[value_start..];
        if YAML11_BOOLEANS.contains(&value.to_ascii_lowercase().as_str()) {
            out.push_str(&line[..value_start]);
            out.push('\'');
            out.push_str(value);
            out.push('\'');
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Exit codes of `plan`, like `terraform plan -detailed-exitcode`.
pub const EXIT_NO_CHANGES: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_CHANGES: i32 = 2;
/// `apply` stopped because images are not pushed yet.
pub const EXIT_WAITING_FOR_IMAGES: i32 = 3;

async fn engine(args: &ManifestArgs) -> Engine {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    Engine::new(sdk, args.concurrency, args.extra_tags.clone())
}

fn symbol(action: &Action, applied: bool) -> &'static str {
    match (action, applied) {
        (Action::NoChange, _) => "=",
        (Action::Create, _) => "+",
        (Action::Update(_), _) | (Action::Hold(_), _) => "~",
        (Action::Delete, _) | (Action::AlreadyGone, _) => "-",
        (Action::Wait(_), _) => "…",
        (Action::Conflict(_), _) | (Action::Fail(_), _) => "!",
        (Action::Retain, _) => "=",
    }
}

fn print_resources(
    out: &mut impl Write,
    report: &Report,
    show_unchanged: bool,
) -> std::io::Result<()> {
    for r in &report.resources {
        if !show_unchanged && matches!(r.action, Action::NoChange) {
            continue;
        }
        let message = r.message();
        let message = if message.is_empty() {
            "up to date".into()
        } else {
            message
        };
        writeln!(
            out,
            "{} {:<13} {:<48} {} ({} ms)",
            symbol(&r.action, r.applied),
            r.id.kind,
            r.id.name,
            message,
            r.elapsed.as_millis()
        )?;
        if let Action::Update(diffs) | Action::Hold(diffs) = &r.action {
            for d in diffs {
                writeln!(out, "      {}: {} → {}", d.field, d.actual, d.expected)?;
            }
        }
    }
    Ok(())
}

fn print_outputs(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    let o = &report.outputs;
    writeln!(out, "outputs:")?;
    let rows = [
        ("apiEndpoint", &o.api_endpoint),
        ("bucketName", &o.bucket_name),
        ("transactionsTable", &o.transactions_table),
        ("statusTable", &o.status_table),
        ("stateMachineArn", &o.state_machine_arn),
        ("topicArn", &o.topic_arn),
        ("dlqUrl", &o.dlq_url),
        ("apiKeyId", &o.api_key_id),
    ];
    for (key, value) in rows {
        writeln!(out, "  {key}: {}", value.as_deref().unwrap_or("-"))?;
    }
    for (f, arn) in &o.function_arns {
        writeln!(out, "  functionArns.{f}: {arn}")?;
    }
    for (f, uri) in &o.repository_uris {
        writeln!(out, "  repositoryUris.{f}: {uri}")?;
    }
    Ok(())
}

/// `apply`: reconcile until converged, waiting on images, a terminal failure, or the timeout.
pub async fn apply(args: &ManifestArgs) -> anyhow::Result<i32> {
    let pipeline = load_manifest(&args.file)?;
    let engine = engine(args).await;
    let owner = pipeline.owner_key();
    let target = Pipeline {
        owner: &owner,
        spec: &pipeline.spec,
    };
    let deadline = Instant::now() + Duration::from_secs(args.timeout_seconds);
    let mut memory = DriftMemory::default();
    let mut stdout = std::io::stdout().lock();
    let mut pass = 0;
    loop {
        pass += 1;
        let report = engine.reconcile(&target, Mode::Apply, &mut memory).await?;
        let phase = report.phase(false);
        if args.output == Output::Text {
            writeln!(
                stdout,
                "pass {pass}: {} in {} ms, {} AWS calls",
                phase.as_str(),
                report.elapsed.as_millis(),
                report.calls.values().sum::<u64>()
            )?;
            print_resources(&mut stdout, &report, pass == 1)?;
        }
        let retry = match phase {
            Phase::Ready | Phase::Drifted => false,
            Phase::Provisioning => true,
            Phase::Failed => report.conflicts().is_empty() && report.only_transient_failures(),
            Phase::WaitingForImages | Phase::Deleting => false,
        };
        if !retry || Instant::now() >= deadline {
            if args.output == Output::Json {
                let status = report.status(pipeline.metadata.generation, None, false);
                writeln!(stdout, "{}", serde_json::to_string_pretty(&status)?)?;
            } else {
                print_outputs(&mut stdout, &report)?;
                writeln!(stdout, "phase: {}", phase.as_str())?;
                for image in report.images_to_push() {
                    writeln!(stdout, "waiting: {image}")?;
                }
            }
            return Ok(match phase {
                Phase::Ready | Phase::Drifted => 0,
                Phase::WaitingForImages => EXIT_WAITING_FOR_IMAGES,
                _ => EXIT_ERROR,
            });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// `plan`: what `apply` would do; read calls only.
pub async fn plan(args: &ManifestArgs) -> anyhow::Result<i32> {
    let pipeline = load_manifest(&args.file)?;
    let engine = engine(args).await;
    let owner = pipeline.owner_key();
    let report = engine
        .reconcile(
            &Pipeline {
                owner: &owner,
                spec: &pipeline.spec,
            },
            Mode::DryRun,
            &mut DriftMemory::default(),
        )
        .await?;
    let mut stdout = std::io::stdout().lock();
    if args.output == Output::Json {
        let resources: Vec<serde_json::Value> = report
            .resources
            .iter()
            .map(|r| {
                let (action, diffs) = match &r.action {
                    Action::NoChange => ("none", vec![]),
                    Action::Create => ("create", vec![]),
                    Action::Update(d) | Action::Hold(d) => ("update", d.clone()),
                    Action::Delete => ("delete", vec![]),
                    Action::Conflict(_) => ("conflict", vec![]),
                    Action::Fail(_) => ("error", vec![]),
                    Action::Wait(_) => ("wait", vec![]),
                    Action::AlreadyGone | Action::Retain => ("none", vec![]),
                };
                serde_json::json!({
                    "kind": r.id.kind.as_str(),
                    "name": r.id.name,
                    "action": action,
                    "message": r.message(),
                    "diffs": diffs.iter().map(|d| serde_json::json!({"field": d.field, "expected": d.expected, "actual": d.actual})).collect::<Vec<_>>(),
                })
            })
            .collect();
        writeln!(
            stdout,
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"changes": report.has_changes(), "resources": resources})
            )?
        )?;
    } else {
        print_resources(&mut stdout, &report, false)?;
        let count =
            |f: fn(&Action) -> bool| report.resources.iter().filter(|r| f(&r.action)).count();
        writeln!(
            stdout,
            "plan: {} to create, {} to update, {} unchanged",
            count(|a| matches!(a, Action::Create)),
            count(|a| matches!(a, Action::Update(_) | Action::Hold(_))),
            count(|a| matches!(a, Action::NoChange)),
        )?;
    }
    if !report.failures().is_empty() || !report.conflicts().is_empty() {
        return Ok(EXIT_ERROR);
    }
    Ok(if report.has_changes() {
        EXIT_CHANGES
    } else {
        EXIT_NO_CHANGES
    })
}

/// `destroy`: tear the stack down per `deletionPolicy`.
pub async fn destroy(args: &ManifestArgs) -> anyhow::Result<i32> {
    let pipeline = load_manifest(&args.file)?;
    let mut stdout = std::io::stdout().lock();
    if pipeline.spec.deletion_policy == crate::api::DeletionPolicy::Retain {
        writeln!(stdout, "deletionPolicy is Retain: nothing deleted")?;
        return Ok(0);
    }
    let engine = engine(args).await;
    let owner = pipeline.owner_key();
    let report = engine
        .teardown(
            &Pipeline {
                owner: &owner,
                spec: &pipeline.spec,
            },
            Mode::Apply,
        )
        .await?;
    if args.output == Output::Json {
        let status = report.status(pipeline.metadata.generation, None, true);
        writeln!(stdout, "{}", serde_json::to_string_pretty(&status)?)?;
    } else {
        print_resources(&mut stdout, &report, true)?;
        writeln!(
            stdout,
            "destroy: {} of {} resources gone in {} ms",
            report.resources.iter().filter(|r| r.is_done()).count(),
            report.resources.len(),
            report.elapsed.as_millis()
        )?;
    }
    Ok(if report.converged() { 0 } else { EXIT_ERROR })
}
