//! AWS clients shared by every driver, the call counter, and the error type every driver returns.

mod calls;
mod error;

pub use calls::{is_read, CallCounter, CallKey, Observer};
pub use error::{AwsError, ErrorClass, Optional, ResultExt};

use aws_config::SdkConfig;

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
    pub sts: aws_sdk_sts::Client,
}

macro_rules! client {
    ($krate:ident, $sdk:expr, $calls:expr) => {
        $krate::Client::from_conf(
            $krate::config::Builder::from($sdk)
                .interceptor($calls.clone())
                .build(),
        )
    };
}

impl Aws {
    /// Builds the clients and reads the account id from STS (never hard-coded: emulators differ).
    pub async fn connect(sdk: &SdkConfig) -> Result<Self, AwsError> {
        let calls = CallCounter::default();
        let region = sdk
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "us-east-1".into());
        let sts = client!(aws_sdk_sts, sdk, calls);
        let identity = sts
            .get_caller_identity()
            .send()
            .await
            .context("account", "sts:GetCallerIdentity")?;
        let account_id = identity.account().unwrap_or_default().to_string();
        let partition = identity
            .arn()
            .and_then(|arn| arn.split(':').nth(1))
            .unwrap_or("aws")
            .to_string();
        // Emulators serve S3 on one host: virtual-hosted bucket addressing would not resolve.
        let s3_conf = aws_sdk_s3::config::Builder::from(sdk)
            .interceptor(calls.clone())
            .force_path_style(sdk.endpoint_url().is_some())
            .build();
        Ok(Aws {
            account_id,
            region,
            partition,
            s3: aws_sdk_s3::Client::from_conf(s3_conf),
            dynamodb: client!(aws_sdk_dynamodb, sdk, calls),
            lambda: client!(aws_sdk_lambda, sdk, calls),
            sfn: client!(aws_sdk_sfn, sdk, calls),
            apigateway: client!(aws_sdk_apigateway, sdk, calls),
            iam: client!(aws_sdk_iam, sdk, calls),
            ecr: client!(aws_sdk_ecr, sdk, calls),
            sns: client!(aws_sdk_sns, sdk, calls),
            sqs: client!(aws_sdk_sqs, sdk, calls),
            cloudwatch: client!(aws_sdk_cloudwatch, sdk, calls),
            logs: client!(aws_sdk_cloudwatchlogs, sdk, calls),
            sts,
            calls,
        })
    }
}
