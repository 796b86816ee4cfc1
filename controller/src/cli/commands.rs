//! `plan`, `apply` and `destroy`. Each reads and checks the manifest (no AWS call), reads the account
//! from STS (the one call before the stack checks that need it), checks the desired stack, and only
//! then walks it.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::api::{validate_stack, DeletionPolicy, Phase, TransactionPipeline};
use crate::aws::{Aws, ResultExt};
use crate::desired::{self, names, Kind, StackEnv};
use crate::engine::{cli_holder, Action, DriftMemory, Engine, LockOptions, Mode, Pipeline};

use super::manifest::{load_manifest, ManifestError};
use super::output::{self, outputs_table, planned, report_error, resources_table, write_table};
use super::progress::LiveProgress;
use super::{
    ApplyArgs, DestroyArgs, ForceUnlockArgs, ManifestArgs, Output, PlanArgs, EXIT_CHANGES,
    EXIT_ERROR, EXIT_NO_CHANGES, EXIT_OK, EXIT_WAITING_FOR_IMAGES,
};

/// A checked manifest and an engine connected to its account.
struct Prepared {
    pipeline: TransactionPipeline,
    owner: String,
    engine: Engine,
    aws: Aws,
    progress: Arc<LiveProgress>,
}

impl Prepared {
    fn target(&self) -> Pipeline<'_> {
        Pipeline {
            owner: &self.owner,
            spec: &self.pipeline.spec,
        }
    }
}

/// Reads and checks the manifest, connects (STS, the first AWS call) and checks the desired stack
/// against the account and region (before any other AWS call).
async fn prepare(args: &ManifestArgs, verb: &'static str) -> anyhow::Result<Prepared> {
    let pipeline = load_manifest(&args.file)?;
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let progress = LiveProgress::new(verb);
    let engine = Engine::new(sdk, args.concurrency, args.extra_tags.clone())
        .with_progress(progress.clone())
        .with_lock(LockOptions {
            holder: cli_holder(),
            timeout: Duration::from_secs(args.lock_timeout),
            ..LockOptions::default()
        });
    let aws = engine.aws_for(&pipeline.spec).await?;
    let owner = pipeline.owner_key();
    let env = StackEnv {
        account_id: aws.account_id.clone(),
        region: aws.region.clone(),
        partition: aws.partition.clone(),
        owner: owner.clone(),
        extra_tags: engine.extra_tags.clone(),
    };
    let stack = desired::build_stack(&pipeline.spec, &env);
    validate_stack(&pipeline.spec, &stack).map_err(|errors| ManifestError::Invalid {
        path: args.file.display().to_string(),
        errors,
    })?;
    Ok(Prepared {
        pipeline,
        owner,
        engine,
        aws,
        progress,
    })
}

