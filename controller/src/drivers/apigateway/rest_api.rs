//! The REST API: description and endpoint type, the `/upload` resource, its method (API key required,
//! request validator and model) and Lambda proxy integration. Its stage and the permission to invoke the
//! function are resources of their own; a change here reaches clients through the stage's redeployment.

use std::collections::BTreeMap;

use aws_sdk_apigateway::types::{
    EndpointConfiguration, EndpointType, IntegrationType, Method, Op, Resource,
};
use serde_json::Value;

use crate::aws::{AwsError, Optional, ResultExt};
use crate::desired::{
    ApiIntegration, ApiMethod, ApiModel, RequestValidator, RestApiSpec, Tags, OWNER_TAG,
};

use super::super::{sync_tags, user_tags, Changes, Ctx, Driver, DriverError, Observed, Outputs};
use super::{find_rest_apis, once, patch, replace, Picked, Tagging};

pub struct RestApis;

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

impl RestApis {
    fn outputs(ctx: &Ctx<'_>, api_id: &str) -> Outputs {
        Outputs {
            arn: Some(ctx.arns().apigateway(&format!("/restapis/{api_id}"))),
            id: Some(api_id.to_string()),
            ..Default::default()
        }
    }

    async fn delete_api(ctx: &Ctx<'_>, api_id: &str) -> Result<(), AwsError> {
        ctx.aws
            .apigateway
            .delete_rest_api()
            .rest_api_id(api_id)
            .send()
            .await
            .context(ctx.id, "apigateway:DeleteRestApi")
            .optional()?;
        Ok(())
    }

    /// The root's id and the resource at `path` (when it exists), each resource with its methods
    /// embedded (`embed=methods`) where the API answers them.
    async fn resources(
        ctx: &Ctx<'_>,
        api_id: &str,
        path: &str,
    ) -> Result<(Option<String>, Option<Resource>), AwsError> {
        let all: Vec<Resource> = ctx
            .aws
            .apigateway
            .get_resources()
            .rest_api_id(api_id)
            .embed("methods")
            .limit(500)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .context(ctx.id, "apigateway:GetResources")?;
        let root = all
            .iter()
            .find(|r| r.path() == Some("/"))
            .and_then(|r| r.id().map(str::to_string));
        Ok((root, all.into_iter().find(|r| r.path() == Some(path))))
    }

    /// Creates `path` (one level under the root: `/upload`) unless it exists; returns its id and whether
    /// it was created.
    async fn ensure_resource(
        ctx: &Ctx<'_>,
        api_id: &str,
        path: &str,
    ) -> Result<(String, bool), AwsError> {
        let (root, found) = Self::resources(ctx, api_id, path).await?;
        if let Some(id) = found.as_ref().and_then(Resource::id) {
            return Ok((id.to_string(), false));
        }
        let root = root.ok_or_else(|| {
            AwsError::terminal(
                ctx.id,
                "apigateway:GetResources",
                "the API has no root resource",
            )
        })?;
        Ok((Self::create_resource(ctx, api_id, &root, path).await?, true))
    }

    /// Creates `path` under the resource `root`; returns its id.
    async fn create_resource(
        ctx: &Ctx<'_>,
        api_id: &str,
        root: &str,
        path: &str,
    ) -> Result<String, AwsError> {
        let created = ctx
            .aws
            .apigateway
            .create_resource()
            .rest_api_id(api_id)
            .parent_id(root)
            .path_part(path.trim_start_matches('/'))
            .send()
            .await
            .context(ctx.id, "apigateway:CreateResource")?;
        let id = created.id().ok_or_else(|| {
            AwsError::terminal(
                ctx.id,
                "apigateway:CreateResource",
                "no resource id in the answer",
            )
        })?;
        Ok(id.to_string())
    }

    async fn create_model(ctx: &Ctx<'_>, api_id: &str, model: &ApiModel) -> Result<(), AwsError> {
        ctx.aws
            .apigateway
            .create_model()
            .rest_api_id(api_id)
            .name(&model.name)
            .content_type(&model.content_type)
            .schema(model.schema.to_string())
            .send()
            .await
            .context(ctx.id, "apigateway:CreateModel")?;
        Ok(())
    }

