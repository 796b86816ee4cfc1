//! The reconciler against a mocked API server (`k8s::fixtures`): every request is asserted in order.

use super::super::context::Context;
use super::super::error::{Error, ErrorCategory};
use super::super::fixtures::*;
use super::super::metrics::Metrics;
use super::*;
use crate::api::{DriftAction, DriftEntry, TransactionPipelineStatus};
use crate::aws::AwsError;
use crate::desired::Kind;
use crate::drivers::SecretValue;
use crate::engine::DriftMemory;
use serde_json::json;

/// Runs one reconcile in the background; the test drives the mocked API server meanwhile.
fn spawn_reconcile(
    p: TransactionPipeline,
    ctx: Arc<Context>,
) -> tokio::task::JoinHandle<Result<Action, Error>> {
    tokio::spawn(reconcile(Arc::new(p), ctx))
}

async fn finish(task: tokio::task::JoinHandle<Result<Action, Error>>) -> Result<Action, Error> {
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("the reconcile did not finish (an unanswered extra request?)")
        .expect("the reconcile panicked")
}

/// The finalizer goes on before any AWS call, and the same reconcile then applies the patched object
/// (no second reconcile, one debounce and one watch event later, before a new pipeline's first walk).
#[tokio::test]
async fn a_new_pipeline_gets_the_finalizer_before_any_aws_call_then_is_applied_at_once() {
    let sentinel = AwsSentinel::start().await;
    let (client, mut server) = mock_client();
    let metrics = Metrics::new();
    let ctx = context(client, Arc::new(sentinel.engine(&metrics)), metrics);
    let p = pipeline("test", "dev1", 60);
    let task = spawn_reconcile(p.clone(), ctx);

    let first = server.next().await;
    assert_eq!(first.method, "PATCH");
    assert_eq!(first.uri, pipeline_uri("test"));
    assert_eq!(
        first.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    );
    assert_eq!(
        sentinel.connections(),
        0,
        "no AWS call may precede the finalizer"
    );
    first.ok(to_json(&finalized(p.clone())));

    // The walk follows in this reconcile: AWS (the sentinel) is reached, and its failure reported.
    let status = server.expect("PATCH", &status_uri("test")).await;
    assert_eq!(
        condition(&status.body["status"], "Ready")["reason"],
        "AwsError"
    );
    assert!(
        sentinel.connections() > 0,
        "the apply must follow the finalizer"
    );
    status.applied(&p);
    assert_eq!(server.expect_event().await["reason"], "PhaseChanged");
    assert_eq!(server.expect_event().await["reason"], "AwsError");
    finish(task).await.expect_err("AWS is unreachable");
}

