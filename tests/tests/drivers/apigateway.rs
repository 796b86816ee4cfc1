//! API Gateway: the REST API, its stage, the API key and the usage plan.
//!
//! Tags: AWS reports them on GetRestApis/GetUsagePlans/GetApiKeys, but moto cannot tag a REST API or a
//! usage plan through TagResource (it only knows stages), and ministack keeps TagResource's tags apart
//! from what the getters return. So tag drift of those is made out of band and handed to the driver as
//! an observation, and the correction is checked with GetTags (skipped on moto).

use std::collections::BTreeMap;

use anyhow::Context;
use aws_sdk_apigateway::types::Op;
use serde::Serialize;
use tap_controller::desired::{names, Kind, ResourceId, Tags};
use tap_controller::drivers::apigateway::{ApiKeys, RestApis, Stages, UsagePlans};
use tap_controller::drivers::{diff, Changes, Driver, Observed, Outputs};
use tap_tests::lifecycle::{written, Subject};
use tap_tests::stack::TestStack;
use tap_tests::EmulatorKind;

use super::lambda::function_with_prerequisites;
use super::{diff_of, fields, set};

fn patch(op: Op, path: &str, value: &str) -> aws_sdk_apigateway::types::PatchOperation {
    aws_sdk_apigateway::types::PatchOperation::builder()
        .op(op)
        .path(path)
        .value(value)
        .build()
}

/// The REST API created through its driver (its integration's function first); its id.
async fn rest_api(t: &TestStack) -> anyhow::Result<(Subject<'_, RestApis>, ResourceId, Outputs)> {
    function_with_prerequisites(t, "csv-validator").await?;
    let api = t.subject(RestApis, Kind::RestApi, "-api")?;
    let outputs = api.create().await?;
    let id = api.id.clone();
    Ok((api, id, outputs))
}

/// Tag drift made out of band, handed back as an observation (see the module's note); `None` on moto.
async fn tag_drift<D: Driver>(
    t: &TestStack,
    subject: &Subject<'_, D>,
    arn: &str,
    observed: &Observed<D::Spec>,
) -> anyhow::Result<Option<(Observed<D::Spec>, Changes)>>
where
    D::Spec: Serialize + Clone,
{
    if t.emu.kind == EmulatorKind::Moto {
        return Ok(None);
    }
    let mut drifted = observed.clone();
    drifted.tags.insert("team".into(), "someone-else".into());
    drifted.tags.insert("stray".into(), "x".into());
    t.aws
        .apigateway
        .tag_resource()
        .resource_arn(arn)
        .tags("team", "someone-else")
        .tags("stray", "x")
        .send()
        .await?;
    let changes = diff(&observed.spec, &subject.tags, &drifted.spec, &drifted.tags);
    assert_eq!(fields(&changes), set(&["tags.stray", "tags.team"]));
    t.aws.calls.reset();
    Ok(Some((drifted, changes)))
}

async fn verify_tags(t: &TestStack, arn: &str, desired_tags: &Tags) -> anyhow::Result<()> {
    assert_eq!(written(&t.aws), set(&["TagResource", "UntagResource"]));
    let tags = t.aws.apigateway.get_tags().resource_arn(arn).send().await?;
    let tags: BTreeMap<String, String> = tags
        .tags()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect();
    // ministack's tag store only holds tags set through TagResource (creation tags are not in it): check
    // what the correction wrote and removed.
    assert_eq!(tags.get("team"), desired_tags.get("team"));
    assert_eq!(tags.get("stray"), None);
    Ok(())
}

async fn correct_tags<D: Driver>(
    t: &TestStack,
    subject: &Subject<'_, D>,
    arn: &str,
    observed: &Observed<D::Spec>,
) -> anyhow::Result<()>
where
    D::Spec: Serialize + Clone,
{
    if let Some((drifted, changes)) = tag_drift(t, subject, arn, observed).await? {
        subject
            .update_with(&subject.desired, &subject.tags, &drifted, &changes)
            .await?;
        verify_tags(t, arn, &subject.tags).await?;
    }
    Ok(())
}

