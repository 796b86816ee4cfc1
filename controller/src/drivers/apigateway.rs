//! API Gateway: the REST API (`POST /upload` → Lambda proxy, request validator and model, stage with
//! tracing and throttling, the Lambda invoke permission) and the usage plan with its API key.
//!
//! The API key's value is only ever put in `Outputs.secret`; it never reaches an error or a log line.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_apigateway::types::{
    ApiStage as AwsApiStage, EndpointConfiguration, EndpointType, IntegrationType, Op,
    PatchOperation, QuotaPeriodType, QuotaSettings, RestApi, ThrottleSettings, UsagePlan,
};
use serde_json::Value;

use crate::aws::{AwsError, ResultExt};
use crate::desired::{
    ApiIntegration, ApiMethod, ApiModel, ApiStage, InvokePermission, Kind, RequestValidator,
    RestApiSpec, Tags, UsagePlanSpec, OWNER_TAG,
};

use super::{
    parse_policy, tag_delta, user_tags, Changes, Ctx, Driver, Observed, Outputs, SecretValue,
};

pub struct RestApis;
pub struct UsagePlans;

fn api_resource(name: &str) -> String {
    format!("RestApi {name}")
}

fn plan_resource(name: &str) -> String {
    format!("UsagePlan {name}")
}

fn patch(op: Op, path: &str, value: Option<String>) -> PatchOperation {
    PatchOperation::builder()
        .op(op)
        .path(path)
        .set_value(value)
        .build()
}

fn replace(path: &str, value: impl ToString) -> PatchOperation {
    patch(Op::Replace, path, Some(value.to_string()))
}

fn not_found_ok<T>(result: Result<T, AwsError>) -> Result<Option<T>, AwsError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Finds a REST API by name (paginated). When several share the name, prefers the one whose ownership
/// tag is `owner` (when known), then any carrying an ownership tag, then the oldest.
async fn find_api(
    ctx: &Ctx<'_>,
    name: &str,
    owner: Option<&str>,
    resource: &str,
) -> Result<Option<RestApi>, AwsError> {
    let mut found: Vec<RestApi> = Vec::new();
    let mut position: Option<String> = None;
    loop {
        let page = ctx
            .aws
            .apigateway
            .get_rest_apis()
            .limit(500)
            .set_position(position.clone())
            .send()
            .await
            .context(resource, "apigateway:GetRestApis")?;
        found.extend(
            page.items()
                .iter()
                .filter(|a| a.name() == Some(name))
                .cloned(),
        );
        match page.position() {
            Some(next)
                if !next.is_empty()
                    && Some(next) != position.as_deref()
                    && !page.items().is_empty() =>
            {
                position = Some(next.to_string())
            }
            _ => break,
        }
    }
    let owner_tag = |a: &RestApi| a.tags().and_then(|t| t.get(OWNER_TAG)).cloned();
    found.sort_by_key(|a| {
        let tag = owner_tag(a);
        let rank = match (&tag, owner) {
            (Some(t), Some(o)) if t == o => 0,
            (Some(_), _) => 1,
            (None, _) => 2,
        };
        (rank, a.created_date().map(|d| (d.secs(), d.subsec_nanos())))
    });
    Ok(found.into_iter().next())
}

/// `method settings` keys come back as `*/*`, `/*/*`, `~1*/*`…: compare them in one form.
fn settings_key(key: &str) -> String {
    key.replace("~1", "/").trim_start_matches('/').to_string()
}

fn empty_permission() -> InvokePermission {
    InvokePermission {
        function_name: String::new(),
        statement_id: String::new(),
        principal: String::new(),
        source_arn: String::new(),
        source_account: None,
    }
}

/// Reads the statement `statement_id` of a function's resource policy back into an [`InvokePermission`]
/// (`None` when the function, its policy or the statement does not exist). In the source ARN, `api_id`
/// (when given) is replaced by the `{api_id}` pattern the spec holds.
pub(crate) async fn observe_permission(
    ctx: &Ctx<'_>,
    function: &str,
    statement_id: &str,
    api_id: Option<&str>,
    resource: &str,
) -> Result<Option<InvokePermission>, AwsError> {
    let Some(out) = not_found_ok(
        ctx.aws
            .lambda
            .get_policy()
            .function_name(function)
            .send()
            .await
            .context(resource, "lambda:GetPolicy"),
    )?
    else {
        return Ok(None);
    };
    let policy = parse_policy(out.policy().unwrap_or_default());
    let statements = match &policy["Statement"] {
        Value::Array(items) => items.clone(),
        Value::Null => vec![],
        one => vec![one.clone()],
    };
    let Some(statement) = statements.iter().find(|s| s["Sid"] == statement_id) else {
        return Ok(None);
    };
    let text = |v: &Value| v.as_str().map(str::to_string);
    let principal = match &statement["Principal"] {
        Value::Object(p) => p.get("Service").and_then(text).unwrap_or_default(),
        other => text(other).unwrap_or_default(),
    };
    let function_name = text(&statement["Resource"])
        .and_then(|arn| {
            arn.split_once(":function:")
                .map(|(_, rest)| rest.split(':').next().unwrap_or(rest).to_string())
        })
        .unwrap_or_default();
    let condition = &statement["Condition"];
    let mut source_arn = text(&condition["ArnLike"]["AWS:SourceArn"])
        .or_else(|| text(&condition["ArnEquals"]["AWS:SourceArn"]))
        .unwrap_or_default();
    if let Some(id) = api_id {
        source_arn = source_arn.replacen(&format!(":{id}/"), ":{api_id}/", 1);
    }
    Ok(Some(InvokePermission {
        function_name,
        statement_id: text(&statement["Sid"]).unwrap_or_default(),
        principal,
        source_arn,
        source_account: text(&condition["StringEquals"]["AWS:SourceAccount"]),
    }))
}