    /// Creates the model, or replaces what of it drifted (its content type cannot be patched: a model with
    /// another one is replaced).
    async fn converge_model(
        ctx: &Ctx<'_>,
        api_id: &str,
        desired: &ApiModel,
        observed: &ApiModel,
    ) -> Result<(), AwsError> {
        if observed.name.is_empty() {
            return Self::create_model(ctx, api_id, desired).await;
        }
        if observed.content_type != desired.content_type {
            ctx.aws
                .apigateway
                .delete_model()
                .rest_api_id(api_id)
                .model_name(&desired.name)
                .send()
                .await
                .context(ctx.id, "apigateway:DeleteModel")
                .optional()?;
            return Self::create_model(ctx, api_id, desired).await;
        }
        ctx.aws
            .apigateway
            .update_model()
            .rest_api_id(api_id)
            .model_name(&desired.name)
            .patch_operations(replace("/schema", desired.schema.to_string()))
            .send()
            .await
            .context(ctx.id, "apigateway:UpdateModel")?;
        Ok(())
    }

    /// The id of the validator named as desired, created if missing, flags corrected if they differ.
    async fn ensure_validator(
        ctx: &Ctx<'_>,
        api_id: &str,
        desired: &RequestValidator,
    ) -> Result<String, AwsError> {
        let list = Self::validators(ctx, api_id).await?;
        if let Some(v) = list
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
                    .context(ctx.id, "apigateway:UpdateRequestValidator")?;
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
            .context(ctx.id, "apigateway:CreateRequestValidator")?;
        Ok(created.id().unwrap_or_default().to_string())
    }

    /// What a REST API just created (its answer in hand) needs, with no read: it has only its root
    /// resource, no model and no validator. The model, the resource and the validator are independent and
    /// made at once; the method needs all three, its integration the method.
    async fn populate_new(
        ctx: &Ctx<'_>,
        api_id: &str,
        root: &str,
        desired: &RestApiSpec,
    ) -> Result<(), AwsError> {
        let validator = &desired.validator;
        let create_validator = async {
            let created = ctx
                .aws
                .apigateway
                .create_request_validator()
                .rest_api_id(api_id)
                .name(&validator.name)
                .validate_request_body(validator.validate_request_body)
                .validate_request_parameters(validator.validate_request_parameters)
                .send()
                .await
                .context(ctx.id, "apigateway:CreateRequestValidator")?;
            Ok::<_, AwsError>(created.id().unwrap_or_default().to_string())
        };
        let ((), resource_id, validator_id) = tokio::try_join!(
            Self::create_model(ctx, api_id, &desired.model),
            Self::create_resource(ctx, api_id, root, &desired.resource_path),
            create_validator,
        )?;
        Self::put_method(ctx, api_id, &resource_id, &validator_id, desired).await?;
        Self::put_integration(ctx, api_id, &resource_id, desired).await
    }

    /// (Re)puts the method and its integration on `resource_id`.
    async fn put_method(
        ctx: &Ctx<'_>,
        api_id: &str,
        resource_id: &str,
        validator_id: &str,
        desired: &RestApiSpec,
    ) -> Result<(), AwsError> {
        let method = &desired.method;
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
            .context(ctx.id, "apigateway:PutMethod")?;
        Ok(())
    }

    async fn put_integration(
        ctx: &Ctx<'_>,
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
            .context(ctx.id, "apigateway:PutIntegration")?;
        Ok(())
    }