/// Positive control for the sentinel: a valid, finalized pipeline does reach AWS (STS first); the
/// unreachable endpoint is reported in the status and retried as a transient error.
#[tokio::test]
async fn the_sentinel_sees_aws_calls_and_connect_errors_are_reported() {
    let sentinel = AwsSentinel::start().await;
    let (client, mut server) = mock_client();
    let metrics = Metrics::new();
    let ctx = context(client, Arc::new(sentinel.engine(&metrics)), metrics);
    let task = spawn_reconcile(finalized(pipeline("test", "dev1", 60)), ctx.clone());

    let status = server.expect("PATCH", &status_uri("test")).await;
    let ready = condition(&status.body["status"], "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "AwsError");
    assert!(ready["message"]
        .as_str()
        .unwrap()
        .contains("sts:GetCallerIdentity"));
    status.applied(&pipeline("test", "dev1", 60));
    let phase = server.expect_event().await;
    assert_eq!(phase["reason"], "PhaseChanged");
    let error = server.expect_event().await;
    assert_eq!(error["reason"], "AwsError");
    assert_eq!(error["type"], "Warning");

    let err = finish(task).await.expect_err("AWS is unreachable");
    assert!(
        sentinel.connections() > 0,
        "the sentinel must see the STS call"
    );
    assert!(err.is_transient(), "{err}");
    assert_eq!(
        error_policy(Arc::new(pipeline("test", "dev1", 60)), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        error_policy(Arc::new(pipeline("test", "dev1", 60)), &err, ctx),
        Action::requeue(Duration::from_secs(10))
    );
}

#[tokio::test]
async fn status_is_server_side_applied_with_conditions_and_events_are_published() {
    let (client, mut server) = mock_client();
    let backend = ScriptedBackend::reconciling(report(vec![
        resource(
            Kind::Table,
            "tap-dev1-transactions",
            EngineAction::Create,
            true,
        ),
        resource(
            Kind::LogGroup,
            "/aws/lambda/x",
            EngineAction::NoChange,
            false,
        ),
    ]));
    let ctx = context(client, Arc::new(backend), Metrics::new());
    let mut p = finalized(pipeline("test", "dev1", 60));
    p.metadata.generation = Some(3);
    let task = spawn_reconcile(p.clone(), ctx.clone());

    let status = server.expect("PATCH", &status_uri("test")).await;
    let body = status.body.clone();
    assert_eq!(body["apiVersion"], "tap.dev/v1alpha1");
    assert_eq!(body["kind"], "TransactionPipeline");
    assert_eq!(body["status"]["observedGeneration"], 3);
    assert_eq!(body["status"]["phase"], "Ready");
    assert_eq!(condition(&body["status"], "Ready")["status"], "True");
    assert_eq!(condition(&body["status"], "Drifted")["status"], "False");
    assert_eq!(condition(&body["status"], "Degraded")["status"], "False");
    assert_eq!(condition(&body["status"], "Synced")["status"], "True");
    status.applied(&p);

    let phase = server.expect_event().await;
    assert_eq!(phase["reason"], "PhaseChanged");
    assert_eq!(phase["type"], "Normal");
    assert_eq!(phase["note"], "phase (none) → Ready");
    assert_eq!(phase["reportingController"], "tap-controller");
    assert_eq!(phase["regarding"]["name"], "test");
    assert_eq!(phase["regarding"]["kind"], "TransactionPipeline");
    let created = server.expect_event().await;
    assert_eq!(created["reason"], "Created");
    assert_eq!(created["note"], "Table tap-dev1-transactions: created");

    let action = finish(task).await.expect("reconcile");
    assert_eq!(
        action,
        Action::requeue(RESYNC),
        "Ready waits for the resync"
    );
    let metrics = ctx.metrics.encode();
    assert!(metrics.contains("tap_reconciles_total 1"), "{metrics}");
    assert!(
        metrics.contains("tap_pipelines{phase=\"Ready\"} 1"),
        "{metrics}"
    );
}

/// A resync that finds the stack as it was writes no status (no PATCH: nothing for the API server to
/// store and send to every watcher); one that finds a change does.
#[tokio::test]
async fn an_unchanged_resync_sends_no_status_patch() {
    let (client, mut server) = mock_client();
    let unchanged = || {
        report(vec![resource(
            Kind::Table,
            "tap-dev1-transactions",
            EngineAction::NoChange,
            false,
        )])
    };
    let backend = ScriptedBackend::reconciling(unchanged());
    backend
        .reconciles
        .lock()
        .unwrap()
        .push_back(Ok(unchanged()));
    backend
        .reconciles
        .lock()
        .unwrap()
        .push_back(Ok(report(vec![resource(
            Kind::Table,
            "tap-dev1-transactions",
            EngineAction::Create,
            true,
        )])));
    let ctx = context(client, Arc::new(backend), Metrics::new());
    let mut p = finalized(pipeline("test", "dev1", 60));

    // First walk: the status is new, so it is written.
    let task = spawn_reconcile(p.clone(), ctx.clone());
    let status = server.expect("PATCH", &status_uri("test")).await;
    let written: TransactionPipelineStatus =
        serde_json::from_value(status.body["status"].clone()).expect("a status");
    status.applied(&p);
    assert_eq!(server.expect_event().await["reason"], "PhaseChanged");
    finish(task).await.expect("reconcile");

    // The resync sees the same stack: it finishes without a request (an unanswered PATCH would
    // keep it waiting past the patience of `finish`).
    p.status = Some(written.clone());
    finish(spawn_reconcile(p.clone(), ctx.clone()))
        .await
        .expect("resync");
    assert!(ctx.metrics.encode().contains("tap_reconciles_total 2"));

    // A walk that changed something is written again.
    let task = spawn_reconcile(p.clone(), ctx.clone());
    let status = server.expect("PATCH", &status_uri("test")).await;
    assert_eq!(
        status.body["status"]["resources"][0]["message"], "created",
        "{}",
        status.body
    );
    status.applied(&p);
    assert_eq!(server.expect_event().await["reason"], "Created");
    finish(task).await.expect("reconcile");
}

#[tokio::test]
async fn an_invalid_spec_fails_with_the_field_and_no_aws_call() {
    let sentinel = AwsSentinel::start().await;
    let (client, mut server) = mock_client();
    let metrics = Metrics::new();
    let ctx = context(client, Arc::new(sentinel.engine(&metrics)), metrics);
    let mut p = finalized(pipeline("test", "dev1", 60));
    p.spec.functions.csv_validator.memory_mb = 64;
    let task = spawn_reconcile(p.clone(), ctx.clone());

    let status = server.expect("PATCH", &status_uri("test")).await;
    let s = status.body["status"].clone();
    assert_eq!(s["phase"], "Failed");
    assert_eq!(s["observedGeneration"], 1);
    let ready = condition(&s, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "InvalidSpec");
    assert_eq!(condition(&s, "Synced")["status"], "False");
    // Drift is not known when AWS was not read: Unknown, not False.
    assert_eq!(condition(&s, "Drifted")["status"], "Unknown");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("spec.functions.csvValidator.memoryMb"),
        "{ready}"
    );
    status.applied(&p);
    assert_eq!(server.expect_event().await["reason"], "PhaseChanged");
    let invalid = server.expect_event().await;
    assert_eq!(invalid["reason"], "InvalidSpec");
    assert_eq!(invalid["type"], "Warning");

    let action = finish(task).await.expect("an invalid spec is handled");
    assert_eq!(action, Action::requeue(RESYNC));
    assert_eq!(
        sentinel.connections(),
        0,
        "an invalid spec must not reach AWS"
    );
    assert!(ctx
        .metrics
        .encode()
        .contains("tap_reconcile_errors_total{kind=\"invalid_spec\"} 1"));
}

#[tokio::test]
async fn a_paused_pipeline_makes_no_aws_call_and_says_paused() {
    let sentinel = AwsSentinel::start().await;
    let (client, mut server) = mock_client();
    let metrics = Metrics::new();
    let ctx = context(client, Arc::new(sentinel.engine(&metrics)), metrics);
    let mut p = finalized(pipeline("test", "dev1", 60));
    p.metadata.annotations = Some(
        [(
            crate::api::PAUSED_ANNOTATION.to_string(),
            "true".to_string(),
        )]
        .into_iter()
        .collect(),
    );
    let task = spawn_reconcile(p.clone(), ctx.clone());

    let status = server.expect("PATCH", &status_uri("test")).await;
    let s = status.body["status"].clone();
    assert_eq!(s["phase"], "Paused");
    let ready = condition(&s, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "Paused");
    assert_eq!(condition(&s, "Synced")["status"], "Unknown");
    status.applied(&p);
    let event = server.expect_event().await;
    assert_eq!(event["reason"], "PhaseChanged");
    let action = finish(task).await.expect("a paused pipeline is handled");
    assert_eq!(action, Action::await_change());
    assert_eq!(
        sentinel.connections(),
        0,
        "a paused pipeline must not reach AWS"
    );
}

#[tokio::test]
async fn a_duplicate_suffix_is_a_conflict_and_touches_nothing() {
    let sentinel = AwsSentinel::start().await;
    let (client, mut server) = mock_client();
    let metrics = Metrics::new();
    let ctx = context(client, Arc::new(sentinel.engine(&metrics)), metrics);
    let older = finalized(pipeline("older", "shared", 3600));
    let newer = finalized(pipeline("newer", "shared", 60));
    let unrelated = finalized(pipeline("other", "solo", 7200));
    ctx.suffixes
        .set_stores(vec![store_of(&[older.clone(), newer.clone(), unrelated])]);

    let task = spawn_reconcile(newer.clone(), ctx.clone());
    let status = server.expect("PATCH", &status_uri("newer")).await;
    let s = status.body["status"].clone();
    assert_eq!(s["phase"], "Failed");
    let conflict = condition(&s, "Conflict");
    assert_eq!(conflict["status"], "True");
    assert_eq!(conflict["reason"], "DuplicateSuffix");
    assert!(
        conflict["message"]
            .as_str()
            .unwrap()
            .contains("default/older"),
        "{conflict}"
    );
    status.applied(&newer);
    assert_eq!(server.expect_event().await["reason"], "PhaseChanged");
    assert_eq!(server.expect_event().await["reason"], "DuplicateSuffix");
    finish(task).await.expect("reconcile");
    assert_eq!(sentinel.connections(), 0, "a duplicate must not reach AWS");

    // The older one is not held back by the newer one: it goes on to the engine (and so to AWS).
    assert!(ctx.suffixes.older_with_same_suffix(&older).is_none());
}

fn deleting_pipeline() -> TransactionPipeline {
    let mut p = deleting(finalized(pipeline("test", "dev1", 60)));
    p.status = Some(TransactionPipelineStatus {
        phase: Some(Phase::Ready),
        ..Default::default()
    });
    p
}

#[tokio::test]
async fn deletion_removes_the_finalizer_only_after_teardown_succeeded() {
    let (client, mut server) = mock_client();
    let backend = Arc::new(ScriptedBackend::tearing_down(report(vec![
        resource(
            Kind::Function,
            "tap-dev1-csv-validator",
            EngineAction::Delete,
            true,
        ),
        resource(
            Kind::Table,
            "tap-dev1-transactions",
            EngineAction::AlreadyGone,
            false,
        ),
    ])));
    let ctx = context(client, backend.clone(), Metrics::new());
    let p = deleting_pipeline();
    // A newer pipeline with the same suffix waits as a duplicate; it is woken once the stack is gone.
    let successor = finalized(pipeline("successor", "dev1", 10));
    ctx.suffixes
        .set_stores(vec![store_of(&[p.clone(), successor])]);
    let (waker, mut woken) = futures::channel::mpsc::unbounded();
    ctx.suffixes
        .set_wakers(vec![(Some("default".into()), waker)]);
    let task = spawn_reconcile(p.clone(), ctx);

    let status = server.expect("PATCH", &status_uri("test")).await;
    assert_eq!(status.body["status"]["phase"], "Deleting");
    assert_eq!(
        backend.teardown_calls(),
        0,
        "Deleting is recorded before the teardown"
    );
    status.applied(&p);
    assert_eq!(server.expect_event().await["reason"], "PhaseChanged");
    let deleted = server.expect_event().await;
    assert_eq!(deleted["reason"], "Deleted");
    assert_eq!(deleted["note"], "Function tap-dev1-csv-validator: deleted");

    let remove = server.expect("PATCH", &pipeline_uri("test")).await;
    assert_eq!(backend.teardown_calls(), 1);
    assert_eq!(
        remove.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ])
    );
    let mut gone = to_json(&p);
    gone["metadata"]["finalizers"] = json!([]);
    remove.ok(gone);
    finish(task).await.expect("cleanup");
    let next = woken.try_recv().expect("a successor was woken");
    assert_eq!(next.name, "successor");
}