#[tokio::test]
async fn rest_api_converges_drift_and_deletes() -> anyhow::Result<()> {
    let t = TestStack::example().await?;
    function_with_prerequisites(&t, "csv-validator").await?;
    let api = t.subject(RestApis, Kind::RestApi, "-api")?;
    api.assert_absent().await?;
    let outputs = api.create().await?;
    let id = outputs.id.clone().context("api id")?;
    assert_eq!(
        outputs.arn,
        Some(format!("arn:aws:apigateway:us-east-1::/restapis/{id}"))
    );
    let observed = api.assert_converged().await?;
    assert_eq!(observed.outputs, outputs);

    // Drift out of band: the description.
    t.aws
        .apigateway
        .update_rest_api()
        .rest_api_id(&id)
        .patch_operations(patch(Op::Replace, "/description", "changed by hand"))
        .send()
        .await
        .context("UpdateRestApi")?;
    let (observed, changes) = api.assert_drift(&["description"]).await?;
    let observed = api.correct(&observed, &changes, &["UpdateRestApi"]).await?;
    correct_tags(&t, &api, &outputs.arn.clone().context("arn")?, &observed).await?;

    // The method is re-put by hand without its API key requirement, validator, parameters, models or
    // integration: all restored, the validator reused. (The live deployment still serves the method as
    // it was: a hand edit reaches clients only through a deployment, which the stage would report.)
    let resource_id = t
        .aws
        .apigateway
        .get_resources()
        .rest_api_id(&id)
        .send()
        .await?
        .items()
        .iter()
        .find(|res| res.path() == Some("/upload"))
        .and_then(|res| res.id().map(str::to_string))
        .context("/upload")?;
    t.aws
        .apigateway
        .delete_method()
        .rest_api_id(&id)
        .resource_id(&resource_id)
        .http_method("POST")
        .send()
        .await?;
    t.aws
        .apigateway
        .put_method()
        .rest_api_id(&id)
        .resource_id(&resource_id)
        .http_method("POST")
        .authorization_type("NONE")
        .api_key_required(false)
        .send()
        .await?;
    let observed = api.get().await?;
    let changes = api.diff(&api.desired, &api.tags, &observed);
    let tops: Vec<&str> = changes.top_fields().into_iter().collect();
    assert_eq!(
        tops,
        ["integration", "method", "validator"],
        "{:?}",
        changes.diffs
    );
    t.aws.calls.reset();
    api.update_with(&api.desired, &api.tags, &observed, &changes)
        .await?;
    let writes = written(&t.aws);
    assert!(
        writes.contains("PutMethod") && writes.contains("PutIntegration"),
        "{writes:?}"
    );
    assert!(
        !writes.contains("CreateRequestValidator"),
        "reused: {writes:?}"
    );
    let observed = api.assert_converged().await?;
    api.assert_deleted(&observed).await?;
    Ok(())
}