/// Removes a statement from a function's policy (absent is fine), then adds it as desired.
pub(crate) async fn replace_permission(
    ctx: &Ctx<'_>,
    permission: &InvokePermission,
    api_id: &str,
    resource: &str,
) -> Result<(), AwsError> {
    remove_permission(ctx, permission, resource).await?;
    ctx.aws
        .lambda
        .add_permission()
        .function_name(&permission.function_name)
        .statement_id(&permission.statement_id)
        .action("lambda:InvokeFunction")
        .principal(&permission.principal)
        .source_arn(permission.source_arn.replace("{api_id}", api_id))
        .set_source_account(permission.source_account.clone())
        .send()
        .await
        .context(resource, "lambda:AddPermission")?;
    Ok(())
}

async fn remove_permission(
    ctx: &Ctx<'_>,
    permission: &InvokePermission,
    resource: &str,
) -> Result<(), AwsError> {
    not_found_ok(
        ctx.aws
            .lambda
            .remove_permission()
            .function_name(&permission.function_name)
            .statement_id(&permission.statement_id)
            .send()
            .await
            .context(resource, "lambda:RemovePermission"),
    )?;
    Ok(())
}

impl RestApis {
    fn arn(ctx: &Ctx<'_>, id: &str) -> String {
        format!(
            "arn:{}:apigateway:{}::/restapis/{id}",
            ctx.aws.partition, ctx.aws.region
        )
    }

    fn outputs(ctx: &Ctx<'_>, id: &str, desired: &RestApiSpec) -> Outputs {
        Outputs {
            arn: Some(Self::arn(ctx, id)),
            id: Some(id.to_string()),
            url: Some(format!(
                "https://{id}.execute-api.{}.amazonaws.com/{}{}",
                ctx.aws.region, desired.stage.name, desired.resource_path
            )),
            ..Default::default()
        }
    }

    /// The resource ids of the root and of `path` (when it exists).
    async fn resources(
        ctx: &Ctx<'_>,
        name: &str,
        api_id: &str,
        path: &str,
    ) -> Result<(Option<String>, Option<String>), AwsError> {
        let (mut root, mut found) = (None, None);
        let mut position: Option<String> = None;
        loop {
            let page = ctx
                .aws
                .apigateway
                .get_resources()
                .rest_api_id(api_id)
                .limit(500)
                .set_position(position.clone())
                .send()
                .await
                .context(api_resource(name), "apigateway:GetResources")?;
            for r in page.items() {
                if r.path() == Some("/") {
                    root = r.id().map(str::to_string);
                }
                if r.path() == Some(path) {
                    found = r.id().map(str::to_string);
                }
            }
            match page.position() {
                Some(next)
                    if !next.is_empty()
                        && Some(next) != position.as_deref()
                        && !page.items().is_empty() =>
                {
                    position = Some(next.to_string())
                }
                _ => break,
            }
        }
        Ok((root, found))
    }

    /// Creates `path` (one level under the root: `/upload`) unless it exists; returns its id.
    async fn ensure_resource(
        ctx: &Ctx<'_>,
        name: &str,
        api_id: &str,
        path: &str,
    ) -> Result<(String, bool), AwsError> {
        let (root, found) = Self::resources(ctx, name, api_id, path).await?;
        if let Some(id) = found {
            return Ok((id, false));
        }
        let root = root.ok_or_else(|| {
            AwsError::terminal(
                api_resource(name),
                "apigateway:GetResources",
                "the API has no root resource",
            )
        })?;
        let created = ctx
            .aws
            .apigateway
            .create_resource()
            .rest_api_id(api_id)
            .parent_id(root)
            .path_part(path.trim_start_matches('/'))
            .send()
            .await
            .context(api_resource(name), "apigateway:CreateResource")?;
        let id = created.id().ok_or_else(|| {
            AwsError::terminal(
                api_resource(name),
                "apigateway:CreateResource",
                "no resource id in the answer",
            )
        })?;
        Ok((id.to_string(), true))
    }

    async fn create_model(
        ctx: &Ctx<'_>,
        name: &str,
        api_id: &str,
        model: &ApiModel,
    ) -> Result<(), AwsError> {
        ctx.aws
            .apigateway
            .create_model()
            .rest_api_id(api_id)
            .name(&model.name)
            .content_type(&model.content_type)
            .schema(model.schema.to_string())
            .send()
            .await
            .context(api_resource(name), "apigateway:CreateModel")?;
        Ok(())
    }

    /// The id of the validator named as desired, created if missing, flags corrected if they differ.
    async fn ensure_validator(
        ctx: &Ctx<'_>,
        name: &str,
        api_id: &str,
        desired: &RequestValidator,
    ) -> Result<String, AwsError> {
        let list = ctx
            .aws
            .apigateway
            .get_request_validators()
            .rest_api_id(api_id)
            .limit(500)
            .send()
            .await
            .context(api_resource(name), "apigateway:GetRequestValidators")?;
        if let Some(v) = list
            .items()
            .iter()
            .find(|v| v.name() == Some(desired.name.as_str()))
        {
            let id = v.id().unwrap_or_default().to_string();
            let mut ops = Vec::new();
            if v.validate_request_body() != desired.validate_request_body {
                ops.push(replace(
                    "/validateRequestBody",
                    desired.validate_request_body,
                ));
            }
            if v.validate_request_parameters() != desired.validate_request_parameters {
                ops.push(replace(
                    "/validateRequestParameters",
                    desired.validate_request_parameters,
                ));
            }
            if !ops.is_empty() {
                ctx.aws
                    .apigateway
                    .update_request_validator()
                    .rest_api_id(api_id)
                    .request_validator_id(&id)
                    .set_patch_operations(Some(ops))
                    .send()
                    .await
                    .context(api_resource(name), "apigateway:UpdateRequestValidator")?;
            }
            return Ok(id);
        }
        let created = ctx
            .aws
            .apigateway
            .create_request_validator()
            .rest_api_id(api_id)
            .name(&desired.name)
            .validate_request_body(desired.validate_request_body)
            .validate_request_parameters(desired.validate_request_parameters)
            .send()
            .await
            .context(api_resource(name), "apigateway:CreateRequestValidator")?;
        Ok(created.id().unwrap_or_default().to_string())
    }

