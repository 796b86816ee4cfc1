//! Lambda entry point: wires [`notification_sender::handle`] to the Lambda runtime.

use std::sync::Arc;

use lambda_runtime::{service_fn, LambdaEvent};
use notification_sender::{handle, Clients};
use serde_json::Value;
use tap_lambda_shared::NotifierConfig;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tap_lambda_shared::aws::init_tracing();
    let config = Arc::new(tap_lambda_shared::aws::config_or_exit(
        "notification-sender",
        NotifierConfig::from_env(),
    ));
    let clients = Arc::new(Clients::new(
        &tap_lambda_shared::aws::load_sdk_config().await,
    ));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let (clients, config) = (clients.clone(), config.clone());
        async move { handle(event.payload, &clients, &config).await }
    }))
    .await
}