#[tokio::test]
async fn stage_deploys_the_api_converges_drift_and_deletes() -> anyhow::Result<()> {
    let t = TestStack::example().await?;
    let (_api, api_id, api_outputs) = rest_api(&t).await?;
    let id = api_outputs.id.clone().context("api id")?;
    let stage = t
        .subject(Stages, Kind::Stage, "/prod")?
        .with_dep(api_id, api_outputs);
    stage.assert_absent().await?;
    let outputs = stage.create().await?;
    assert_eq!(
        outputs.url,
        Some(format!(
            "https://{id}.execute-api.us-east-1.amazonaws.com/prod"
        ))
    );
    let observed = stage.assert_converged().await?;
    assert_eq!(observed.spec.deployment, stage.desired.deployment);

    // Drift out of band: throttling, and a deployment made by hand put live.
    t.aws
        .apigateway
        .update_stage()
        .rest_api_id(&id)
        .stage_name("prod")
        .patch_operations(patch(Op::Replace, "/*/*/throttling/burstLimit", "7"))
        .send()
        .await
        .context("UpdateStage")?;
    let by_hand = t
        .aws
        .apigateway
        .create_deployment()
        .rest_api_id(&id)
        .description("deployed by hand")
        .send()
        .await?;
    t.aws
        .apigateway
        .update_stage()
        .rest_api_id(&id)
        .stage_name("prod")
        .patch_operations(patch(
            Op::Replace,
            "/deploymentId",
            by_hand.id().context("deployment id")?,
        ))
        .send()
        .await?;
    let (observed, changes) = stage
        .assert_drift(&["deployment", "throttleBurstLimit"])
        .await?;
    assert_eq!(
        diff_of(&changes, "throttleBurstLimit").actual,
        serde_json::json!(7)
    );
    assert_eq!(
        diff_of(&changes, "deployment").actual,
        serde_json::json!("deployed by hand")
    );
    // Our deployment still exists: it is put live again, no new one made.
    let observed = stage.correct(&observed, &changes, &["UpdateStage"]).await?;

    // A spec change of the API: a new fingerprint, a new deployment.
    let mut changed = stage.desired.clone();
    changed.deployment = "0123456789abcdef".into();
    let changes = stage.diff(&changed, &stage.tags, &observed);
    assert_eq!(fields(&changes), set(&["deployment"]));
    let observed = stage
        .correct_as(
            &changed,
            &observed,
            &changes,
            &["CreateDeployment", "UpdateStage"],
        )
        .await?;
    stage.assert_deleted(&observed).await?;
    Ok(())
}

#[tokio::test]
async fn api_key_lifecycle_keeps_its_value_secret() -> anyhow::Result<()> {
    let t = TestStack::example().await?;
    let key = t.subject(ApiKeys, Kind::ApiKey, "-api-key")?;
    key.assert_absent().await?;
    let outputs = key.create().await?;
    let secret = outputs.secret.clone().context("key value")?;
    assert!(!secret.0.is_empty());
    assert!(
        !format!("{outputs:?}").contains(&secret.0),
        "the key value never shows in Debug"
    );
    let observed = key.assert_converged().await?;
    assert_eq!(observed.outputs.secret.as_ref(), Some(&secret));
    assert_eq!(observed.outputs.id, outputs.id);

    // ministack stores every patched value as a string (the SDK cannot read `"false"` back as a bool):
    // there the description drifts instead.
    let (path, value, field) = if t.emu.kind == EmulatorKind::Moto {
        ("/enabled", "false", "enabled")
    } else {
        ("/description", "changed by hand", "description")
    };
    t.aws
        .apigateway
        .update_api_key()
        .api_key(outputs.id.as_deref().context("key id")?)
        .patch_operations(patch(Op::Replace, path, value))
        .send()
        .await?;
    let (observed, changes) = key.assert_drift(&[field]).await?;
    let observed = key.correct(&observed, &changes, &["UpdateApiKey"]).await?;
    key.assert_deleted(&observed).await?;
    Ok(())
}

/// The usage plan with its API, stage and key created through their drivers, their outputs handed over.
async fn usage_plan(t: &TestStack) -> anyhow::Result<(Subject<'_, UsagePlans>, String, String)> {
    let (_api, api_id, api_outputs) = rest_api(t).await?;
    let rest_api_id = api_outputs.id.clone().context("api id")?;
    let stage = t
        .subject(Stages, Kind::Stage, "/prod")?
        .with_dep(api_id.clone(), api_outputs.clone());
    let stage_outputs = stage.create().await?;
    let key = t.subject(ApiKeys, Kind::ApiKey, "-api-key")?;
    let key_outputs = key.create().await?;
    let key_id = key_outputs.id.clone().context("key id")?;
    let plan = t
        .subject(UsagePlans, Kind::UsagePlan, "-usage-plan")?
        .with_dep(api_id, api_outputs)
        .with_dep(stage.id.clone(), stage_outputs)
        .with_dep(key.id.clone(), key_outputs);
    Ok((plan, rest_api_id, key_id))
}

