//! A crash at every call: for every N across a whole provisioning (and a whole teardown), the engine
//! stops at its N-th AWS write (that write reached AWS, its answer was lost, nothing after it was sent;
//! a crash at a read is the crash at the write before it, AWS being the same); a fresh engine, with
//! nothing but AWS to go on, then runs to the end. Afterwards every resource
//! exists exactly once (each service listed by name), and a teardown leaves the account empty.

use anyhow::{ensure, Context};
use tap_controller::aws::{Aws, ClientOptions};
use tap_tests::faults::CrashAfter;
use tap_tests::inventory::Inventory;
use tap_tests::pipeline::{apply, apply_counted, destroy, engine, not_done, spec};

use super::{moto, quick_retries};

const SUFFIX: &str = "crash1";

/// Runs `work` until it ends or the crash point is reached (then drops it, as a dead process would).
async fn until_crash<F: std::future::Future>(crash: &CrashAfter, work: F) {
    tokio::select! {
        _ = work => {}
        _ = crash.reached() => {}
    }
}

#[tokio::test]
async fn a_crash_at_any_call_of_a_provisioning_resumes_exactly_once() -> anyhow::Result<()> {
    let emu = moto().await?;
    let sdk = quick_retries(emu.sdk_config());
    let spec = spec(SUFFIX);
    let images = Aws::connect(&sdk).await?;

    // The calls of an uninterrupted provisioning, and what it leaves.
    let counter = CrashAfter::new(u64::MAX);
    let counted = engine(
        sdk.clone(),
        ClientOptions {
            interceptors: vec![counter.interceptor()],
            ..Default::default()
        },
    );
    let report = apply(&counted, &images, &spec, 6).await?;
    ensure!(report.converged(), "{:?}", not_done(&report));
    let calls = counter.seen();
    let expected = Inventory::of(&images, SUFFIX).await?;
    ensure!(expected.duplicates().is_empty(), "{expected:?}");
    eprintln!(
        "provisioning: {calls} AWS writes, {} resources",
        expected.total()
    );

    let mut resumed_passes = Vec::new();
    for n in 1..=calls {
        emu.reset().await?;
        let crash = CrashAfter::new(n);
        let crashing = engine(
            sdk.clone(),
            ClientOptions {
                interceptors: vec![crash.interceptor()],
                ..Default::default()
            },
        );
        until_crash(&crash, apply(&crashing, &images, &spec, 6)).await;
        drop(crashing);

        let fresh = engine(sdk.clone(), ClientOptions::default());
        let (report, passes) = apply_counted(&fresh, &images, &spec, 8).await?;
        ensure!(
            report.converged(),
            "crash at call {n}: not converged after {passes} passes: {:?}",
            not_done(&report)
        );
        let found = Inventory::of(&images, SUFFIX).await?;
        ensure!(
            found == expected,
            "crash at call {n}: the account holds\n{found:#?}\ninstead of\n{expected:#?}"
        );
        resumed_passes.push(passes);
    }
    eprintln!(
        "provisioning: {calls} crash points, all resumed exactly once in at most {} passes",
        resumed_passes.iter().max().copied().unwrap_or(0)
    );
    Ok(())
}

#[tokio::test]
async fn a_crash_at_any_call_of_a_teardown_resumes_and_leaves_nothing() -> anyhow::Result<()> {
    let emu = moto().await?;
    let sdk = quick_retries(emu.sdk_config());
    let spec = spec(SUFFIX);
    let images = Aws::connect(&sdk).await?;
    let plain = engine(sdk.clone(), ClientOptions::default());

    // The calls of an uninterrupted teardown.
    let report = apply(&plain, &images, &spec, 6).await?;
    ensure!(report.converged(), "{:?}", not_done(&report));
    let counter = CrashAfter::new(u64::MAX);
    let counted = engine(
        sdk.clone(),
        ClientOptions {
            interceptors: vec![counter.interceptor()],
            ..Default::default()
        },
    );
    let report = destroy(&counted, &spec, 3).await?;
    ensure!(report.converged(), "{:?}", not_done(&report));
    let calls = counter.seen();
    ensure!(Inventory::of(&images, SUFFIX).await?.total() == 0);
    eprintln!("teardown: {calls} AWS writes");

    for n in 1..=calls {
        emu.reset().await?;
        let report = apply(&plain, &images, &spec, 6)
            .await
            .with_context(|| format!("provisioning before crash point {n}"))?;
        ensure!(report.converged(), "{:?}", not_done(&report));
        let crash = CrashAfter::new(n);
        let crashing = engine(
            sdk.clone(),
            ClientOptions {
                interceptors: vec![crash.interceptor()],
                ..Default::default()
            },
        );
        until_crash(&crash, destroy(&crashing, &spec, 3)).await;
        drop(crashing);

        let fresh = engine(sdk.clone(), ClientOptions::default());
        let report = destroy(&fresh, &spec, 4).await?;
        ensure!(
            report.converged(),
            "crash at teardown call {n}: {:?}",
            not_done(&report)
        );
        let left = Inventory::of(&images, SUFFIX).await?;
        ensure!(
            left.total() == 0,
            "crash at teardown call {n}: left {left:#?}"
        );
    }
    eprintln!("teardown: {calls} crash points, all resumed to an empty account");
    Ok(())
}
