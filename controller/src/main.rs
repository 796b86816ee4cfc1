use tap_controller::cli::{self, Command, LogArgs, LogFormat};

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

#[tokio::main]
async fn main() {
    #[cfg(feature = "dhat-heap")]
    let profiler = dhat::Profiler::new_heap();
    // kube and the AWS SDK may both enable a rustls provider; pick one for the whole process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // Usage errors exit 1 (not clap's 2: that is `plan`'s "changes"); --help and --version 0.
    let cli = match cli::parse_args() {
        Ok(cli) => cli,
        Err(code) => std::process::exit(code),
    };
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
                max_concurrent_reconciles: args.max_concurrent_reconciles,
                resync_jitter: args.resync_jitter,
                aws_rate_limits: args.aws_rate_limits,
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
        Command::Apply(args) => cli::exit_code(cli::apply(&args)).await,
        Command::Plan(args) => cli::exit_code(cli::plan(&args)).await,
        Command::Destroy(args) => cli::exit_code(cli::destroy(&args)).await,
        Command::ForceUnlock(args) => cli::exit_code(cli::force_unlock(&args)).await,
    };
    // `exit` runs no destructors: write the heap profile first.
    #[cfg(feature = "dhat-heap")]
    drop(profiler);
    std::process::exit(code);
}