/// `apply`: reconcile until converged, waiting on images, a terminal failure, or the timeout.
pub async fn apply(args: &ApplyArgs) -> anyhow::Result<i32> {
    let p = prepare(&args.manifest, "applying").await?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_seconds);
    let mut memory = DriftMemory::default();
    let mut pass = 0;
    let mut changed: Vec<crate::engine::ResourceReport> = Vec::new();
    loop {
        pass += 1;
        let report = {
            let _ticker = p.progress.ticker();
            p.engine
                .reconcile(&p.target(), Mode::Apply, &mut memory)
                .await?
        };
        let phase = report.phase(false);
        p.progress.note(&format!(
            "pass {pass}: {} in {:.1}s, {} AWS calls",
            phase.as_str(),
            report.elapsed.as_secs_f64(),
            report.calls.values().sum::<u64>()
        ));
        for r in &report.resources {
            let interesting = r.applied || !matches!(r.action, Action::NoChange);
            changed.retain(|c| c.id != r.id || !interesting);
            if interesting {
                changed.push(r.clone());
            }
        }
        // Someone else's lock: already waited for it up to --lock-timeout.
        let retry = report.locked_by.is_none()
            && match phase {
                Phase::Ready | Phase::Drifted => false,
                Phase::Provisioning => true,
                Phase::Failed => report.conflicts().is_empty() && report.only_transient_failures(),
                Phase::WaitingForImages | Phase::Deleting | Phase::Paused => false,
            };
        if retry && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        let mut stdout = std::io::stdout().lock();
        if args.manifest.output == Output::Json {
            let status = report.status(p.pipeline.metadata.generation, None, false);
            writeln!(stdout, "{}", serde_json::to_string_pretty(&status)?)?;
        } else {
            if !changed.is_empty() {
                writeln!(stdout, "changes:")?;
                write_table(&mut stdout, resources_table(&changed, output::done))?;
            }
            writeln!(stdout, "outputs:")?;
            write_table(&mut stdout, outputs_table(&report.outputs))?;
            writeln!(stdout, "phase: {}", phase.as_str())?;
            for image in report.images_to_push() {
                writeln!(stdout, "waiting: {image}")?;
            }
        }
        return Ok(match phase {
            Phase::Ready | Phase::Drifted => EXIT_OK,
            Phase::WaitingForImages => EXIT_WAITING_FOR_IMAGES,
            _ => {
                drop(stdout);
                let err = report_error(&report).unwrap_or_else(|| {
                    anyhow::anyhow!(
                        "not converged after {} s (phase {})",
                        args.timeout_seconds,
                        phase.as_str()
                    )
                });
                output::print_error(&err);
                EXIT_ERROR
            }
        });
    }
}

/// `plan`: what `apply` would do; read calls only.
pub async fn plan(args: &PlanArgs) -> anyhow::Result<i32> {
    let p = prepare(&args.manifest, "reading").await?;
    // A dry run: spinners on a terminal, no line per resource (the plan lists them).
    p.progress.set("reading", false);
    let report = p
        .engine
        .reconcile(&p.target(), Mode::DryRun, &mut DriftMemory::default())
        .await?;
    if let Some(holder) = &report.locked_by {
        p.progress.note(&format!(
            "a write is in progress: {holder}; this plan may be out of date soon"
        ));
    }
    let policy = p.pipeline.spec.drift_policy;
    let mut stdout = std::io::stdout().lock();
    if args.manifest.output == Output::Json {
        let resources: Vec<serde_json::Value> = report
            .resources
            .iter()
            .map(|r| {
                let (action, diffs) = match &r.action {
                    Action::NoChange => ("none", vec![]),
                    Action::Create => ("create", vec![]),
                    Action::Update(d) | Action::Hold(d) => ("update", d.clone()),
                    Action::Delete => ("delete", vec![]),
                    Action::Conflict(_) => ("conflict", vec![]),
                    Action::Adopt(d) => ("adopt", d.clone()),
                    Action::Fail(_) => ("error", vec![]),
                    Action::Wait(_) => ("wait", vec![]),
                    Action::AlreadyGone | Action::Retain => ("none", vec![]),
                };
                serde_json::json!({
                    "kind": r.id.kind.as_str(),
                    "name": r.id.name,
                    "action": action,
                    "message": planned(r, policy),
                    "diffs": diffs.iter().map(|d| serde_json::json!({"field": d.field, "expected": d.expected, "actual": d.actual})).collect::<Vec<_>>(),
                })
            })
            .collect();
        writeln!(
            stdout,
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"changes": report.has_changes(), "resources": resources})
            )?
        )?;
    } else {
        let changes = report
            .resources
            .iter()
            .filter(|r| !matches!(r.action, Action::NoChange));
        write_table(
            &mut stdout,
            resources_table(changes, |r| planned(r, policy)),
        )?;
        let count =
            |f: fn(&Action) -> bool| report.resources.iter().filter(|r| f(&r.action)).count();
        // Like terraform's "to import", adoptions are counted only when there are some.
        let adopt = match count(|a| matches!(a, Action::Adopt(_))) {
            0 => String::new(),
            n => format!("{n} to adopt, "),
        };
        writeln!(
            stdout,
            "plan: {} to create, {adopt}{} to update, {} unchanged",
            count(|a| matches!(a, Action::Create)),
            count(|a| matches!(a, Action::Update(_) | Action::Hold(_))),
            count(|a| matches!(a, Action::NoChange)),
        )?;
    }
    if let Some(err) = report_error(&report) {
        drop(stdout);
        output::print_error(&err);
        return Ok(EXIT_ERROR);
    }
    Ok(if report.has_changes() {
        EXIT_CHANGES
    } else {
        EXIT_NO_CHANGES
    })
}