#[tokio::test]
async fn a_failed_teardown_keeps_the_finalizer() {
    let (client, mut server) = mock_client();
    let backend = Arc::new(ScriptedBackend::tearing_down(report(vec![
        resource(
            Kind::Function,
            "tap-dev1-csv-validator",
            EngineAction::Delete,
            true,
        ),
        resource(
            Kind::Table,
            "tap-dev1-transactions",
            EngineAction::Fail(AwsError::terminal(
                "Table tap-dev1-transactions",
                "dynamodb:DeleteTable",
                "AccessDenied",
            )),
            false,
        ),
    ])));
    let ctx = context(client, backend.clone(), Metrics::new());
    let p = deleting_pipeline();
    // A newer pipeline with the same suffix waits as a duplicate; it is woken once the stack is gone.
    let successor = finalized(pipeline("successor", "dev1", 10));
    ctx.suffixes
        .set_stores(vec![store_of(&[p.clone(), successor])]);
    let (waker, mut woken) = futures::channel::mpsc::unbounded();
    ctx.suffixes
        .set_wakers(vec![(Some("default".into()), waker)]);
    let task = spawn_reconcile(p.clone(), ctx);

    server
        .expect("PATCH", &status_uri("test"))
        .await
        .applied(&p);
    assert_eq!(server.expect_event().await["reason"], "PhaseChanged");
    // The outcome is committed status first, then its Events.
    let status = server.expect("PATCH", &status_uri("test")).await;
    assert_eq!(status.body["status"]["phase"], "Failed");
    status.applied(&p);
    assert_eq!(server.expect_event().await["reason"], "Deleted");
    let incomplete = server.expect_event().await;
    assert_eq!(incomplete["reason"], "TeardownIncomplete");
    assert_eq!(incomplete["type"], "Warning");

    // No finalizer patch: the reconcile ends with an error instead.
    let err = finish(task).await.expect_err("teardown failed");
    assert!(
        woken.try_recv().is_err(),
        "the suffix is not free while the stack remains"
    );
    assert_eq!(err.category(), ErrorCategory::AwsTerminal);
    assert_eq!(backend.teardown_calls(), 1);
}

