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
async fn finalizer_first_then_in_the_same_reconcile_a_real_walk_reported_by_server_side_apply(
) -> anyhow::Result<()> {
    let emulator = Emulator::start().await?;
    let metrics = Metrics::new();
    let observer = metrics.clone();
    let engine = Arc::new(
        Engine::new(emulator.sdk_config(), 4, Default::default())
            .with_call_observer(move |s, o| observer.aws_call(s, o)),
    );
    let (client, mut server) = mock_client();
    let ctx = context(client, engine.clone(), metrics.clone());

    // 1. A new pipeline: its first request is the finalizer patch, before any AWS call.
    let p = pipeline("glue", "glue1", 60);
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), ctx.clone()));
    let first = server.next().await;
    assert_eq!(
        (first.method.as_str(), first.uri.as_str()),
        ("PATCH", pipeline_uri("glue").as_str())
    );
    assert_eq!(first.body[1]["value"], json!([FINALIZER]));
    assert!(
        !metrics.encode().contains("tap_aws_calls_total{"),
        "no AWS call before the finalizer"
    );
    let p = finalized(p);
    first.ok(to_json(&p));

    // 2. The same reconcile goes on with the patched object: the engine walks the emulator, and the
    //    outcome is applied to the status.
    let (served, _result) = server.serve_until(&p, task).await;
    let aws = engine.aws(None).await?;
    assert!(aws.calls.total() > 1, "the walk reached the emulator");
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