/// Object versions and delete markers in a bucket: what emptying it deletes.
async fn object_versions(aws: &Aws, bucket: &str) -> anyhow::Result<usize> {
    let mut count = 0;
    let (mut key_marker, mut version_marker) = (None, None);
    loop {
        let page = ResultExt::context(
            aws.s3
                .list_object_versions()
                .bucket(bucket)
                .set_key_marker(key_marker)
                .set_version_id_marker(version_marker)
                .send()
                .await,
            format!("Bucket {bucket}"),
            "s3:ListObjectVersions",
        )?;
        count += page.versions().len() + page.delete_markers().len();
        if page.is_truncated() != Some(true) {
            break;
        }
        key_marker = page.next_key_marker().map(str::to_string);
        version_marker = page.next_version_id_marker().map(str::to_string);
    }
    Ok(count)
}

/// Asks on the terminal; `Ok(false)` unless the answer is `yes`. Without a terminal: an error.
fn confirm(what: &str) -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    anyhow::ensure!(
        stdin.is_terminal(),
        "destroy deletes {what} and needs confirmation, but stdin is not a terminal: nothing deleted. Run it on a terminal to be asked, or pass --auto-approve"
    );
    let mut stderr = std::io::stderr().lock();
    write!(
        stderr,
        "\nDelete {what}? This cannot be undone. Only 'yes' is accepted: "
    )?;
    stderr.flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}

