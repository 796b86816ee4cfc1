//! One writer per stack: two writers at once (the controller and a CLI, through the engine), a crashed
//! holder whose lock expires, `force-unlock` with a wrong and a right id, and what `plan` and the
//! controller's status say while someone else writes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use tap_controller::aws::{Aws, ClientOptions};
use tap_controller::desired::ResourceId;
use tap_controller::engine::{
    DriftMemory, Engine, LockHolder, LockOptions, Mode, Pipeline, Progress, ResourceReport,
};
use tap_tests::faults::CrashAfter;
use tap_tests::inventory::Inventory;
use tap_tests::pipeline::{apply, engine, not_done, spec};
use tap_tests::stack::OWNER;

use super::{moto, quick_retries};

/// Who a writer saw holding the lock while it waited.
#[derive(Default)]
struct Waits(Mutex<Vec<LockHolder>>);

impl Progress for Waits {
    fn started(&self, _: &ResourceId) {}
    fn finished(&self, _: &ResourceReport) {}
    fn waiting_for_lock(&self, holder: &LockHolder) {
        self.0.lock().unwrap().push(holder.clone());
    }
}

fn writer(
    sdk: &aws_config::SdkConfig,
    holder: &str,
    lease: Duration,
    timeout: Duration,
) -> (Engine, Arc<Waits>) {
    let waits = Arc::new(Waits::default());
    let engine = engine(sdk.clone(), ClientOptions::default())
        .with_lock(LockOptions {
            holder: holder.into(),
            lease,
            timeout,
        })
        .with_progress(waits.clone());
    (engine, waits)
}

/// Holder `holder` takes the lock and dies in the middle of its walk (no heartbeat, no release).
async fn crash_holding_the_lock(
    sdk: &aws_config::SdkConfig,
    images: &Aws,
    holder: &str,
    lease: Duration,
) -> anyhow::Result<()> {
    let crash = CrashAfter::new(10);
    let crashing = engine(
        sdk.clone(),
        ClientOptions {
            interceptors: vec![crash.interceptor()],
            ..Default::default()
        },
    )
    .with_lock(LockOptions {
        holder: holder.into(),
        lease,
        timeout: Duration::ZERO,
    });
    let spec = spec("lock2");
    tokio::select! {
        _ = apply(&crashing, images, &spec, 1) => {}
        _ = crash.reached() => {}
    }
    ensure!(crash.crashed(), "the walk ended before its 10th write");
    Ok(())
}

