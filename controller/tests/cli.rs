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

fn run(emu: &Emulator, args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(BIN)
        .args(args)
        .env("AWS_ENDPOINT_URL", &emu.endpoint)
        .env("AWS_REGION", &emu.region)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("tap-controller runs");
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
    assert!(
        out.contains("phase: Ready") && out.contains("transactionsTable: tap-cli1-transactions"),
        "{out}"
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

    // destroy: everything goes; a plan afterwards wants to create it all again.
    let (code, out, err) = run(&emu, &["destroy", "-f", file]);
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