/// `destroy`: show what goes, ask, tear the stack down per `deletionPolicy`.
pub async fn destroy(args: &DestroyArgs) -> anyhow::Result<i32> {
    let json = args.manifest.output == Output::Json;
    let pipeline = load_manifest(&args.manifest.file)?;
    if pipeline.spec.deletion_policy == DeletionPolicy::Retain {
        writeln!(
            std::io::stdout().lock(),
            "deletionPolicy is Retain: nothing deleted"
        )?;
        return Ok(EXIT_OK);
    }
    let p = prepare(&args.manifest, "deleting").await?;

    // What would go: the teardown as a dry run, and the bucket's contents.
    p.progress.set("reading", false);
    let dry = p.engine.teardown(&p.target(), Mode::DryRun).await?;
    let bucket = names::bucket(&p.pipeline.spec.environment_suffix, &p.aws.account_id);
    let doomed: Vec<_> = dry
        .resources
        .iter()
        .filter(|r| {
            matches!(
                r.action,
                Action::Delete | Action::Conflict(_) | Action::Fail(_)
            )
        })
        .collect();
    let deletes = doomed
        .iter()
        .filter(|r| matches!(r.action, Action::Delete))
        .count();
    let objects = if doomed
        .iter()
        .any(|r| r.id.kind == Kind::Bucket && r.id.name == bucket && r.action == Action::Delete)
    {
        Some(object_versions(&p.aws, &bucket).await?)
    } else {
        None
    };
    {
        // The listing is the result in text mode; with --output json, stdout is for the JSON only.
        let mut listing: Box<dyn Write> = if json {
            Box::new(std::io::stderr().lock())
        } else {
            Box::new(std::io::stdout().lock())
        };
        if deletes == 0 {
            writeln!(listing, "destroy: nothing of {} in AWS to delete", p.owner)?;
        } else {
            writeln!(listing, "destroy will delete:")?;
        }
        let describe = |r: &crate::engine::ResourceReport| match &r.action {
            Action::Delete if r.id.kind == Kind::Bucket => match objects {
                Some(n) => format!("delete, with its {n} object versions"),
                None => "delete".into(),
            },
            _ => planned(r, p.pipeline.spec.drift_policy),
        };
        write_table(
            &mut listing,
            resources_table(doomed.iter().copied(), describe),
        )?;
    }
    if let Some(err) = report_error(&dry) {
        return Err(err.context("destroy cannot see everything it would delete: nothing deleted"));
    }
    if deletes == 0 {
        if json {
            let status = dry.status(p.pipeline.metadata.generation, None, true);
            writeln!(
                std::io::stdout().lock(),
                "{}",
                serde_json::to_string_pretty(&status)?
            )?;
        }
        return Ok(EXIT_OK);
    }
    let what = match objects {
        Some(n) => format!("these {deletes} resources and the bucket's {n} object versions"),
        None => format!("these {deletes} resources"),
    };
    if !args.auto_approve && !confirm(&what)? {
        anyhow::bail!("destroy cancelled (the answer was not 'yes'): nothing deleted");
    }

    // Like `apply`: repeat passes while the only failures are transient, until done or the timeout.
    p.progress.set("deleting", true);
    let deadline = Instant::now() + Duration::from_secs(args.timeout_seconds);
    let mut pass = 0;
    let report = loop {
        pass += 1;
        let report = {
            let _ticker = p.progress.ticker();
            p.engine
                .teardown(&p.target(), Mode::Apply)
                .await
                .context("destroy")?
        };
        let retry = !report.converged()
            && report.conflicts().is_empty()
            && report.only_transient_failures()
            && report.locked_by.is_none();
        if retry && Instant::now() < deadline {
            p.progress.note(&format!(
                "pass {pass}: {} of {} resources gone, retrying the rest",
                report.resources.iter().filter(|r| r.is_done()).count(),
                report.resources.len()
            ));
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        break report;
    };
    let mut stdout = std::io::stdout().lock();
    if json {
        let status = report.status(p.pipeline.metadata.generation, None, true);
        writeln!(stdout, "{}", serde_json::to_string_pretty(&status)?)?;
    } else {
        writeln!(
            stdout,
            "destroy: {} of {} resources gone in {} ms",
            report.resources.iter().filter(|r| r.is_done()).count(),
            report.resources.len(),
            report.elapsed.as_millis()
        )?;
    }
    if report.converged() {
        return Ok(EXIT_OK);
    }
    drop(stdout);
    let err = report_error(&report)
        .unwrap_or_else(|| anyhow::anyhow!("some resources are not deleted yet"));
    output::print_error(&err);
    Ok(EXIT_ERROR)
}

/// Runs a command, printing its error in the one format; returns the exit code.
pub async fn exit_code<F>(run: F) -> i32
where
    F: std::future::Future<Output = anyhow::Result<i32>>,
{
    match run.await {
        Ok(code) => code,
        Err(e) => {
            output::print_error(&e);
            EXIT_ERROR
        }
    }
}

/// `force-unlock`: removes the stack's lock, only when its id is the one given.
pub async fn force_unlock(args: &ForceUnlockArgs) -> anyhow::Result<i32> {
    let p = prepare(&args.manifest, "unlocking").await?;
    let removed = p
        .engine
        .force_unlock(&p.target(), &args.lock_id)
        .await
        .context("force-unlock")?;
    writeln!(
        std::io::stdout().lock(),
        "removed the lock of {} (since {}, lock id {})",
        removed.holder,
        removed.since,
        removed.id
    )?;
    Ok(EXIT_OK)
}
