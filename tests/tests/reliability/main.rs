//! Reliability under what real AWS does and the emulators do not: a crash at every call, answers lost
//! after AWS acted, throttling and 5xx in each service's own error shape, eventual consistency, and
//! resources someone else made under our names. Against moto (the fault proxy and the crash interceptor
//! need nothing else); each test starts its own emulator.

mod accounts;
mod adopt;
mod crash;
mod faults;
mod foreign;
mod lock;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use tap_tests::Emulator;

/// The emulator's SDK configuration with short retry backoffs (the retries are what is tested, not
/// their waits).
pub fn quick_retries(sdk: aws_config::SdkConfig) -> aws_config::SdkConfig {
    sdk.to_builder()
        .retry_config(
            RetryConfig::standard()
                .with_initial_backoff(Duration::from_millis(20))
                .with_max_backoff(Duration::from_millis(200)),
        )
        .build()
}

pub async fn moto() -> anyhow::Result<Emulator> {
    Emulator::start_kind(tap_tests::EmulatorKind::Moto).await
}