    async fn put_method(
        ctx: &Ctx<'_>,
        name: &str,
        api_id: &str,
        resource_id: &str,
        validator_id: &str,
        method: &ApiMethod,
    ) -> Result<(), AwsError> {
        ctx.aws
            .apigateway
            .put_method()
            .rest_api_id(api_id)
            .resource_id(resource_id)
            .http_method(&method.http_method)
            .authorization_type(&method.authorization_type)
            .api_key_required(method.api_key_required)
            .request_validator_id(validator_id)
            .set_request_parameters(Some(
                method.request_parameters.clone().into_iter().collect(),
            ))
            .set_request_models(Some(method.request_models.clone().into_iter().collect()))
            .send()
            .await
            .context(api_resource(name), "apigateway:PutMethod")?;
        Ok(())
    }

    async fn put_integration(
        ctx: &Ctx<'_>,
        name: &str,
        api_id: &str,
        resource_id: &str,
        desired: &RestApiSpec,
    ) -> Result<(), AwsError> {
        ctx.aws
            .apigateway
            .put_integration()
            .rest_api_id(api_id)
            .resource_id(resource_id)
            .http_method(&desired.method.http_method)
            .r#type(IntegrationType::from(
                desired.integration.integration_type.as_str(),
            ))
            .integration_http_method(&desired.integration.integration_http_method)
            .uri(&desired.integration.uri)
            .send()
            .await
            .context(api_resource(name), "apigateway:PutIntegration")?;
        Ok(())
    }

    async fn deploy(ctx: &Ctx<'_>, name: &str, api_id: &str, stage: &str) -> Result<(), AwsError> {
        ctx.aws
            .apigateway
            .create_deployment()
            .rest_api_id(api_id)
            .stage_name(stage)
            .send()
            .await
            .context(api_resource(name), "apigateway:CreateDeployment")?;
        Ok(())
    }

    /// Tracing and `*/*` throttling of a stage.
    fn stage_settings(stage: &ApiStage) -> Vec<PatchOperation> {
        vec![
            replace("/tracingEnabled", stage.tracing_enabled),
            replace("/*/*/throttling/rateLimit", stage.throttle_rate_limit),
            replace("/*/*/throttling/burstLimit", stage.throttle_burst_limit),
        ]
    }

    /// Tracing and `*/*` throttling of the stage, in one call.
    async fn configure_stage(
        ctx: &Ctx<'_>,
        name: &str,
        api_id: &str,
        stage: &ApiStage,
    ) -> Result<(), AwsError> {
        ctx.aws
            .apigateway
            .update_stage()
            .rest_api_id(api_id)
            .stage_name(&stage.name)
            .set_patch_operations(Some(Self::stage_settings(stage)))
            .send()
            .await
            .context(api_resource(name), "apigateway:UpdateStage")?;
        Ok(())
    }

    async fn observe_method(
        ctx: &Ctx<'_>,
        name: &str,
        api_id: &str,
        resource_id: &str,
        desired: &RestApiSpec,
    ) -> Result<(ApiMethod, ApiIntegration, RequestValidator), AwsError> {
        let (mut method, mut integration, mut validator) = missing_method();
        let Some(m) = not_found_ok(
            ctx.aws
                .apigateway
                .get_method()
                .rest_api_id(api_id)
                .resource_id(resource_id)
                .http_method(&desired.method.http_method)
                .send()
                .await
                .context(api_resource(name), "apigateway:GetMethod"),
        )?
        else {
            return Ok((method, integration, validator));
        };
        method = ApiMethod {
            http_method: m
                .http_method()
                .unwrap_or(&desired.method.http_method)
                .to_string(),
            authorization_type: m.authorization_type().unwrap_or_default().to_string(),
            api_key_required: m.api_key_required().unwrap_or(false),
            request_parameters: m
                .request_parameters()
                .map(|p| p.iter().map(|(k, v)| (k.clone(), *v)).collect())
                .unwrap_or_default(),
            request_models: m
                .request_models()
                .map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
        };
        if let Some(i) = m.method_integration() {
            integration = ApiIntegration {
                integration_type: i
                    .r#type()
                    .map(|t| t.as_str().to_string())
                    .unwrap_or_default(),
                integration_http_method: i.http_method().unwrap_or_default().to_string(),
                uri: i.uri().unwrap_or_default().to_string(),
            };
        }
        if let Some(id) = m.request_validator_id().filter(|id| !id.is_empty()) {
            if let Some(v) = not_found_ok(
                ctx.aws
                    .apigateway
                    .get_request_validator()
                    .rest_api_id(api_id)
                    .request_validator_id(id)
                    .send()
                    .await
                    .context(api_resource(name), "apigateway:GetRequestValidator"),
            )? {
                validator = RequestValidator {
                    name: v.name().unwrap_or_default().to_string(),
                    validate_request_body: v.validate_request_body(),
                    validate_request_parameters: v.validate_request_parameters(),
                };
            }
        }
        Ok((method, integration, validator))
    }
}