#[tokio::test]
async fn usage_plan_binds_key_converges_drift_and_deletes() -> anyhow::Result<()> {
    let t = TestStack::example().await?;
    let (plan, api_id, key_id) = usage_plan(&t).await?;
    plan.assert_absent().await?;
    let outputs = plan.create().await?;
    let plan_id = outputs.id.clone().context("plan id")?;
    let observed = plan.assert_converged().await?;
    assert_eq!(observed.outputs, outputs);
    // A dry-run plan has no dependency outputs: the API is found by name.
    let dry = Subject::new(
        UsagePlans,
        &t.aws,
        plan.id.clone(),
        plan.desired.clone(),
        plan.tags.clone(),
    );
    assert_eq!(dry.get().await?, observed);

    // Drift out of band: a plan setting, and the key unbound. Neither emulator applies numeric patches
    // like AWS: moto stores a patched `/quota/limit` as a string and ministack stores every patched value
    // as a string, which no SDK can read back. So moto drifts the throttle (which it converts), ministack
    // the description; quota patches are exercised on neither.
    let moto = t.emu.kind == EmulatorKind::Moto;
    let (op_path, value, field) = if moto {
        ("/throttle/rateLimit", "1", "throttleRateLimit")
    } else {
        ("/description", "changed by hand", "description")
    };
    t.aws
        .apigateway
        .update_usage_plan()
        .usage_plan_id(&plan_id)
        .patch_operations(patch(Op::Replace, op_path, value))
        .send()
        .await?;
    t.aws
        .apigateway
        .delete_usage_plan_key()
        .usage_plan_id(&plan_id)
        .key_id(&key_id)
        .send()
        .await?;
    let (observed, changes) = plan.assert_drift(&["apiKeyName", field]).await?;
    // One patch call, the same key re-bound (not a new one).
    let observed = plan
        .correct(
            &observed,
            &changes,
            &["CreateUsagePlanKey", "UpdateUsagePlan"],
        )
        .await?;
    let bound = t
        .aws
        .apigateway
        .get_usage_plan_keys()
        .usage_plan_id(&plan_id)
        .send()
        .await?;
    assert_eq!(
        bound
            .items()
            .iter()
            .filter_map(|k| k.id())
            .collect::<Vec<_>>(),
        [key_id.as_str()]
    );
    correct_tags(&t, &plan, &outputs.arn.clone().context("arn")?, &observed).await?;

    // ministack's generic patch replaces the `apiStages` list with the patch's string value: the stage
    // swap is exercised on moto only.
    if moto {
        t.aws
            .apigateway
            .create_deployment()
            .rest_api_id(&api_id)
            .stage_name("other")
            .send()
            .await?;
        t.aws
            .apigateway
            .update_usage_plan()
            .usage_plan_id(&plan_id)
            .patch_operations(patch(
                Op::Remove,
                "/apiStages",
                &format!("{api_id}:{}", plan.desired.stage_name),
            ))
            .patch_operations(patch(Op::Add, "/apiStages", &format!("{api_id}:other")))
            .send()
            .await?;
        let (observed, changes) = plan.assert_drift(&["stageName"]).await?;
        plan.correct(&observed, &changes, &["UpdateUsagePlan"])
            .await?;
    }
    let observed = plan.get().await?;
    plan.assert_deleted(&observed).await?;
    // The key is a resource of its own: the plan's deletion leaves it.
    let keys = t
        .aws
        .apigateway
        .get_api_keys()
        .name_query(&plan.desired.api_key_name)
        .send()
        .await?;
    assert_eq!(
        keys.items()
            .iter()
            .filter_map(|k| k.id())
            .collect::<Vec<_>>(),
        [key_id.as_str()]
    );
    Ok(())
}

