//! A whole pipeline through the engine, as `tap-controller apply` and `destroy` run it: passes until the
//! stack converges (images pushed as soon as they are waited for), or until a pass budget runs out.

use anyhow::Context;
use tap_controller::api::TransactionPipelineSpec;
use tap_controller::aws::{Aws, ClientOptions, RateLimits};
use tap_controller::engine::{DriftMemory, Engine, Mode, Pipeline, Report};

use crate::stack::{push_images, OWNER};

/// A minimal pipeline with suffix `suffix`.
pub fn spec(suffix: &str) -> TransactionPipelineSpec {
    serde_saphyr::from_str(&format!(
        "environmentSuffix: {suffix}\nfunctions:\n  csvValidator: {{image: {{tag: v1}}}}\n  dataTransformer: {{image: {{tag: v1}}}}\n  notificationSender: {{image: {{tag: v1}}}}\nnotifications: {{emails: [ops@example.com]}}\n"
    ))
    .expect("the spec parses")
}

/// An engine on `sdk` without rate limits (the emulator is not AWS), with `options`' interceptors.
pub fn engine(sdk: aws_config::SdkConfig, options: ClientOptions) -> Engine {
    Engine::new(sdk, 8, Default::default()).with_client_options(ClientOptions {
        rate_limits: RateLimits::none(),
        ..options
    })
}

/// Reconciles until the stack converges, pushing the images (through `images`: someone else's clients)
/// once they are waited for; at most `passes`. The last report (converged or not).
pub async fn apply(
    engine: &Engine,
    images: &Aws,
    spec: &TransactionPipelineSpec,
    passes: usize,
) -> anyhow::Result<Report> {
    Ok(apply_counted(engine, images, spec, passes).await?.0)
}

/// [`apply`], and how many passes it made.
pub async fn apply_counted(
    engine: &Engine,
    images: &Aws,
    spec: &TransactionPipelineSpec,
    passes: usize,
) -> anyhow::Result<(Report, usize)> {
    let mut memory = DriftMemory::default();
    let pipeline = Pipeline { owner: OWNER, spec };
    let mut last = None;
    for pass in 1..=passes {
        let report = engine
            .reconcile(&pipeline, Mode::Apply, &mut memory)
            .await
            .context("reconcile")?;
        if report.converged() {
            return Ok((report, pass));
        }
        if report.waiting_for_images() {
            let _ = push_images(images, &spec.environment_suffix, "v1").await;
        }
        last = Some(report);
    }
    Ok((last.context("no pass ran")?, passes))
}

/// Tears down until nothing of the stack is left; at most `passes`. The last report.
pub async fn destroy(
    engine: &Engine,
    spec: &TransactionPipelineSpec,
    passes: usize,
) -> anyhow::Result<Report> {
    Ok(destroy_counted(engine, spec, passes).await?.0)
}

/// [`destroy`], and how many passes it made.
pub async fn destroy_counted(
    engine: &Engine,
    spec: &TransactionPipelineSpec,
    passes: usize,
) -> anyhow::Result<(Report, usize)> {
    let pipeline = Pipeline { owner: OWNER, spec };
    let mut last = None;
    for pass in 1..=passes {
        let report = engine.teardown(&pipeline, Mode::Apply).await?;
        if report.converged() {
            return Ok((report, pass));
        }
        last = Some(report);
    }
    Ok((last.context("no pass ran")?, passes))
}

/// The clients of an engine's default region.
pub async fn clients(engine: &Engine) -> anyhow::Result<Aws> {
    Ok(engine.aws(None).await?)
}

/// `kind name: message` of every resource not converged.
pub fn not_done(report: &Report) -> Vec<String> {
    report
        .resources
        .iter()
        .filter(|r| !r.is_done())
        .map(|r| format!("{}: {}", r.id, r.message()))
        .collect()
}
