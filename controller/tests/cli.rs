//! The CLI as a user runs it: `plan`, `apply`, `destroy` on a manifest against the local AWS emulator.
//! Always moto (with its read-back fixes in tests/moto): exit codes depend on a converged stack reading
//! back exactly, and ministack drops the state machine's tracing setting (the stack tests cover both).

use std::path::PathBuf;
use std::process::{Command, Output};

use tap_tests::{fake_image_manifest, Emulator, EmulatorKind};

const BIN: &str = env!("CARGO_BIN_EXE_tap-controller");

fn manifest(dir: &tempfile::TempDir, suffix: &str, memory: i32) -> PathBuf {
    let path = dir.path().join(format!("{suffix}-{memory}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: tap.dev/v1alpha1\nkind: TransactionPipeline\nmetadata: {{name: cli-{suffix}, namespace: default}}\nspec:\n  environmentSuffix: {suffix}\n  functions:\n    csvValidator: {{image: {{tag: v1}}, memoryMb: {memory}}}\n    dataTransformer: {{image: {{tag: v1}}}}\n    notificationSender: {{image: {{tag: v1}}}}\n"
        ),
    )
    .unwrap();
    path
}

/// The binary with `args`, pointed at the emulator, without a terminal.
fn command(emu: &Emulator, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("AWS_ENDPOINT_URL", &emu.endpoint)
        .env("AWS_REGION", &emu.region)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .stdin(std::process::Stdio::null());
    command
}

fn run(emu: &Emulator, args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command(emu, args).output().expect("tap-controller runs");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into(),
        String::from_utf8_lossy(&stderr).into(),
    )
}