    /// The method on `resource`, its integration and its validator: the method as embedded in the
    /// resources' listing when it came with its integration (AWS embeds whole methods; an answer
    /// without them, or a method without an integration, is read on its own), the validator from
    /// `validators`, listed alongside.
    async fn observe_method(
        ctx: &Ctx<'_>,
        api_id: &str,
        resource: &Resource,
        validators: &[aws_sdk_apigateway::types::RequestValidator],
        desired: &RestApiSpec,
    ) -> Result<(ApiMethod, ApiIntegration, RequestValidator), AwsError> {
        let (mut method, mut integration, mut validator) = missing_method();
        let http_method = &desired.method.http_method;
        let embedded = resource.resource_methods().map(|m| m.get(http_method));
        let found = match embedded {
            Some(Some(m)) if m.method_integration().is_some() => Some(m.clone()),
            // Listed without this method: there is none.
            Some(None) => None,
            _ => {
                let resource_id = resource.id().unwrap_or_default();
                ctx.aws
                    .apigateway
                    .get_method()
                    .rest_api_id(api_id)
                    .resource_id(resource_id)
                    .http_method(http_method)
                    .send()
                    .await
                    .context(ctx.id, "apigateway:GetMethod")
                    .optional()?
                    .map(|m| {
                        Method::builder()
                            .set_http_method(m.http_method)
                            .set_authorization_type(m.authorization_type)
                            .set_api_key_required(m.api_key_required)
                            .set_request_parameters(m.request_parameters)
                            .set_request_models(m.request_models)
                            .set_request_validator_id(m.request_validator_id)
                            .set_method_integration(m.method_integration)
                            .build()
                    })
            }
        };
        let Some(m) = found else {
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
        if let Some(v) = m
            .request_validator_id()
            .filter(|id| !id.is_empty())
            .and_then(|id| validators.iter().find(|v| v.id() == Some(id)))
        {
            validator = RequestValidator {
                name: v.name().unwrap_or_default().to_string(),
                validate_request_body: v.validate_request_body(),
                validate_request_parameters: v.validate_request_parameters(),
            };
        }
        Ok((method, integration, validator))
    }

    /// Every request validator of the API.
    async fn validators(
        ctx: &Ctx<'_>,
        api_id: &str,
    ) -> Result<Vec<aws_sdk_apigateway::types::RequestValidator>, AwsError> {
        // No paginator in the SDK for this one; an API has a handful, far below the page size.
        let page = ctx
            .aws
            .apigateway
            .get_request_validators()
            .rest_api_id(api_id)
            .limit(500)
            .send()
            .await
            .context(ctx.id, "apigateway:GetRequestValidators")?;
        Ok(page.items.unwrap_or_default())
    }

    async fn observe_model(
        ctx: &Ctx<'_>,
        api_id: &str,
        desired: &ApiModel,
    ) -> Result<ApiModel, AwsError> {
        let model = ctx
            .aws
            .apigateway
            .get_model()
            .rest_api_id(api_id)
            .model_name(&desired.name)
            .send()
            .await
            .context(ctx.id, "apigateway:GetModel")
            .optional()?;
        Ok(match model {
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
        })
    }

    /// Puts the resource, method and integration where they differ (each needs the resource's id, the
    /// method needs the validator's).
    async fn converge_method(
        ctx: &Ctx<'_>,
        api_id: &str,
        desired: &RestApiSpec,
        observed: Option<&RestApiSpec>,
    ) -> Result<(), AwsError> {
        let ((resource_id, created), validator_id) = tokio::try_join!(
            Self::ensure_resource(ctx, api_id, &desired.resource_path),
            Self::ensure_validator(ctx, api_id, &desired.validator),
        )?;
        let method_differs = created
            || observed.is_none_or(|o| {
                o.resource_path != desired.resource_path
                    || o.method != desired.method
                    || o.validator.name != desired.validator.name
            });
        if method_differs {
            if observed.is_some() && !created {
                ctx.aws
                    .apigateway
                    .delete_method()
                    .rest_api_id(api_id)
                    .resource_id(&resource_id)
                    .http_method(&desired.method.http_method)
                    .send()
                    .await
                    .context(ctx.id, "apigateway:DeleteMethod")
                    .optional()?;
            }
            Self::put_method(ctx, api_id, &resource_id, &validator_id, desired).await?;
        }
        if method_differs || observed.is_some_and(|o| o.integration != desired.integration) {
            Self::put_integration(ctx, api_id, &resource_id, desired).await?;
        }
        Ok(())
    }
}

impl Driver for RestApis {
    type Spec = RestApiSpec;

    /// The API as [`Driver::observe_owner`] finds it, then its resource, method, integration,
    /// validator and model.
    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        desired: &RestApiSpec,
    ) -> Result<Option<Observed<RestApiSpec>>, AwsError> {
        let Some(mut observed) = self.observe_owner(ctx, desired).await? else {
            return Ok(None);
        };
        let api_id = observed.id(ctx)?;
        let method = async {
            let ((_, resource), validators) = tokio::try_join!(
                Self::resources(ctx, &api_id, &desired.resource_path),
                Self::validators(ctx, &api_id),
            )?;
            match &resource {
                Some(resource) => {
                    Self::observe_method(ctx, &api_id, resource, &validators, desired)
                        .await
                        .map(|m| (true, m))
                }
                None => Ok((false, missing_method())),
            }
        };
        let ((has_resource, (method, integration, validator)), model) =
            tokio::try_join!(method, Self::observe_model(ctx, &api_id, &desired.model))?;
        let spec = &mut observed.spec;
        spec.resource_path = if has_resource {
            desired.resource_path.clone()
        } else {
            String::new()
        };
        spec.method = method;
        spec.integration = integration;
        spec.validator = validator;
        spec.model = model;
        Ok(Some(observed))
    }

