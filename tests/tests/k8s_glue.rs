//! The Kubernetes front end with the real engine against the local AWS emulator, and a mocked API
//! server (`tap_controller::k8s::fixtures`).

use std::sync::Arc;

use serde_json::json;
use tap_controller::api::FINALIZER;
use tap_controller::engine::Engine;
use tap_controller::k8s::fixtures::*;
use tap_controller::k8s::{reconcile, Metrics};
use tap_tests::Emulator;

#[tokio::test]
async fn finalizer_first_then_a_real_walk_is_reported_by_server_side_apply() -> anyhow::Result<()> {
    let emulator = Emulator::start().await?;
    let metrics = Metrics::new();
    let observer = metrics.clone();
    let engine = Arc::new(
        Engine::new(emulator.sdk_config(), 4, Default::default())
            .with_call_observer(move |s, o| observer.aws_call(s, o)),
    );
    let (client, mut server) = mock_client();
    let ctx = context(client, engine.clone(), metrics.clone());

    // 1. A new pipeline: the only request is the finalizer patch, and the engine has not even built
    //    its clients (no STS call).
    let p = pipeline("glue", "glue1", 60);
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), ctx.clone()));
    let first = server.next().await;
    assert_eq!(
        (first.method.as_str(), first.uri.as_str()),
        ("PATCH", pipeline_uri("glue").as_str())
    );
    assert_eq!(first.body[1]["value"], json!([FINALIZER]));
    let p = finalized(p);
    first.ok(to_json(&p));
    tokio::time::timeout(PATIENCE, task)
        .await??
        .expect("finalizer added");
    // The clients are built only now, by this line: whatever the counter holds (at most the STS call
    // made right here) is all there is.
    let aws = engine.aws(None).await?;
    let before = aws.calls.total();
    assert!(
        before <= 1,
        "calls before the walk: {:?}",
        aws.calls.snapshot()
    );

    // 2. With the finalizer: the engine walks the emulator; the outcome is applied to the status.
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), ctx.clone()));
    let (served, _result) = server.serve_until(&p, task).await;
    assert!(aws.calls.total() > before, "the walk reached the emulator");
    let statuses = served.find("PATCH", &status_uri("glue"));
    let status = statuses.first().expect("a status apply");
    assert_eq!(status["apiVersion"], "tap.dev/v1alpha1");
    assert_eq!(status["status"]["observedGeneration"], 1);
    for type_ in ["Ready", "Drifted", "Degraded"] {
        condition(&status["status"], type_);
    }
    assert!(
        !status["status"]["resources"].as_array().unwrap().is_empty(),
        "one entry per AWS resource"
    );
    assert!(served.event_reasons().contains(&"PhaseChanged".to_string()));
    assert!(
        metrics.encode().contains("tap_aws_calls_total{"),
        "AWS calls reach the metrics through the engine's observer"
    );
    Ok(())
}
