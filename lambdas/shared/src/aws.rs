//! SDK set-up shared by the functions' `main`s and the local invoker.

use aws_types::SdkConfig;

use crate::error::{aws_error, Result};

/// The SDK configuration from the environment (credentials, region, and `AWS_ENDPOINT_URL` for a
/// local emulator).
pub async fn load_sdk_config() -> SdkConfig {
    aws_config::load_from_env().await
}

/// An S3 client; path-style addressing when an explicit endpoint (an emulator) is configured,
/// since `<bucket>.127.0.0.1` does not resolve.
pub fn s3_client(sdk: &SdkConfig) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(sdk.endpoint_url().is_some())
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Opens an S3 object as an async byte stream (nothing is buffered beyond the SDK's chunks).
pub async fn open_object(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<impl tokio::io::AsyncBufRead + Unpin + Send> {
    let out = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(aws_error("GetObject", format!("s3://{bucket}/{key}")))?;
    Ok(out.body.into_async_read())
}

/// Logs to stdout (CloudWatch) through `lambda_runtime`'s subscriber: the level from
/// `AWS_LAMBDA_LOG_LEVEL`, else `RUST_LOG`, else `INFO`; JSON lines when Lambda's logging
/// configuration says `AWS_LAMBDA_LOG_FORMAT=JSON`, text otherwise. Call once, at start-up.
pub fn init_tracing() {
    lambda_runtime::tracing::init_default_subscriber();
}

/// The configuration, or — at start-up, before the runtime loop — a clear message naming the
/// missing or invalid variable on stderr (and in the log) and exit code 1.
pub fn config_or_exit<T>(function: &str, config: Result<T>) -> T {
    match config {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(function, error = %error, "cannot start");
            eprintln!("{function}: cannot start: {error}");
            std::process::exit(1)
        }
    }
}