async fn push_images(emu: &Emulator, suffix: &str) {
    let ecr = aws_sdk_ecr::Client::new(&emu.sdk_config());
    for f in ["csv-validator", "data-transformer", "notification-sender"] {
        ecr.put_image()
            .repository_name(format!("tap-{suffix}-{f}"))
            .image_tag("v1")
            .image_manifest(fake_image_manifest("v1"))
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn plan_apply_drift_and_destroy_with_exit_codes() {
    let emu = Emulator::start_kind(EmulatorKind::Moto).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = manifest(&dir, "cli1", 512);
    let file = file.to_str().unwrap();

    // A fresh manifest plans a create for every resource, and exits 2.
    let (code, out, err) = run(&emu, &["plan", "-f", file]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        out.contains("plan: 30 to create, 0 to update, 0 unchanged"),
        "{out}"
    );
    let (code, json, _) = run(&emu, &["plan", "-f", file, "--output", "json"]);
    assert_eq!(code, 2);
    let plan: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(plan["changes"], true);
    assert!(plan["resources"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["action"] == "create"));

    // apply: waits for images (exit 3, saying what to push), then converges once they are pushed.
    let (code, out, err) = run(&emu, &["apply", "-f", file]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("waiting: push image") && out.contains("tap-cli1-csv-validator:v1"),
        "{out}"
    );
    push_images(&emu, "cli1").await;
    let (code, out, err) = run(&emu, &["apply", "-f", file]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("phase: Ready"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("transactionsTable")
                && l.trim_end().ends_with(" tap-cli1-transactions")),
        "an aligned outputs table: {out}"
    );
    // Progress on stderr (not a terminal: plain lines), each resource as it starts and as it ends with
    // its elapsed time.
    assert!(
        err.contains("  Function tap-cli1-csv-validator: applying…"),
        "a line as it starts: {err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("~ Function tap-cli1-csv-validator:")
                || l.starts_with("+ Function tap-cli1-csv-validator:")
                || l.starts_with("= Function tap-cli1-csv-validator:"))
            && err.contains("s]"),
        "a line as it ends, with its elapsed time: {err}"
    );

    // Converged: plan exits 0.
    let (code, out, err) = run(&emu, &["plan", "-f", file]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("0 to create, 0 to update, 30 unchanged"),
        "{out}"
    );

    // An out-of-band change: plan exits 2 and names the field, actual → expected.
    let lambda = aws_sdk_lambda::Client::new(&emu.sdk_config());
    lambda
        .update_function_configuration()
        .function_name("tap-cli1-csv-validator")
        .memory_size(256)
        .send()
        .await
        .unwrap();
    let (code, out, _) = run(&emu, &["plan", "-f", file]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("memoryMb: 256 → 512"), "{out}");

    // A spec change shows the same way; apply --output json prints the status object.
    let bigger = manifest(&dir, "cli1", 1024);
    let (code, out, _) = run(&emu, &["plan", "-f", bigger.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(out.contains("memoryMb: 256 → 1024"), "{out}");
    let (code, json, err) = run(
        &emu,
        &["apply", "-f", bigger.to_str().unwrap(), "--output", "json"],
    );
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["phase"], "Ready");
    assert_eq!(status["resources"].as_array().unwrap().len(), 30);

    // destroy without a terminal and without --auto-approve: lists what would go, deletes nothing.
    let (code, out, err) = run(&emu, &["destroy", "-f", file]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("destroy will delete:"), "{out}");
    assert!(
        out.contains("object versions"),
        "the bucket's object count: {out}"
    );
    assert!(
        err.contains("stdin is not a terminal") && err.contains("--auto-approve"),
        "{err}"
    );
    let (code, out, _) = run(&emu, &["plan", "-f", bigger.to_str().unwrap()]);
    assert_eq!(code, 0, "nothing deleted: {out}");

    // destroy: everything goes; a plan afterwards wants to create it all again.
    let (code, out, err) = run(&emu, &["destroy", "-f", file, "--auto-approve"]);
    assert_eq!(code, 0, "{out}{err}");
    // The 30 resources and the stack's control table (it held the bucket's create intent).
    assert!(out.contains("destroy: 31 of 31 resources gone"), "{out}");
    let (code, out, _) = run(&emu, &["plan", "-f", file]);
    assert_eq!(code, 2);
    assert!(out.contains("30 to create"), "{out}");
}

#[tokio::test]
async fn bad_input_is_a_clear_error_and_touches_nothing() {
    let emu = Emulator::start_kind(EmulatorKind::Moto).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = manifest(&dir, "cli2", 64);
    for command in ["plan", "apply"] {
        let (code, out, err) = run(&emu, &[command, "-f", file.to_str().unwrap()]);
        assert_eq!(code, 1, "{command}: {out}{err}");
        assert!(
            err.contains(
                "spec.functions.csvValidator.memoryMb: must be between 128 and 10240 (got 64)"
            ),
            "{command}: {err}"
        );
    }
    let ddb = aws_sdk_dynamodb::Client::new(&emu.sdk_config());
    assert!(
        ddb.list_tables()
            .send()
            .await
            .unwrap()
            .table_names()
            .is_empty(),
        "nothing created"
    );
    let missing = dir.path().join("missing.yaml");
    let (code, _, err) = run(&emu, &["plan", "-f", missing.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("missing.yaml"), "{err}");
}

/// The binary with an AWS endpoint nothing listens on: whatever it refuses, it refused without AWS.
fn run_offline(args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(BIN)
        .args(args)
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env_remove("AWS_PROFILE")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("tap-controller runs");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into(),
        String::from_utf8_lossy(&stderr).into(),
    )
}

#[test]
fn unknown_fields_other_kinds_and_yaml_1_1_booleans_are_refused_before_aws() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(manifest(&dir, "cli3", 512)).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let typo = write("typo.yaml", base.replace("memoryMb: 512", "memoryMB: 2048"));
    let deployment = write(
        "deploy.yaml",
        base.replace("tap.dev/v1alpha1", "apps/v1")
            .replace("TransactionPipeline", "Deployment"),
    );
    let off = write(
        "off.yaml",
        format!("{base}  stateMachine: {{logLevel: OFF}}\n"),
    );
    for command in ["plan", "apply", "destroy"] {
        let (code, out, err) = run_offline(&[command, "-f", &typo]);
        assert_eq!(code, 1, "{command}: {out}{err}");
        assert!(
            err.contains("unknown field spec.functions.csvValidator.memoryMB"),
            "{command}: {err}"
        );
        let (code, _, err) = run_offline(&[command, "-f", &deployment]);
        assert_eq!(code, 1, "{command}: {err}");
        assert!(err.contains("apps/v1 Deployment"), "{command}: {err}");
        let (code, _, err) = run_offline(&[command, "-f", &off]);
        assert_eq!(code, 1, "{command}: {err}");
        assert!(
            err.contains("spec.stateMachine.logLevel") && err.contains("quote it"),
            "{command}: {err}"
        );
    }
}

#[test]
fn usage_errors_exit_1_and_help_documents_the_exit_codes() {
    // clap's default for a usage error is 2, which `plan` means as "changes".
    let (code, _, err) = run_offline(&["plan", "--no-such-flag"]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = run_offline(&["plan"]);
    assert_eq!(code, 1, "a missing -f: {err}");
    let (code, _, err) = run_offline(&["frobnicate"]);
    assert_eq!(code, 1, "{err}");
    let (code, out, _) = run_offline(&["plan", "--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("2  changes to make") && out.contains("1  an error"),
        "{out}"
    );
    let (code, out, _) = run_offline(&["destroy", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--auto-approve"), "{out}");
}

/// The stack's lock as the user meets it: two `apply`s at once make one stack and one of them waits;
/// a killed `apply` leaves its lock, which `plan` names, a waiting `apply` gives up on naming it, and
/// `force-unlock` removes only with its id.
#[tokio::test]
async fn two_applies_at_once_wait_for_each_other_and_a_killed_ones_lock_is_force_unlocked() {
    let emu = Emulator::start_kind(EmulatorKind::Moto).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = manifest(&dir, "cli3", 512);
    let file = file.to_str().unwrap();
    let both = || {
        let a = std::thread::scope(|s| {
            let one = s.spawn(|| run(&emu, &["apply", "-f", file]));
            let two = s.spawn(|| run(&emu, &["apply", "-f", file]));
            (one.join().unwrap(), two.join().unwrap())
        });
        a
    };
    let (one, two) = both();
    assert_eq!((one.0, two.0), (3, 3), "{one:?}\n{two:?}");
    push_images(&emu, "cli3").await;
    let (three, four) = both();
    assert_eq!((three.0, four.0), (0, 0), "{three:?}\n{four:?}");
    let waited = [&one, &two, &three, &four]
        .iter()
        .filter(|(_, _, err)| err.contains("waiting…"))
        .count();
    assert!(
        waited >= 1,
        "no apply waited for the other:\n{one:?}\n{two:?}"
    );
    let aws = tap_controller::aws::Aws::connect(&emu.sdk_config())
        .await
        .unwrap();
    let found = tap_tests::inventory::Inventory::of(&aws, "cli3")
        .await
        .unwrap();
    assert!(found.duplicates().is_empty(), "{:?}", found.duplicates());
    // The stack without e-mail subscriptions: 28 resources of its own (names listed once each).
    assert_eq!(found.total(), 28, "{found:#?}");

    // A drifted stack, an apply killed while it holds the lock.
    aws.lambda
        .update_function_configuration()
        .function_name("tap-cli3-csv-validator")
        .memory_size(256)
        .send()
        .await
        .unwrap();
    let holder_id = loop {
        let mut child = command(&emu, &["apply", "-f", file])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut id = None;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while id.is_none() && std::time::Instant::now() < deadline {
            let item = aws
                .dynamodb
                .get_item()
                .table_name("tap-cli3-control")
                .key(
                    "pk",
                    aws_sdk_dynamodb::types::AttributeValue::S("lock".into()),
                )
                .consistent_read(true)
                .send()
                .await
                .unwrap();
            id = item
                .item()
                .filter(|i| {
                    i.get("holder")
                        .and_then(|h| h.as_s().ok())
                        .is_some_and(|h| h.ends_with(&format!("pid {pid}")))
                })
                .and_then(|i| i.get("lock_id"))
                .and_then(|v| v.as_s().ok())
                .cloned();
        }
        child.kill().unwrap();
        let _ = child.wait();
        let (_, _, err) = run(&emu, &["plan", "-f", file]);
        match id {
            Some(id) if err.contains(&id) => break (id, pid),
            _ => continue, // it released the lock before it was killed: again
        }
    };
    let (id, pid) = holder_id;
    let (code, _, err) = run(&emu, &["plan", "-f", file]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("a write is in progress") && err.contains(&format!("pid {pid}")),
        "{err}"
    );
    let (code, _, err) = run(&emu, &["apply", "-f", file, "--lock-timeout", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("pid {pid}")) && err.contains("force-unlock"),
        "{err}"
    );
    let (code, _, err) = run(&emu, &["force-unlock", "-f", file, "0123456789abcdef"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&id) && err.contains("refusing"), "{err}");
    let (code, out, err) = run(&emu, &["force-unlock", "-f", file, &id]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&emu, &["apply", "-f", file, "--lock-timeout", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&emu, &["destroy", "-f", file, "--auto-approve"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// A stack deployed by other tooling (tests/scripts/legacy_stack.py: our names, none of our tags):
/// `plan` names every resource it would adopt, `apply` adopts and converges them, and says so.
#[tokio::test]
async fn plan_and_apply_show_the_adoption_of_a_stack_other_tooling_deployed() {
    let emu = Emulator::start_kind(EmulatorKind::Moto).await.unwrap();
    let python = std::env::var("TAP_MOTO_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/scripts/legacy_stack.py"
    );
    let legacy = Command::new(python)
        .args([script, "--endpoint", &emu.endpoint, "--suffix", "cli4"])
        .output()
        .expect("legacy_stack.py runs");
    assert!(legacy.status.success(), "{legacy:?}");
    let made = String::from_utf8_lossy(&legacy.stdout).lines().count();
    let dir = tempfile::tempdir().unwrap();
    let never = manifest(&dir, "cli4", 512);
    let adopt = dir.path().join("adopt.yaml");
    std::fs::write(
        &adopt,
        std::fs::read_to_string(&never)
            .unwrap()
            .replace("spec:\n", "spec:\n  adoptionPolicy: Adopt\n"),
    )
    .unwrap();

    let (code, out, err) = run(&emu, &["plan", "-f", never.to_str().unwrap()]);
    assert_eq!(code, 1, "conflicts are an error: {out}{err}");
    assert!(
        out.contains("adoptionPolicy: Adopt would adopt it"),
        "{out}"
    );

    let (code, out, err) = run(&emu, &["plan", "-f", adopt.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains(&format!("{made} to adopt")), "{out}");
    assert!(
        out.contains("adopt (no tap.dev/pipeline tag; adoptionPolicy Adopt)")
            && out.contains("memoryMb: 256 → 512"),
        "{out}"
    );

    let (code, out, err) = run(&emu, &["apply", "-f", adopt.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("adopted: it had no tap.dev/pipeline tag") && out.contains("phase: Ready"),
        "{out}"
    );
    let (code, out, _) = run(&emu, &["plan", "-f", adopt.to_str().unwrap()]);
    assert_eq!(code, 0, "adopted and converged: {out}");
}

/// `destroy` repeats passes while the only failures are transient: here Lambda throttles DeleteFunction
/// (microburst in front of moto) more often than one pass's tries absorb, and the command goes on until
/// the stack is gone, saying so, and exits 0.
#[tokio::test]
async fn destroy_retries_the_rest_after_a_pass_that_was_throttled() {
    let emu = Emulator::start_kind(EmulatorKind::Moto).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = manifest(&dir, "cli5", 512);
    let file = file.to_str().unwrap();
    let (code, _, _) = run(&emu, &["apply", "-f", file]);
    assert_eq!(code, 3, "waits for images");
    push_images(&emu, "cli5").await;
    let (code, out, err) = run(&emu, &["apply", "-f", file]);
    assert_eq!(code, 0, "{out}{err}");

    let proxy = tap_tests::faults::Microburst::start(&emu).await.unwrap();
    // One attempt per call (AWS_MAX_ATTEMPTS=1): a pass tries each resource 3 times, so 9 throttles of
    // DeleteFunction fail all three functions' tries in the first pass; the second pass deletes them.
    proxy
        .set_rules(serde_json::json!([{
            "service": "lambda",
            "operation": "DeleteFunction",
            "times": 9,
            "error": {"code": "TooManyRequestsException", "status": 429, "message": "Rate exceeded"},
        }]))
        .await
        .unwrap();
    let out = command(&emu, &["destroy", "-f", file, "--auto-approve"])
        .env("AWS_ENDPOINT_URL", &proxy.endpoint)
        .env("AWS_MAX_ATTEMPTS", "1")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("pass 1:")
            && format!("{stdout}{stderr}").contains("retrying the rest"),
        "no retried pass: {stdout}{stderr}"
    );
    let throttled: u64 = proxy.fired().await.unwrap().iter().map(|(_, n)| n).sum();
    assert_eq!(throttled, 9, "the throttles fired");
    assert!(
        stdout.contains("destroy: 31 of 31 resources gone"),
        "{stdout}"
    );
    let (code, out, _) = run(&emu, &["plan", "-f", file]);
    assert!(
        code == 2 && out.contains("plan: 30 to create"),
        "nothing is left: {out}"
    );
}
