//! AWS clients shared by every driver, the call counter, and the error type every driver returns.

mod calls;
mod error;
mod throttle;

pub use calls::{is_read, scope, CallCounter, CallKey, ErrorObserver, Observer};
pub use error::{AwsError, ErrorClass, Optional, ResultExt};
pub use throttle::{Rate, RateLimitedClient, RateLimits};

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::SdkConfig;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::client::interceptors::SharedInterceptor;

/// How the clients are built beyond the SDK configuration.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// Outbound requests per second, per service.
    pub rate_limits: RateLimits,
    /// More interceptors on every client (fault injection in tests, tracing).
    pub interceptors: Vec<SharedInterceptor>,
}

/// Attempts per call (the SDK's standard retry mode, with backoff): throttling and 5xx on reads are
/// absorbed here rather than failing a walk. A configuration that turned retries off keeps them off.
pub const MAX_ATTEMPTS: u32 = 5;

/// Idle connections kept per host: enough for a walk's next burst; the SDK's default keeps every one.
pub const POOL_MAX_IDLE_PER_HOST: usize = 32;
/// How long an idle connection is kept (the SDK's default: 90 s, longer than most resync gaps).
pub const POOL_IDLE: Duration = Duration::from_secs(20);

/// One HTTP client, hence one connection pool, set explicitly for all the service clients of a region:
/// its idle connections bounded in number and in time in one place.
fn shared_http_client() -> SharedHttpClient {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .pool_idle_timeout(POOL_IDLE)
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .build_https()
}

/// The SDK configuration the clients are built from: one bounded connection pool, rate-limited HTTP,
/// more attempts.
fn client_config(sdk: &SdkConfig, options: &ClientOptions) -> SdkConfig {
    let mut builder = sdk.to_builder();
    let retries = sdk
        .retry_config()
        .cloned()
        .unwrap_or_else(RetryConfig::standard);
    let attempts = retries.max_attempts();
    if attempts > 1 {
        builder.set_retry_config(Some(
            retries
                .with_max_attempts(attempts.max(MAX_ATTEMPTS))
                .with_max_backoff(Duration::from_secs(20)),
        ));
    }
    let http = sdk.http_client().unwrap_or_else(shared_http_client);
    builder.set_http_client(Some(if options.rate_limits.0.is_empty() {
        http
    } else {
        SharedHttpClient::new(RateLimitedClient::new(http, &options.rate_limits))
    }));
    builder.build()
}

/// The SDK clients of every service the stack uses, plus the account and region they act in.
#[derive(Clone)]
pub struct Aws {
    pub account_id: String,
    pub region: String,
    pub partition: String,
    pub calls: CallCounter,
    pub s3: aws_sdk_s3::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub lambda: aws_sdk_lambda::Client,
    pub sfn: aws_sdk_sfn::Client,
    pub apigateway: aws_sdk_apigateway::Client,
    pub iam: aws_sdk_iam::Client,
    pub ecr: aws_sdk_ecr::Client,
    pub sns: aws_sdk_sns::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub logs: aws_sdk_cloudwatchlogs::Client,
    /// The Resource Groups Tagging API: a stack's tags in one read (see `drivers::batch`).
    pub tagging: aws_sdk_resourcegroupstagging::Client,
    pub sts: aws_sdk_sts::Client,
}

macro_rules! client {
    ($krate:ident, $sdk:expr, $calls:expr, $options:expr) => {{
        let mut builder = $krate::config::Builder::from($sdk).interceptor($calls.clone());
        for interceptor in &$options.interceptors {
            builder.push_interceptor(interceptor.clone());
        }
        $krate::Client::from_conf(builder.build())
    }};
}

impl Aws {
    /// Builds the clients and reads the account id from STS (never hard-coded: emulators differ).
    pub async fn connect(sdk: &SdkConfig) -> Result<Self, AwsError> {
        Self::connect_with(sdk, &ClientOptions::default()).await
    }

    /// [`Aws::connect`], with rate limits and extra interceptors.
    pub async fn connect_with(sdk: &SdkConfig, options: &ClientOptions) -> Result<Self, AwsError> {
        let sdk = &client_config(sdk, options);
        let calls = CallCounter::default();
        let region = sdk
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "us-east-1".into());
        let sts = client!(aws_sdk_sts, sdk, calls, options);
        // STS throttles too ("Rate exceeded"): retried here, since nothing can go on without it.
        let identity = backon::Retryable::retry(
            || async {
                sts.get_caller_identity()
                    .send()
                    .await
                    .context("account", "sts:GetCallerIdentity")
            },
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_times(4)
                .with_jitter(),
        )
        .when(AwsError::is_transient)
        .await?;
        let account_id = identity.account().unwrap_or_default().to_string();
        let partition = identity
            .arn()
            .and_then(|arn| arn.split(':').nth(1))
            .unwrap_or("aws")
            .to_string();
        // Emulators serve S3 on one host: virtual-hosted bucket addressing would not resolve.
        let mut s3_conf = aws_sdk_s3::config::Builder::from(sdk)
            .interceptor(calls.clone())
            .force_path_style(sdk.endpoint_url().is_some());
        for interceptor in &options.interceptors {
            s3_conf.push_interceptor(interceptor.clone());
        }
        let s3_conf = s3_conf.build();
        Ok(Aws {
            account_id,
            region,
            partition,
            s3: aws_sdk_s3::Client::from_conf(s3_conf),
            dynamodb: client!(aws_sdk_dynamodb, sdk, calls, options),
            lambda: client!(aws_sdk_lambda, sdk, calls, options),
            sfn: client!(aws_sdk_sfn, sdk, calls, options),
            apigateway: client!(aws_sdk_apigateway, sdk, calls, options),
            iam: client!(aws_sdk_iam, sdk, calls, options),
            ecr: client!(aws_sdk_ecr, sdk, calls, options),
            sns: client!(aws_sdk_sns, sdk, calls, options),
            sqs: client!(aws_sdk_sqs, sdk, calls, options),
            cloudwatch: client!(aws_sdk_cloudwatch, sdk, calls, options),
            logs: client!(aws_sdk_cloudwatchlogs, sdk, calls, options),
            tagging: client!(aws_sdk_resourcegroupstagging, sdk, calls, options),
            sts,
            calls,
        })
    }
}