#[tokio::test]
async fn retain_lets_the_finalizer_go_without_teardown() {
    let (client, mut server) = mock_client();
    let backend = Arc::new(ScriptedBackend::default());
    let ctx = context(client, backend.clone(), Metrics::new());
    let mut p = deleting_pipeline();
    p.spec.deletion_policy = DeletionPolicy::Retain;
    let task = spawn_reconcile(p.clone(), ctx);

    assert_eq!(server.expect_event().await["reason"], "Retained");
    let remove = server.expect("PATCH", &pipeline_uri("test")).await;
    assert_eq!(remove.body[1]["op"], "remove");
    remove.ok(to_json(&p));
    finish(task).await.expect("cleanup");
    assert_eq!(backend.teardown_calls(), 0);
}

#[tokio::test]
async fn drift_and_corrections_publish_one_event_each_and_requeue_to_verify() {
    let (client, mut server) = mock_client();
    let diff = crate::drivers::FieldDiff {
        field: "memoryMb".into(),
        expected: json!(512),
        actual: json!(256),
    };
    let mut r = report(vec![resource(
        Kind::Function,
        "tap-dev1-csv-validator",
        EngineAction::Update(vec![diff]),
        true,
    )]);
    let drift = |field: &str, expected: &str, actual: &str| DriftEntry {
        kind: "Function".into(),
        name: "tap-dev1-csv-validator".into(),
        field: field.into(),
        expected: expected.into(),
        actual: actual.into(),
        first_seen: "2026-11-25T09:00:00Z".into(),
        action: DriftAction::Corrected,
    };
    r.drift = vec![
        drift("memoryMb", "512", "256"),
        drift("timeoutSeconds", "30", "3"),
    ];
    let ctx = context(
        client,
        Arc::new(ScriptedBackend::reconciling(r)),
        Metrics::new(),
    );
    let mut p = finalized(pipeline("test", "dev1", 60));
    p.status = Some(TransactionPipelineStatus {
        phase: Some(Phase::Ready),
        ..Default::default()
    });
    let task = spawn_reconcile(p.clone(), ctx.clone());

    let status = server.expect("PATCH", &status_uri("test")).await;
    assert_eq!(status.body["status"]["driftCount"], 2);
    assert_eq!(
        condition(&status.body["status"], "Drifted")["status"],
        "True"
    );
    status.applied(&p);
    // Phase stays Ready (every drift corrected): no PhaseChanged event.
    let updated = server.expect_event().await;
    assert_eq!(updated["reason"], "Updated");
    assert_eq!(
        updated["note"],
        "Function tap-dev1-csv-validator: updated: memoryMb"
    );
    let first = server.expect_event().await;
    assert_eq!(first["reason"], "DriftDetected");
    assert_eq!(
        first["note"],
        "Function tap-dev1-csv-validator field memoryMb: expected 512, actual 256 (Corrected)"
    );
    let second = server.expect_event().await;
    assert_eq!(second["reason"], "DriftDetected");
    assert!(second["note"].as_str().unwrap().contains("timeoutSeconds"));

    let action = finish(task).await.expect("reconcile");
    assert_eq!(action, Action::requeue(VERIFY_REQUEUE));
    let metrics = ctx.metrics.encode();
    assert!(metrics
        .contains("tap_drift_detected_total{resource_kind=\"Function\",field=\"memoryMb\"} 1"));
}

