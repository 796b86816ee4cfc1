//! Runs one of the Lambda handlers on an event file, calling the handler function directly (no
//! Lambda runtime). AWS settings come from the usual environment (`AWS_ENDPOINT_URL`,
//! `AWS_REGION`, `AWS_ACCESS_KEY_ID`, ...) and the function's own variables (`BUCKET_NAME`,
//! `STATUS_TABLE`, ...). Example against moto on port 5000:
//!
//! ```sh
//! python3 -m moto.server -p 5000 &
//! export AWS_ENDPOINT_URL=http://127.0.0.1:5000 AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x
//! export BUCKET_NAME=tap-uploads STATUS_TABLE=processing-status TRANSACTIONS_TABLE=transactions \
//!        TOPIC_ARN=arn:aws:sns:us-east-1:123456789012:tap-notifications \
//!        STATE_MACHINE_ARN=arn:aws:states:us-east-1:123456789012:stateMachine:tap
//! cargo run -p local-invoke -- --setup --function csv-validator --event lambdas/events/upload.json
//! ```
//!
//! `--setup` first creates the bucket, tables and topic named by those variables (for an emulator;
//! existing ones are kept). The result is printed as JSON; an error is printed as the Lambda
//! runtime would report it (`errorType`, `errorMessage`) and the exit code is 1.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use serde_json::Value;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Function {
    CsvValidator,
    DataTransformer,
    NotificationSender,
}

#[derive(Debug, Parser)]
#[command(about = "Invoke a tap Lambda handler locally on an event file")]
struct Args {
    /// Which handler to run.
    #[arg(long, value_enum)]
    function: Function,
    /// The event (JSON file); `-` reads standard input.
    #[arg(long)]
    event: PathBuf,
    /// Create the bucket, tables and topic named by the environment first (emulators only).
    #[arg(long)]
    setup: bool,
}

async fn setup(sdk: &aws_config::SdkConfig) {
    let env = |name: &str| std::env::var(name).ok();
    let s3 = tap_lambda_shared::aws::s3_client(sdk);
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    if let Some(bucket) = env("BUCKET_NAME") {
        report(tap_lambda_shared::testing::create_bucket(&s3, &bucket).await);
    }
    if let Some(table) = env("TRANSACTIONS_TABLE") {
        report(tap_lambda_shared::testing::create_table(&dynamodb, &table, "transaction_id").await);
    }
    if let Some(table) = env("STATUS_TABLE") {
        report(tap_lambda_shared::testing::create_table(&dynamodb, &table, "upload_id").await);
    }
    if let Some(name) = env("TOPIC_ARN")
        .as_deref()
        .and_then(|arn| arn.rsplit(':').next().map(str::to_string))
    {
        let out = aws_sdk_sns::Client::new(sdk)
            .create_topic()
            .name(&name)
            .send()
            .await;
        eprintln!(
            "setup: topic {name}: {}",
            if out.is_ok() { "ok" } else { "failed" }
        );
    }
}

fn report(result: tap_lambda_shared::Result<()>) {
    match result {
        Ok(()) => eprintln!("setup: created"),
        Err(e) => eprintln!("setup: {e} (kept as is)"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = if args.event.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the event from stdin")?
    } else {
        std::fs::read_to_string(&args.event)
            .with_context(|| format!("reading {}", args.event.display()))?
    };
    let event: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", args.event.display()))?;
    let sdk = tap_lambda_shared::aws::load_sdk_config().await;
    if args.setup {
        setup(&sdk).await;
    }
    let result = match args.function {
        Function::CsvValidator => {
            let config = tap_lambda_shared::ValidatorConfig::from_env()?;
            csv_validator::handle(event, &csv_validator::Clients::new(&sdk), &config).await
        }
        Function::DataTransformer => {
            let config = tap_lambda_shared::TransformerConfig::from_env()?;
            data_transformer::handle(event, &data_transformer::Clients::new(&sdk), &config).await
        }
        Function::NotificationSender => {
            let config = tap_lambda_shared::NotifierConfig::from_env()?;
            notification_sender::handle(event, &notification_sender::Clients::new(&sdk), &config)
                .await
        }
    };
    match result {
        Ok(value) => {
            println!("{}", serde_json::to_string_pretty(&value)?);
            Ok(())
        }
        Err(error) => {
            let diagnostic: lambda_runtime::Diagnostic = error.into();
            println!("{}", serde_json::to_string_pretty(&diagnostic)?);
            std::process::exit(1)
        }
    }
}
