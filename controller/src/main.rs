use clap::Parser;
use tap_controller::cli::{self, Cli, Command, LogArgs, LogFormat};

// `--features dhat-heap`: every allocation goes through dhat, which writes `dhat-heap.json` on exit.
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn init_tracing(args: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// `name` parsed from the environment, `default` when unset; a value that does not parse is fatal.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|e| {
            eprintln!("error: {name}={v:?}: {e}");
            std::process::exit(2)
        }),
        _ => default,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    #[cfg(feature = "dhat-heap")]
    let profiler = dhat::Profiler::new_heap();
    // kube and the AWS SDK may both enable a rustls provider; pick one for the whole process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Crd => {
            print!("{}", cli::crd_yaml());
            0
        }
        Command::Run(args) => {
            init_tracing(&args.logging);
            let config = tap_controller::k8s::RunConfig {
                resync: std::time::Duration::from_secs(args.resync_seconds),
                concurrency: args.concurrency,
                metrics_addr: args.metrics_addr,
                namespaces: args
                    .namespaces
                    .into_iter()
                    .filter(|n| !n.is_empty())
                    .collect(),
                leader_election: args.leader_election,
                lease_name: args.lease_name,
                lease_namespace: tap_controller::k8s::leader::lease_namespace(),
                identity: tap_controller::k8s::leader::identity(),
                lease_duration_seconds: args.lease_duration_seconds,
                shutdown_timeout: std::time::Duration::from_secs(args.shutdown_timeout_seconds),
                extra_tags: args.extra_tags,
                // Environment only until `run` has flags for them (cli.rs is being reworked).
                max_concurrent_reconciles: env_or(
                    "TAP_MAX_CONCURRENT_RECONCILES",
                    tap_controller::k8s::DEFAULT_MAX_CONCURRENT_RECONCILES,
                ),
                resync_jitter: env_or(
                    "TAP_RESYNC_JITTER",
                    tap_controller::k8s::DEFAULT_RESYNC_JITTER,
                ),
                aws_rate_limits: env_or("TAP_AWS_RATE_LIMITS", Default::default()),
            };
            // First, so that a signal during start-up is a shutdown too (not the default: death).
            let shutdown =
                match tap_controller::k8s::Shutdown::on_signals(config.shutdown_deadline()) {
                    Ok(shutdown) => shutdown,
                    Err(e) => {
                        tracing::error!(error = format!("{e:#}"), "cannot start");
                        std::process::exit(1);
                    }
                };
            let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .load()
                .await;
            match tap_controller::k8s::run(config, sdk, shutdown).await {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "the controller stopped");
                    1
                }
            }
        }
        Command::Apply(args) => cli::apply(&args).await?,
        Command::Plan(args) => match cli::plan(&args).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                cli::EXIT_ERROR
            }
        },
        Command::Destroy(args) => cli::destroy(&args).await?,
    };
    // `exit` runs no destructors: write the heap profile first.
    #[cfg(feature = "dhat-heap")]
    drop(profiler);
    std::process::exit(code);
}