#[tokio::test]
async fn the_api_key_secret_is_applied_only_when_missing_with_an_owner_reference() {
    let (client, mut server) = mock_client();
    let backend = ScriptedBackend::default();
    for _ in 0..2 {
        let mut r = report(vec![]);
        r.api_key = Some(SecretValue("s3cr3t-key".into()));
        backend.reconciles.lock().unwrap().push_back(Ok(r));
    }
    let ctx = context(client, Arc::new(backend), Metrics::new());
    let mut p = finalized(pipeline("test", "dev1", 60));
    p.status = Some(TransactionPipelineStatus {
        phase: Some(Phase::Ready),
        ..Default::default()
    });

    let task = spawn_reconcile(p.clone(), ctx.clone());
    server
        .expect("PATCH", &status_uri("test"))
        .await
        .applied(&p);
    server
        .expect("GET", "/api/v1/namespaces/default/secrets/test-api-key")
        .await
        .not_found();
    let apply = server
        .expect(
            "PATCH",
            "/api/v1/namespaces/default/secrets/test-api-key?&force=true&fieldManager=tap-controller",
        )
        .await;
    let secret = apply.body.clone();
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["data"]["apiKey"], "czNjcjN0LWtleQ==");
    let owner = &secret["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "TransactionPipeline");
    assert_eq!(owner["name"], "test");
    assert_eq!(owner["uid"], "uid-test");
    assert_eq!(owner["controller"], true);
    let mut written = secret.clone();
    written["metadata"]["namespace"] = json!("default");
    apply.ok(secret);
    finish(task).await.expect("reconcile");

    // Unchanged key: read (a deleted Secret would be noticed), not written again.
    let task = spawn_reconcile(p.clone(), ctx);
    server
        .expect("PATCH", &status_uri("test"))
        .await
        .applied(&p);
    let current = server
        .expect("GET", "/api/v1/namespaces/default/secrets/test-api-key")
        .await;
    current.ok(written);
    finish(task).await.expect("reconcile");
}

