//! The command-line front end over the engine: `plan`, `apply` and `destroy` on a manifest file (no
//! cluster needed), `crd`, and `run` (the Kubernetes controller).
//!
//! - [`manifest`]: reading a manifest as kubectl would (and refusing what the API server would), the CRD;
//! - [`commands`]: `plan`, `apply`, `destroy`;
//! - [`output`]: tables and the error format;
//! - [`progress`]: live progress of a walk.

mod commands;
pub mod manifest;
pub mod output;
mod progress;

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use commands::{apply, destroy, exit_code, force_unlock, plan};
pub use manifest::{crd_yaml, load_manifest, parse_manifest, ManifestError};
pub use output::print_error;

/// Exit codes. `plan`, like `terraform plan -detailed-exitcode`: 0 no changes, 2 changes, 1 error.
pub const EXIT_OK: i32 = 0;
pub const EXIT_NO_CHANGES: i32 = 0;
/// Any error, usage errors included (never 2, which `plan` uses for "changes").
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_CHANGES: i32 = 2;
/// `apply` stopped because images are not pushed yet.
pub const EXIT_WAITING_FOR_IMAGES: i32 = 3;

const PLAN_EXIT: &str = "Exit status:
  0  nothing to change
  2  changes to make (listed above it)
  1  an error: an invalid manifest, an AWS error, a usage error";
const APPLY_EXIT: &str = "Exit status:
  0  the stack is converged (its outputs are printed)
  3  waiting for images: push the images it names to ECR, then apply again
  1  an error: an invalid manifest, an AWS error, a usage error";
const DESTROY_EXIT: &str = "Exit status:
  0  everything the pipeline owns is deleted (or deletionPolicy is Retain, or nothing was there)
  1  an error, or not confirmed: nothing is deleted without `yes` on a terminal or --auto-approve";
const OTHER_EXIT: &str = "Exit status: 0 on success, 1 on any error (usage errors included).";

#[derive(Parser, Debug)]
#[command(
    name = "tap-controller",
    version,
    about = "Keeps a serverless transaction-processing stack on AWS converged",
    after_help = "Exit status: 0 success; 1 any error, usage errors included; `plan` 2: changes to make; `apply` 3: waiting for images.\nAWS settings come the standard SDK way: AWS_REGION, AWS_ENDPOINT_URL, AWS_PROFILE, the credentials chain."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the Kubernetes controller.
    #[command(after_help = OTHER_EXIT)]
    Run(RunArgs),
    /// Converge the stack of a TransactionPipeline manifest, then print its outputs.
    #[command(after_help = APPLY_EXIT)]
    Apply(ApplyArgs),
    /// Show what `apply` would do (read calls only): create, update field: actual → expected.
    #[command(after_help = PLAN_EXIT)]
    Plan(PlanArgs),
    /// Delete every AWS resource the manifest's pipeline owns (per `deletionPolicy`), after showing what
    /// and asking.
    #[command(after_help = DESTROY_EXIT)]
    Destroy(DestroyArgs),
    /// Remove the stack's lock that a writer which is gone for good left behind (like `terraform
    /// force-unlock`); refused unless LOCK_ID is the lock's id.
    #[command(after_help = OTHER_EXIT)]
    ForceUnlock(ForceUnlockArgs),
    /// Print the TransactionPipeline CustomResourceDefinition (YAML).
    #[command(after_help = OTHER_EXIT)]
    Crd,
}

/// What every command on a manifest takes.
#[derive(Args, Debug)]
pub struct ManifestArgs {
    /// A TransactionPipeline manifest (YAML, one object).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// `text`: tables on stdout, progress on stderr. `json`: one JSON document on stdout and nothing
    /// else there.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Maximum AWS resources worked on at once.
    #[arg(long, env = "TAP_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// Tags added to every AWS resource, `k=v,k2=v2`.
    #[arg(long, env = "TAP_EXTRA_TAGS", default_value = "", value_parser = parse_tags)]
    pub extra_tags: BTreeMap<String, String>,
    /// How long `apply` and `destroy` wait for another writer's lock on the stack (the controller, a
    /// CI job) before giving up, in seconds.
    #[arg(long, env = "TAP_LOCK_TIMEOUT_SECONDS", default_value_t = 60)]
    pub lock_timeout: u64,
}