#[tokio::test]
async fn rest_api_interrupted_create_is_completed_by_update() -> anyhow::Result<()> {
    use aws_sdk_apigateway::types::{EndpointConfiguration, EndpointType};
    let t = TestStack::example().await?;
    function_with_prerequisites(&t, "csv-validator").await?;
    let api = t.subject(RestApis, Kind::RestApi, "-api")?;

    // A create that stopped right after CreateRestApi: no resource, model, validator or method yet.
    t.aws
        .apigateway
        .create_rest_api()
        .name(api.name())
        .description(&api.desired.description)
        .endpoint_configuration(
            EndpointConfiguration::builder()
                .types(EndpointType::Regional)
                .build(),
        )
        .set_tags(Some(api.tags.clone().into_iter().collect()))
        .send()
        .await?;
    let observed = api.get().await?;
    let changes = api.diff(&api.desired, &api.tags, &observed);
    let tops: Vec<&str> = changes.top_fields().into_iter().collect();
    assert_eq!(
        tops,
        [
            "integration",
            "method",
            "model",
            "resourcePath",
            "validator"
        ],
        "{:?}",
        changes.diffs
    );
    api.update_with(&api.desired, &api.tags, &observed, &changes)
        .await?;
    api.assert_converged().await?;
    Ok(())
}

#[tokio::test]
async fn usage_plan_create_after_interruption_binds_the_existing_key() -> anyhow::Result<()> {
    let t = TestStack::example().await?;
    let (plan, _, key_id) = usage_plan(&t).await?;
    // A walk that stopped after the key was created: the plan does not exist, the key does (and the
    // plan's create binds it rather than making a second one).
    plan.assert_absent().await?;
    plan.create().await?;
    let keys = t
        .aws
        .apigateway
        .get_api_keys()
        .name_query(names::api_key(&t.stack.suffix))
        .send()
        .await?;
    assert_eq!(
        keys.items()
            .iter()
            .filter_map(|k| k.id())
            .collect::<Vec<_>>(),
        [key_id.as_str()],
        "one key, bound"
    );
    plan.assert_converged().await?;
    Ok(())
}

#[tokio::test]
async fn rest_api_model_and_validator_drift_is_corrected() -> anyhow::Result<()> {
    let t = TestStack::example().await?;
    let (api, _, outputs) = rest_api(&t).await?;
    let id = outputs.id.clone().context("api id")?;

    // moto does not implement UpdateModel: the model is drifted (and corrected) on ministack only.
    let moto = t.emu.kind == EmulatorKind::Moto;
    if !moto {
        t.aws
            .apigateway
            .update_model()
            .rest_api_id(&id)
            .model_name(&api.desired.model.name)
            .patch_operations(patch(Op::Replace, "/schema", r#"{"type": "object"}"#))
            .send()
            .await?;
    }
    let validators = t
        .aws
        .apigateway
        .get_request_validators()
        .rest_api_id(&id)
        .send()
        .await?;
    let validator_id = validators
        .items()
        .first()
        .and_then(|v| v.id())
        .context("validator")?
        .to_string();
    t.aws
        .apigateway
        .update_request_validator()
        .rest_api_id(&id)
        .request_validator_id(&validator_id)
        .patch_operations(patch(Op::Replace, "/validateRequestBody", "false"))
        .send()
        .await?;
    let observed = api.get().await?;
    let changes = api.diff(&api.desired, &api.tags, &observed);
    let tops: Vec<&str> = changes.top_fields().into_iter().collect();
    let expected: &[&str] = if moto {
        &["validator"]
    } else {
        &["model", "validator"]
    };
    assert_eq!(tops, expected, "{:?}", changes.diffs);
    diff_of(&changes, "validator.validateRequestBody");
    let writes: &[&str] = if moto {
        &["UpdateRequestValidator"]
    } else {
        &["UpdateModel", "UpdateRequestValidator"]
    };
    api.correct(&observed, &changes, writes).await?;
    Ok(())
}