#[test]
fn requeue_follows_the_phase() {
    let memory = DriftMemory::default();
    let resync = Duration::from_secs(600);
    let none = report(vec![]);
    assert_eq!(
        requeue_after(&none, Phase::Provisioning, &memory, resync),
        PROVISIONING_REQUEUE
    );
    assert_eq!(
        requeue_after(&none, Phase::WaitingForImages, &memory, resync),
        PROVISIONING_REQUEUE
    );
    assert_eq!(requeue_after(&none, Phase::Ready, &memory, resync), resync);
    assert_eq!(
        requeue_after(&none, Phase::Drifted, &memory, resync),
        resync
    );
}

fn asked(generation: i64, request: Option<&str>) -> Handled {
    Handled {
        generation: Some(generation),
        request: request.map(str::to_string),
    }
}

/// A resync may share listings read up to [`RESYNC_SHARED_READS_AGE`] ago; a spec change reads them
/// afresh; a new timestamped request takes what was read since its moment, any other request reads
/// afresh.
#[test]
fn what_a_reconcile_was_asked_for_bounds_the_age_of_the_listings_it_shares() {
    let now = DateTime::parse_from_rfc3339("2026-12-07T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let resync = asked(3, Some("1796644000"));
    assert_eq!(
        shared_reads_age(Some(&resync), &resync, now),
        RESYNC_SHARED_READS_AGE,
        "nothing new: a resync or a retry"
    );
    assert_eq!(
        shared_reads_age(None, &asked(3, None), now),
        RESYNC_SHARED_READS_AGE,
        "the first reconcile after a restart"
    );
    assert_eq!(
        shared_reads_age(Some(&resync), &asked(4, Some("1796644000")), now),
        Duration::ZERO,
        "a spec change"
    );
    let request = |value: &str| shared_reads_age(Some(&resync), &asked(3, Some(value)), now);
    assert_eq!(
        request("2026-12-07T11:59:57.5Z"),
        Duration::from_millis(2500)
    );
    assert_eq!(
        request(&(now.timestamp() - 4).to_string()),
        Duration::from_secs(4)
    );
    assert_eq!(
        request("2026-12-07T11:00:00Z"),
        RESYNC_SHARED_READS_AGE,
        "an old timestamp shares no more than a resync"
    );
    assert_eq!(
        request("2026-12-07T12:00:30Z"),
        Duration::ZERO,
        "a future one reads afresh"
    );
    assert_eq!(request("please"), Duration::ZERO, "not a timestamp: afresh");
    assert_eq!(
        shared_reads_age(Some(&resync), &asked(4, Some("2026-12-07T11:59:58Z")), now),
        Duration::ZERO,
        "a spec change with a request reads afresh"
    );
}