    /// The API (found by name and owner, with its own fields from that listing) and its copies; its
    /// resources, methods, models and validators are not read (they go with it): the desired ones
    /// stand in.
    async fn observe_owner(
        &self,
        ctx: &Ctx<'_>,
        desired: &RestApiSpec,
    ) -> Result<Option<Observed<RestApiSpec>>, AwsError> {
        let Picked {
            meant: Some(api),
            copies,
            namesakes,
        } = find_rest_apis(ctx, ctx.name()).await?
        else {
            return Ok(None);
        };
        let api_id = api.id().ok_or_else(|| {
            AwsError::terminal(ctx.id, "apigateway:GetRestApis", "an API without an id")
        })?;
        let spec = RestApiSpec {
            description: api.description().unwrap_or_default().to_string(),
            endpoint_type: api
                .endpoint_configuration()
                .and_then(|e| e.types().first())
                .map_or("EDGE", |t| t.as_str())
                .to_string(),
            duplicates: copies
                .iter()
                .filter_map(|c| c.id().map(str::to_string))
                .collect(),
            ..desired.clone()
        };
        Ok(Some(
            Observed::new(
                spec,
                user_tags(api.tags().cloned().unwrap_or_default()),
                Self::outputs(ctx, api_id),
            )
            .with_namesakes(namesakes),
        ))
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        desired: &RestApiSpec,
        tags: &Tags,
    ) -> Result<Outputs, DriverError> {
        let created = ctx
            .aws
            .apigateway
            .create_rest_api()
            .name(ctx.name())
            .description(&desired.description)
            .endpoint_configuration(
                EndpointConfiguration::builder()
                    .types(EndpointType::from(desired.endpoint_type.as_str()))
                    .build(),
            )
            .set_tags(Some(tags.clone().into_iter().collect()))
            .customize()
            .config_override(once())
            .send()
            .await
            .context(ctx.id, "apigateway:CreateRestApi");
        // A fresh API (the answer in hand, with its root resource's id) is filled in without reads.
        if let Ok(api) = &created {
            if let (Some(api_id), Some(root)) = (api.id(), api.root_resource_id()) {
                Self::populate_new(ctx, api_id, root, desired).await?;
                return Ok(Self::outputs(ctx, api_id));
            }
        }
        let api_id = match created {
            Ok(api) => api.id().map(str::to_string),
            // The answer was lost, not necessarily the API: one of ours under the name is the one made.
            Err(e) if e.outcome_unknown() => match find_rest_apis(ctx, ctx.name()).await?.meant {
                Some(api)
                    if api
                        .tags()
                        .and_then(|t| t.get(OWNER_TAG))
                        .map(String::as_str)
                        == Some(ctx.owner) =>
                {
                    api.id().map(str::to_string)
                }
                _ => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        }
        .ok_or_else(|| {
            AwsError::terminal(
                ctx.id,
                "apigateway:CreateRestApi",
                "no API id in the answer",
            )
        })?;
        // The model must exist before a method names it.
        Self::create_model(ctx, &api_id, &desired.model).await?;
        Self::converge_method(ctx, &api_id, desired, None).await?;
        Ok(Self::outputs(ctx, &api_id))
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        desired: &RestApiSpec,
        tags: &Tags,
        observed: &Observed<RestApiSpec>,
        changes: &Changes,
    ) -> Result<Outputs, DriverError> {
        let api_id = observed.id(ctx)?;
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
                .context(ctx.id, "apigateway:UpdateRestApi")?;
        }
        if changes.touches("model") {
            Self::converge_model(ctx, &api_id, &desired.model, &observed.spec.model).await?;
        }
        if changes.touches_any(&["resourcePath", "method", "validator", "integration"]) {
            Self::converge_method(ctx, &api_id, desired, Some(&observed.spec)).await?;
        }
        if changes.touches("tags") {
            let arn = observed.outputs.arn.clone().unwrap_or_default();
            sync_tags(&Tagging, ctx, &arn, tags, &observed.tags).await?;
        }
        for copy in &observed.spec.duplicates {
            tracing::warn!(resource = %ctx.id, copy = %copy, "deleting a copy of the REST API made by a repeated create");
            Self::delete_api(ctx, copy).await?;
        }
        Ok(Self::outputs(ctx, &api_id))
    }

    async fn delete(
        &self,
        ctx: &Ctx<'_>,
        observed: &Observed<RestApiSpec>,
    ) -> Result<(), AwsError> {
        for copy in &observed.spec.duplicates {
            Self::delete_api(ctx, copy).await?;
        }
        Self::delete_api(ctx, &observed.id(ctx)?).await
    }
}