impl Driver for RestApis {
    type Spec = RestApiSpec;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &RestApiSpec,
    ) -> Result<Option<Observed<RestApiSpec>>, AwsError> {
        let Some(api) = find_api(ctx, name, None, &api_resource(name)).await? else {
            return Ok(None);
        };
        let api_id = api
            .id()
            .ok_or_else(|| {
                AwsError::terminal(
                    api_resource(name),
                    "apigateway:GetRestApis",
                    "an API without an id",
                )
            })?
            .to_string();
        let (_, resource_id) = Self::resources(ctx, name, &api_id, &desired.resource_path).await?;
        let (method, integration, validator) = match &resource_id {
            Some(resource_id) => {
                Self::observe_method(ctx, name, &api_id, resource_id, desired).await?
            }
            None => missing_method(),
        };
        let model = match not_found_ok(
            ctx.aws
                .apigateway
                .get_model()
                .rest_api_id(&api_id)
                .model_name(&desired.model.name)
                .send()
                .await
                .context(api_resource(name), "apigateway:GetModel"),
        )? {
            Some(m) => ApiModel {
                name: m.name().unwrap_or_default().to_string(),
                content_type: m.content_type().unwrap_or_default().to_string(),
                schema: m
                    .schema()
                    .map(|s| {
                        serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
                    })
                    .unwrap_or(Value::Null),
            },
            None => ApiModel {
                name: String::new(),
                content_type: String::new(),
                schema: Value::Null,
            },
        };
        let stage = match not_found_ok(
            ctx.aws
                .apigateway
                .get_stage()
                .rest_api_id(&api_id)
                .stage_name(&desired.stage.name)
                .send()
                .await
                .context(api_resource(name), "apigateway:GetStage"),
        )? {
            Some(s) => {
                let all = s.method_settings().and_then(|m| {
                    m.iter()
                        .find(|(k, _)| settings_key(k) == "*/*")
                        .map(|(_, v)| v)
                });
                ApiStage {
                    name: s.stage_name().unwrap_or_default().to_string(),
                    tracing_enabled: s.tracing_enabled(),
                    throttle_rate_limit: all.map_or(0.0, |m| m.throttling_rate_limit()),
                    throttle_burst_limit: all.map_or(0, |m| m.throttling_burst_limit()),
                }
            }
            None => ApiStage {
                name: String::new(),
                tracing_enabled: false,
                throttle_rate_limit: 0.0,
                throttle_burst_limit: 0,
            },
        };
        let invoke_permission = observe_permission(
            ctx,
            &desired.invoke_permission.function_name,
            &desired.invoke_permission.statement_id,
            Some(&api_id),
            &api_resource(name),
        )
        .await?
        .unwrap_or_else(empty_permission);
        let spec = RestApiSpec {
            description: api.description().unwrap_or_default().to_string(),
            endpoint_type: api
                .endpoint_configuration()
                .and_then(|e| e.types().first())
                .map_or("EDGE", |t| t.as_str())
                .to_string(),
            resource_path: if resource_id.is_some() {
                desired.resource_path.clone()
            } else {
                String::new()
            },
            method,
            integration,
            validator,
            model,
            stage,
            invoke_permission,
        };
        Ok(Some(Observed {
            spec,
            tags: user_tags(api.tags().cloned().unwrap_or_default()),
            outputs: Self::outputs(ctx, &api_id, desired),
        }))
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &RestApiSpec,
        tags: &Tags,
    ) -> Result<Outputs, AwsError> {
        let api = ctx
            .aws
            .apigateway
            .create_rest_api()
            .name(name)
            .description(&desired.description)
            .endpoint_configuration(
                EndpointConfiguration::builder()
                    .types(EndpointType::from(desired.endpoint_type.as_str()))
                    .build(),
            )
            .set_tags(Some(tags.clone().into_iter().collect()))
            .send()
            .await
            .context(api_resource(name), "apigateway:CreateRestApi")?;
        let api_id = api
            .id()
            .ok_or_else(|| {
                AwsError::terminal(
                    api_resource(name),
                    "apigateway:CreateRestApi",
                    "no API id in the answer",
                )
            })?
            .to_string();
        let (resource_id, _) =
            Self::ensure_resource(ctx, name, &api_id, &desired.resource_path).await?;
        Self::create_model(ctx, name, &api_id, &desired.model).await?;
        let validator_id = Self::ensure_validator(ctx, name, &api_id, &desired.validator).await?;
        Self::put_method(
            ctx,
            name,
            &api_id,
            &resource_id,
            &validator_id,
            &desired.method,
        )
        .await?;
        Self::put_integration(ctx, name, &api_id, &resource_id, desired).await?;
        replace_permission(
            ctx,
            &desired.invoke_permission,
            &api_id,
            &api_resource(name),
        )
        .await?;
        Self::deploy(ctx, name, &api_id, &desired.stage.name).await?;
        Self::configure_stage(ctx, name, &api_id, &desired.stage).await?;
        Ok(Self::outputs(ctx, &api_id, desired))
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &RestApiSpec,
        tags: &Tags,
        observed: &Observed<RestApiSpec>,
        changes: &Changes,
    ) -> Result<Outputs, AwsError> {
        let api_id = observed.outputs.id.clone().ok_or_else(|| {
            AwsError::terminal(
                api_resource(name),
                "apigateway:UpdateRestApi",
                "the observed API has no id",
            )
        })?;
        let mut ops = Vec::new();
        if changes.touches("description") {
            ops.push(replace("/description", &desired.description));
        }
        if changes.touches("endpointType") {
            ops.push(patch(
                Op::Replace,
                &format!(
                    "/endpointConfiguration/types/{}",
                    observed.spec.endpoint_type
                ),
                Some(desired.endpoint_type.clone()),
            ));
        }
        if !ops.is_empty() {
            ctx.aws
                .apigateway
                .update_rest_api()
                .rest_api_id(&api_id)
                .set_patch_operations(Some(ops))
                .send()
                .await
                .context(api_resource(name), "apigateway:UpdateRestApi")?;
        }
        if changes.touches("model") {
            if observed.spec.model.name.is_empty() {
                Self::create_model(ctx, name, &api_id, &desired.model).await?;
            } else if observed.spec.model.content_type != desired.model.content_type {
                // The content type of a model cannot be patched: replace the model.
                not_found_ok(
                    ctx.aws
                        .apigateway
                        .delete_model()
                        .rest_api_id(&api_id)
                        .model_name(&desired.model.name)
                        .send()
                        .await
                        .context(api_resource(name), "apigateway:DeleteModel"),
                )?;
                Self::create_model(ctx, name, &api_id, &desired.model).await?;
            } else {
                ctx.aws
                    .apigateway
                    .update_model()
                    .rest_api_id(&api_id)
                    .model_name(&desired.model.name)
                    .patch_operations(replace("/schema", desired.model.schema.to_string()))
                    .send()
                    .await
                    .context(api_resource(name), "apigateway:UpdateModel")?;
            }
        }
        let method_parts = ["resourcePath", "method", "validator", "integration"];
        if changes.touches_any(&method_parts) {
            let (resource_id, created) =
                Self::ensure_resource(ctx, name, &api_id, &desired.resource_path).await?;
            let validator_id =
                Self::ensure_validator(ctx, name, &api_id, &desired.validator).await?;
            // The method is re-put when it differs, is missing, or points at another validator.
            let method_differs = created
                || changes.touches_any(&["resourcePath", "method"])
                || observed.spec.validator.name != desired.validator.name;
            if method_differs {
                not_found_ok(
                    ctx.aws
                        .apigateway
                        .delete_method()
                        .rest_api_id(&api_id)
                        .resource_id(&resource_id)
                        .http_method(&desired.method.http_method)
                        .send()
                        .await
                        .context(api_resource(name), "apigateway:DeleteMethod"),
                )?;
                Self::put_method(
                    ctx,
                    name,
                    &api_id,
                    &resource_id,
                    &validator_id,
                    &desired.method,
                )
                .await?;
            }
            if method_differs || changes.touches("integration") {
                Self::put_integration(ctx, name, &api_id, &resource_id, desired).await?;
            }
        }
        // Models, validators, methods and integrations reach clients only through a deployment.
        let redeploy = changes.touches_any(&method_parts) || changes.touches("model");
        // A change goes live with a new deployment. An existing stage is pointed at it (its settings stay
        // as they are); a missing stage is created by the deployment.
        let stage_exists = observed.spec.stage.name == desired.stage.name;
        let mut stage_ops = Vec::new();
        if !stage_exists {
            Self::deploy(ctx, name, &api_id, &desired.stage.name).await?;
        } else if redeploy {
            let deployment = ctx
                .aws
                .apigateway
                .create_deployment()
                .rest_api_id(&api_id)
                .description(format!(
                    "tap: {}",
                    changes
                        .top_fields()
                        .into_iter()
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .send()
                .await
                .context(api_resource(name), "apigateway:CreateDeployment")?;
            let id = deployment.id().ok_or_else(|| {
                AwsError::terminal(
                    api_resource(name),
                    "apigateway:CreateDeployment",
                    "no deployment id in the answer",
                )
            })?;
            stage_ops.push(replace("/deploymentId", id));
        }
        if changes.touches("stage") {
            stage_ops.extend(Self::stage_settings(&desired.stage));
        }
        if !stage_ops.is_empty() {
            ctx.aws
                .apigateway
                .update_stage()
                .rest_api_id(&api_id)
                .stage_name(&desired.stage.name)
                .set_patch_operations(Some(stage_ops))
                .send()
                .await
                .context(api_resource(name), "apigateway:UpdateStage")?;
        }
        if changes.touches("invokePermission") {
            if !observed.spec.invoke_permission.function_name.is_empty()
                && observed.spec.invoke_permission.function_name
                    != desired.invoke_permission.function_name
            {
                remove_permission(ctx, &observed.spec.invoke_permission, &api_resource(name))
                    .await?;
            }
            replace_permission(
                ctx,
                &desired.invoke_permission,
                &api_id,
                &api_resource(name),
            )
            .await?;
        }
        if changes.touches("tags") {
            let arn = Self::arn(ctx, &api_id);
            tag_api_gateway(ctx, &arn, tags, &observed.tags, &api_resource(name)).await?;
        }
        Ok(Self::outputs(ctx, &api_id, desired))
    }

    async fn delete(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        observed: &Observed<RestApiSpec>,
    ) -> Result<(), AwsError> {
        if let Some(api_id) = &observed.outputs.id {
            // Looked up first: deleting an API that is already gone is success, whatever the service answers.
            let exists = not_found_ok(
                ctx.aws
                    .apigateway
                    .get_rest_api()
                    .rest_api_id(api_id)
                    .send()
                    .await
                    .context(api_resource(name), "apigateway:GetRestApi"),
            )?
            .is_some();
            if exists {
                not_found_ok(
                    ctx.aws
                        .apigateway
                        .delete_rest_api()
                        .rest_api_id(api_id)
                        .send()
                        .await
                        .context(api_resource(name), "apigateway:DeleteRestApi"),
                )?;
            }
        }
        if !observed.spec.invoke_permission.function_name.is_empty() {
            match remove_permission(ctx, &observed.spec.invoke_permission, &api_resource(name))
                .await
            {
                // The function may be gone already.
                Err(e) if e.is_not_found() => {}
                other => other?,
            }
        }
        Ok(())
    }
}

/// What a method, its integration and validator observe as when they do not exist.
fn missing_method() -> (ApiMethod, ApiIntegration, RequestValidator) {
    (
        ApiMethod {
            http_method: String::new(),
            authorization_type: String::new(),
            api_key_required: false,
            request_parameters: BTreeMap::new(),
            request_models: BTreeMap::new(),
        },
        ApiIntegration {
            integration_type: String::new(),
            integration_http_method: String::new(),
            uri: String::new(),
        },
        RequestValidator {
            name: String::new(),
            validate_request_body: false,
            validate_request_parameters: false,
        },
    )
}

async fn tag_api_gateway(
    ctx: &Ctx<'_>,
    arn: &str,
    desired: &Tags,
    observed: &Tags,
    resource: &str,
) -> Result<(), AwsError> {
    let (set, remove) = tag_delta(desired, observed);
    if !set.is_empty() {
        ctx.aws
            .apigateway
            .tag_resource()
            .resource_arn(arn)
            .set_tags(Some(set.into_iter().collect()))
            .send()
            .await
            .context(resource, "apigateway:TagResource")?;
    }
    if !remove.is_empty() {
        ctx.aws
            .apigateway
            .untag_resource()
            .resource_arn(arn)
            .set_tag_keys(Some(remove))
            .send()
            .await
            .context(resource, "apigateway:UntagResource")?;
    }
    Ok(())
}

// ---------------------------------------------------------------- usage plans

impl UsagePlans {
    fn arn(ctx: &Ctx<'_>, id: &str) -> String {
        format!(
            "arn:{}:apigateway:{}::/usageplans/{id}",
            ctx.aws.partition, ctx.aws.region
        )
    }

    async fn find_plan(ctx: &Ctx<'_>, name: &str) -> Result<Option<UsagePlan>, AwsError> {
        let mut position: Option<String> = None;
        loop {
            let page = ctx
                .aws
                .apigateway
                .get_usage_plans()
                .limit(500)
                .set_position(position.clone())
                .send()
                .await
                .context(plan_resource(name), "apigateway:GetUsagePlans")?;
            if let Some(plan) = page.items().iter().find(|p| p.name() == Some(name)) {
                return Ok(Some(plan.clone()));
            }
            match page.position() {
                Some(next)
                    if !next.is_empty()
                        && Some(next) != position.as_deref()
                        && !page.items().is_empty() =>
                {
                    position = Some(next.to_string())
                }
                _ => return Ok(None),
            }
        }
    }

    /// The id of the API key named `key_name` (exact name match), if it exists.
    async fn find_key(
        ctx: &Ctx<'_>,
        name: &str,
        key_name: &str,
    ) -> Result<Option<String>, AwsError> {
        let mut position: Option<String> = None;
        loop {
            let page = ctx
                .aws
                .apigateway
                .get_api_keys()
                .name_query(key_name)
                .include_values(false)
                .limit(500)
                .set_position(position.clone())
                .send()
                .await
                .context(plan_resource(name), "apigateway:GetApiKeys")?;
            if let Some(key) = page.items().iter().find(|k| k.name() == Some(key_name)) {
                return Ok(key.id().map(str::to_string));
            }
            match page.position() {
                Some(next)
                    if !next.is_empty()
                        && Some(next) != position.as_deref()
                        && !page.items().is_empty() =>
                {
                    position = Some(next.to_string())
                }
                _ => return Ok(None),
            }
        }
    }

    /// The REST API's id: from the dependency's outputs, else looked up by name (a dry-run plan).
    async fn api_id(ctx: &Ctx<'_>, name: &str, api_name: &str) -> Result<Option<String>, AwsError> {
        if let Some(id) = ctx.dep(Kind::RestApi, api_name).and_then(|o| o.id.clone()) {
            return Ok(Some(id));
        }
        Ok(find_api(ctx, api_name, None, &plan_resource(name))
            .await?
            .and_then(|a| a.id().map(str::to_string)))
    }

    async fn require_api_id(ctx: &Ctx<'_>, name: &str, api_name: &str) -> Result<String, AwsError> {
        Self::api_id(ctx, name, api_name).await?.ok_or_else(|| {
            AwsError::transient(
                plan_resource(name),
                "apigateway:GetRestApis",
                format!("REST API {api_name} does not exist yet"),
            )
        })
    }

    /// The key named as desired (created enabled and tagged if missing): its id and, when just
    /// created, its value.
    async fn ensure_key(
        ctx: &Ctx<'_>,
        name: &str,
        key_name: &str,
        tags: &Tags,
    ) -> Result<(String, Option<SecretValue>), AwsError> {
        if let Some(id) = Self::find_key(ctx, name, key_name).await? {
            return Ok((id, None));
        }
        let key = ctx
            .aws
            .apigateway
            .create_api_key()
            .name(key_name)
            .enabled(true)
            .set_tags(Some(tags.clone().into_iter().collect()))
            .send()
            .await
            .context(plan_resource(name), "apigateway:CreateApiKey")?;
        let id = key.id().ok_or_else(|| {
            AwsError::terminal(
                plan_resource(name),
                "apigateway:CreateApiKey",
                "no key id in the answer",
            )
        })?;
        Ok((
            id.to_string(),
            key.value().map(|v| SecretValue(v.to_string())),
        ))
    }

    async fn bind_key(
        ctx: &Ctx<'_>,
        name: &str,
        plan_id: &str,
        key_id: &str,
    ) -> Result<(), AwsError> {
        ctx.aws
            .apigateway
            .create_usage_plan_key()
            .usage_plan_id(plan_id)
            .key_id(key_id)
            .key_type("API_KEY")
            .send()
            .await
            .context(plan_resource(name), "apigateway:CreateUsagePlanKey")?;
        Ok(())
    }

    /// The value of a key, for `Outputs.secret` only.
    async fn key_value(
        ctx: &Ctx<'_>,
        name: &str,
        key_id: &str,
    ) -> Result<Option<SecretValue>, AwsError> {
        let key = not_found_ok(
            ctx.aws
                .apigateway
                .get_api_key()
                .api_key(key_id)
                .include_value(true)
                .send()
                .await
                .context(plan_resource(name), "apigateway:GetApiKey"),
        )?;
        Ok(key.and_then(|k| k.value().map(|v| SecretValue(v.to_string()))))
    }

    fn outputs(
        ctx: &Ctx<'_>,
        plan_id: &str,
        key_id: Option<&str>,
        secret: Option<SecretValue>,
    ) -> Outputs {
        Outputs {
            arn: Some(Self::arn(ctx, plan_id)),
            id: Some(plan_id.to_string()),
            extra: key_id
                .map(|k| BTreeMap::from([("apiKeyId".to_string(), k.to_string())]))
                .unwrap_or_default(),
            secret,
            ..Default::default()
        }
    }
}

impl Driver for UsagePlans {
    type Spec = UsagePlanSpec;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &UsagePlanSpec,
    ) -> Result<Option<Observed<UsagePlanSpec>>, AwsError> {
        let Some(plan) = Self::find_plan(ctx, name).await? else {
            return Ok(None);
        };
        let plan_id = plan
            .id()
            .ok_or_else(|| {
                AwsError::terminal(
                    plan_resource(name),
                    "apigateway:GetUsagePlans",
                    "a plan without an id",
                )
            })?
            .to_string();
        // The stage the plan covers (the one desired, when the plan covers several), its API id mapped back
        // to the API's name.
        let stages = plan.api_stages();
        let desired_api_id = Self::api_id(ctx, name, &desired.rest_api_name).await?;
        let stage = stages
            .iter()
            .find(|s| {
                s.api_id() == desired_api_id.as_deref()
                    && s.stage() == Some(desired.stage_name.as_str())
            })
            .or_else(|| stages.first());
        let (rest_api_name, stage_name) = match stage {
            None => (String::new(), String::new()),
            Some(s) => {
                let api_id = s.api_id().unwrap_or_default();
                let api_name = if Some(api_id) == desired_api_id.as_deref() {
                    desired.rest_api_name.clone()
                } else {
                    let api = not_found_ok(
                        ctx.aws
                            .apigateway
                            .get_rest_api()
                            .rest_api_id(api_id)
                            .send()
                            .await
                            .context(plan_resource(name), "apigateway:GetRestApi"),
                    )?;
                    api.and_then(|a| a.name().map(str::to_string))
                        .unwrap_or_else(|| api_id.to_string())
                };
                (api_name, s.stage().unwrap_or_default().to_string())
            }
        };
        let keys = ctx
            .aws
            .apigateway
            .get_usage_plan_keys()
            .usage_plan_id(&plan_id)
            .limit(500)
            .send()
            .await
            .context(plan_resource(name), "apigateway:GetUsagePlanKeys")?;
        let key = keys
            .items()
            .iter()
            .find(|k| k.name() == Some(desired.api_key_name.as_str()))
            .or_else(|| keys.items().first());
        let key_id = key.and_then(|k| k.id()).map(str::to_string);
        let secret = match &key_id {
            Some(id) => Self::key_value(ctx, name, id).await?,
            None => None,
        };
        let spec = UsagePlanSpec {
            description: plan.description().unwrap_or_default().to_string(),
            rest_api_name,
            stage_name,
            throttle_rate_limit: plan.throttle().map_or(0.0, |t| t.rate_limit()),
            throttle_burst_limit: plan.throttle().map_or(0, |t| t.burst_limit()),
            quota_limit: plan.quota().map_or(0, |q| q.limit()),
            quota_period: plan
                .quota()
                .and_then(|q| q.period())
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
            api_key_name: key.and_then(|k| k.name()).unwrap_or_default().to_string(),
        };
        Ok(Some(Observed {
            spec,
            tags: user_tags(plan.tags().cloned().unwrap_or_default()),
            outputs: Self::outputs(ctx, &plan_id, key_id.as_deref(), secret),
        }))
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &UsagePlanSpec,
        tags: &Tags,
    ) -> Result<Outputs, AwsError> {
        let api_id = Self::require_api_id(ctx, name, &desired.rest_api_name).await?;
        // A key left by an interrupted create is reused, not duplicated.
        let (key_id, secret) = Self::ensure_key(ctx, name, &desired.api_key_name, tags).await?;
        let plan = ctx
            .aws
            .apigateway
            .create_usage_plan()
            .name(name)
            .description(&desired.description)
            .api_stages(
                AwsApiStage::builder()
                    .api_id(&api_id)
                    .stage(&desired.stage_name)
                    .build(),
            )
            .throttle(
                ThrottleSettings::builder()
                    .rate_limit(desired.throttle_rate_limit)
                    .burst_limit(desired.throttle_burst_limit)
                    .build(),
            )
            .quota(
                QuotaSettings::builder()
                    .limit(desired.quota_limit)
                    .period(QuotaPeriodType::from(desired.quota_period.as_str()))
                    .build(),
            )
            .set_tags(Some(tags.clone().into_iter().collect::<HashMap<_, _>>()))
            .send()
            .await
            .context(plan_resource(name), "apigateway:CreateUsagePlan")?;
        let plan_id = plan
            .id()
            .ok_or_else(|| {
                AwsError::terminal(
                    plan_resource(name),
                    "apigateway:CreateUsagePlan",
                    "no plan id in the answer",
                )
            })?
            .to_string();
        Self::bind_key(ctx, name, &plan_id, &key_id).await?;
        let secret = match secret {
            Some(s) => Some(s),
            None => Self::key_value(ctx, name, &key_id).await?,
        };
        Ok(Self::outputs(ctx, &plan_id, Some(&key_id), secret))
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &UsagePlanSpec,
        tags: &Tags,
        observed: &Observed<UsagePlanSpec>,
        changes: &Changes,
    ) -> Result<Outputs, AwsError> {
        let plan_id = observed.outputs.id.clone().ok_or_else(|| {
            AwsError::terminal(
                plan_resource(name),
                "apigateway:UpdateUsagePlan",
                "the observed plan has no id",
            )
        })?;
        let mut ops = Vec::new();
        if changes.touches("description") {
            ops.push(replace("/description", &desired.description));
        }
        if changes.touches("throttleRateLimit") {
            ops.push(replace("/throttle/rateLimit", desired.throttle_rate_limit));
        }
        if changes.touches("throttleBurstLimit") {
            ops.push(replace(
                "/throttle/burstLimit",
                desired.throttle_burst_limit,
            ));
        }
        if changes.touches("quotaLimit") {
            ops.push(replace("/quota/limit", desired.quota_limit));
        }
        if changes.touches("quotaPeriod") {
            ops.push(replace("/quota/period", &desired.quota_period));
        }
        if changes.touches_any(&["restApiName", "stageName"]) {
            let api_id = Self::require_api_id(ctx, name, &desired.rest_api_name).await?;
            let wanted = format!("{api_id}:{}", desired.stage_name);
            let current = ctx
                .aws
                .apigateway
                .get_usage_plan()
                .usage_plan_id(&plan_id)
                .send()
                .await
                .context(plan_resource(name), "apigateway:GetUsagePlan")?;
            let mut present = false;
            for s in current.api_stages() {
                let stage = format!(
                    "{}:{}",
                    s.api_id().unwrap_or_default(),
                    s.stage().unwrap_or_default()
                );
                if stage == wanted {
                    present = true;
                } else {
                    ops.push(patch(Op::Remove, "/apiStages", Some(stage)));
                }
            }
            if !present {
                ops.push(patch(Op::Add, "/apiStages", Some(wanted)));
            }
        }
        if !ops.is_empty() {
            ctx.aws
                .apigateway
                .update_usage_plan()
                .usage_plan_id(&plan_id)
                .set_patch_operations(Some(ops))
                .send()
                .await
                .context(plan_resource(name), "apigateway:UpdateUsagePlan")?;
        }
        let mut key_id = observed.outputs.extra.get("apiKeyId").cloned();
        let mut secret = observed.outputs.secret.clone();
        if changes.touches("apiKeyName") {
            let (id, created_secret) =
                Self::ensure_key(ctx, name, &desired.api_key_name, tags).await?;
            if let Some(old) = key_id.as_deref().filter(|old| *old != id) {
                not_found_ok(
                    ctx.aws
                        .apigateway
                        .delete_usage_plan_key()
                        .usage_plan_id(&plan_id)
                        .key_id(old)
                        .send()
                        .await
                        .context(plan_resource(name), "apigateway:DeleteUsagePlanKey"),
                )?;
            }
            if key_id.as_deref() != Some(id.as_str()) {
                Self::bind_key(ctx, name, &plan_id, &id).await?;
            }
            secret = match created_secret {
                Some(s) => Some(s),
                None => Self::key_value(ctx, name, &id).await?,
            };
            key_id = Some(id);
        }
        if changes.touches("tags") {
            tag_api_gateway(
                ctx,
                &Self::arn(ctx, &plan_id),
                tags,
                &observed.tags,
                &plan_resource(name),
            )
            .await?;
        }
        Ok(Self::outputs(ctx, &plan_id, key_id.as_deref(), secret))
    }

    async fn delete(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        observed: &Observed<UsagePlanSpec>,
    ) -> Result<(), AwsError> {
        if let Some(plan_id) = &observed.outputs.id {
            // AWS refuses to delete a plan still associated with API stages: detach them first.
            if let Some(plan) = not_found_ok(
                ctx.aws
                    .apigateway
                    .get_usage_plan()
                    .usage_plan_id(plan_id)
                    .send()
                    .await
                    .context(plan_resource(name), "apigateway:GetUsagePlan"),
            )? {
                let ops: Vec<PatchOperation> = plan
                    .api_stages()
                    .iter()
                    .map(|s| {
                        let stage = format!(
                            "{}:{}",
                            s.api_id().unwrap_or_default(),
                            s.stage().unwrap_or_default()
                        );
                        patch(Op::Remove, "/apiStages", Some(stage))
                    })
                    .collect();
                if !ops.is_empty() {
                    not_found_ok(
                        ctx.aws
                            .apigateway
                            .update_usage_plan()
                            .usage_plan_id(plan_id)
                            .set_patch_operations(Some(ops))
                            .send()
                            .await
                            .context(plan_resource(name), "apigateway:UpdateUsagePlan"),
                    )?;
                }
                not_found_ok(
                    ctx.aws
                        .apigateway
                        .delete_usage_plan()
                        .usage_plan_id(plan_id)
                        .send()
                        .await
                        .context(plan_resource(name), "apigateway:DeleteUsagePlan"),
                )?;
            }
        }
        let key_name = &observed.spec.api_key_name;
        if !key_name.is_empty() {
            if let Some(key_id) = Self::find_key(ctx, name, key_name).await? {
                not_found_ok(
                    ctx.aws
                        .apigateway
                        .delete_api_key()
                        .api_key(&key_id)
                        .send()
                        .await
                        .context(plan_resource(name), "apigateway:DeleteApiKey"),
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_settings_keys_normalise() {
        assert_eq!(settings_key("*/*"), "*/*");
        assert_eq!(settings_key("/*/*"), "*/*");
        assert_eq!(settings_key("~1*/*"), "*/*");
        assert_eq!(settings_key("~1upload/POST"), "upload/POST");
        assert_eq!(settings_key("/upload/POST"), "upload/POST");
    }
}