#[derive(Args, Debug)]
pub struct ForceUnlockArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,
    /// The lock id that `apply`, `destroy` or `plan` printed with the holder. Anything else is refused.
    pub lock_id: String,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,
    /// How long to keep retrying while resources are still provisioning (seconds).
    #[arg(long, default_value_t = 300)]
    pub timeout_seconds: u64,
}

#[derive(Args, Debug)]
pub struct DestroyArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,
    /// Delete without asking (for scripts). Without it, destroy asks on a terminal and refuses
    /// elsewhere.
    #[arg(long)]
    pub auto_approve: bool,
    /// How long to keep repeating teardown passes while the only failures are transient (throttling,
    /// a dependency still being deleted), in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_seconds: u64,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Seconds between full re-reads of a converged stack (drift detection).
    #[arg(long, env = "TAP_RESYNC_SECONDS", default_value_t = 120)]
    pub resync_seconds: u64,
    /// Maximum AWS resources worked on at once, per pipeline.
    #[arg(long, env = "TAP_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// Maximum pipelines reconciled at once, across all watched namespaces (0: no limit).
    #[arg(long, env = "TAP_MAX_CONCURRENT_RECONCILES", default_value_t = crate::k8s::DEFAULT_MAX_CONCURRENT_RECONCILES)]
    pub max_concurrent_reconciles: u16,
    /// Fraction of the resync period by which a converged pipeline's next resync may come early, at
    /// random, so that pipelines created together do not resync together (0 to 1).
    #[arg(long, env = "TAP_RESYNC_JITTER", default_value_t = crate::k8s::DEFAULT_RESYNC_JITTER)]
    pub resync_jitter: f64,
    /// Outbound AWS call rates per service, `service=rate[/burst],…` over the defaults (sized for AWS's
    /// control-plane limits), or `none` (an emulator).
    #[arg(long, env = "TAP_AWS_RATE_LIMITS", default_value = "")]
    pub aws_rate_limits: crate::aws::RateLimits,
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
    /// Name of the Lease used for leader election, in the controller's namespace.
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
    /// Log line format on stderr: `text` for people, `json` (one object per line) for log collectors.
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

/// Parses the command line: `--help` and `--version` exit 0, any usage error exits 1 (clap's default,
/// 2, is what `plan` means by "changes").
pub fn parse_args() -> Result<Cli, i32> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    EXIT_OK
                }
                _ => EXIT_ERROR,
            };
            let _ = e.print();
            Err(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_flag_of_every_command_has_help() {
        let cli = Cli::command();
        let mut missing = Vec::new();
        for command in cli.get_subcommands() {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg
                    .get_help()
                    .is_none_or(|h| h.to_string().trim().is_empty())
                {
                    missing.push(format!("{} --{id}", command.get_name()));
                }
            }
        }
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }

    #[test]
    fn each_command_takes_only_the_flags_it_uses() {
        let cli = Cli::command();
        let flags = |name: &str| -> Vec<String> {
            cli.find_subcommand(name)
                .unwrap()
                .get_arguments()
                .map(|a| a.get_id().to_string())
                .collect()
        };
        assert!(!flags("plan").contains(&"timeout_seconds".to_string()));
        assert!(flags("destroy").contains(&"timeout_seconds".to_string()));
        assert!(flags("apply").contains(&"timeout_seconds".to_string()));
        assert!(flags("destroy").contains(&"auto_approve".to_string()));
        assert!(!flags("plan").contains(&"auto_approve".to_string()));
    }
}