#[tokio::test]
async fn two_writers_at_once_make_one_of_each_and_one_waits_for_the_other() -> anyhow::Result<()> {
    let emu = moto().await?;
    let sdk = quick_retries(emu.sdk_config());
    let images = Aws::connect(&sdk).await?;
    let spec = spec("lock1");
    let minute = Duration::from_secs(60);
    let (controller, controller_waits) =
        writer(&sdk, "controller tap-system/tap-controller", minute, minute);
    let (cli, cli_waits) = writer(&sdk, "cli ops@laptop pid 4242", minute, minute);

    let (a, b) = tokio::join!(
        apply(&controller, &images, &spec, 6),
        apply(&cli, &images, &spec, 6)
    );
    let (a, b) = (a?, b?);
    ensure!(a.converged(), "controller: {:?}", not_done(&a));
    ensure!(b.converged(), "cli: {:?}", not_done(&b));
    let found = Inventory::of(&images, "lock1").await?;
    ensure!(found.duplicates().is_empty(), "{:?}", found.duplicates());
    ensure!(found.total() == 29, "{found:#?}");
    let waited: Vec<LockHolder> = controller_waits
        .0
        .lock()
        .unwrap()
        .iter()
        .chain(cli_waits.0.lock().unwrap().iter())
        .cloned()
        .collect();
    ensure!(!waited.is_empty(), "neither writer waited for the other");
    eprintln!(
        "two writers: one of each; waits: {:?}",
        waited.iter().map(|h| &h.holder).collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test]
async fn a_crashed_holders_lock_expires_and_is_taken_over() -> anyhow::Result<()> {
    let emu = moto().await?;
    let sdk = quick_retries(emu.sdk_config());
    let images = Aws::connect(&sdk).await?;
    let lease = Duration::from_secs(3);
    crash_holding_the_lock(&sdk, &images, "cli ci@runner-1 pid 1", lease).await?;

    let (next, waits) = writer(
        &sdk,
        "cli ci@runner-2 pid 2",
        lease,
        Duration::from_secs(30),
    );
    let started = Instant::now();
    let report = apply(&next, &images, &spec("lock2"), 6).await?;
    ensure!(report.converged(), "{:?}", not_done(&report));
    let waited = waits.0.lock().unwrap().clone();
    ensure!(
        waited.first().map(|h| h.holder.as_str()) == Some("cli ci@runner-1 pid 1"),
        "waited for {waited:?}"
    );
    let found = Inventory::of(&images, "lock2").await?;
    ensure!(
        found.duplicates().is_empty() && found.total() == 29,
        "{found:#?}"
    );
    eprintln!(
        "a crashed holder's lock (lease {lease:?}) taken over; converged {:?} after the start",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn force_unlock_refuses_a_wrong_id_and_plan_and_status_name_the_holder() -> anyhow::Result<()>
{
    let emu = moto().await?;
    let sdk = quick_retries(emu.sdk_config());
    let images = Aws::connect(&sdk).await?;
    let hour = Duration::from_secs(3600);
    crash_holding_the_lock(&sdk, &images, "cli ops@laptop pid 7", hour).await?;
    let spec = spec("lock2");
    let pipeline = Pipeline {
        owner: OWNER,
        spec: &spec,
    };
    let (other, _) = writer(
        &sdk,
        "controller tap-system/tap-controller",
        hour,
        Duration::ZERO,
    );

    // plan: reads only, and says who is writing.
    let before = Inventory::of(&images, "lock2").await?;
    let plan = other
        .reconcile(&pipeline, Mode::DryRun, &mut DriftMemory::default())
        .await?;
    let holder = plan
        .locked_by
        .clone()
        .context("plan does not say the stack is locked")?;
    ensure!(holder.holder == "cli ops@laptop pid 7", "{holder:?}");

    // A writer that does not wait: refused, writes nothing, and its status says Locked.
    let refused = other
        .reconcile(&pipeline, Mode::Apply, &mut DriftMemory::default())
        .await?;
    ensure!(
        refused.locked_by.as_ref() == Some(&holder),
        "{:?}",
        refused.locked_by
    );
    ensure!(
        !refused.resources.iter().any(|r| r.applied),
        "a write under someone else's lock"
    );
    ensure!(
        Inventory::of(&images, "lock2").await? == before,
        "the account changed"
    );
    let status = refused.status(Some(1), None, false);
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .context("no Degraded")?;
    ensure!(
        degraded.reason == "Locked" && degraded.message.contains("cli ops@laptop pid 7"),
        "{degraded:?}"
    );

    // force-unlock: a wrong id is refused and names the holder; the right one frees the stack.
    let wrong = other.force_unlock(&pipeline, "0000").await;
    let message = wrong
        .err()
        .context("a wrong id unlocked the stack")?
        .to_string();
    ensure!(
        message.contains("cli ops@laptop pid 7") && message.contains(&holder.id),
        "{message}"
    );
    ensure!(
        other.lock_holder(&pipeline).await?.is_some(),
        "the lock went with a wrong id"
    );
    let removed = other.force_unlock(&pipeline, &holder.id).await?;
    ensure!(removed.holder == holder.holder);
    ensure!(other.lock_holder(&pipeline).await?.is_none());
    let report = apply(&other, &images, &spec, 6).await?;
    ensure!(report.converged(), "{:?}", not_done(&report));
    Ok(())
}
