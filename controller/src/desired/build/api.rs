//! The REST API (`POST /upload` → Lambda proxy to csv-validator, request validator and model), the
//! permission letting it invoke the function, its stage, the API key and the usage plan binding both.

use std::collections::BTreeMap;

use serde_json::json;

use super::{id, Builder};
use crate::desired::{
    names, ApiIntegration, ApiKeySpec, ApiMethod, ApiModel, Kind, PermissionSpec, RequestValidator,
    ResourceSpec, RestApiSpec, StageSpec, UsagePlanSpec,
};

pub(super) fn rest_api(b: &mut Builder<'_>) {
    let suffix = b.suffix;
    let arns = b.arns.clone();
    let settings = &b.spec.api;
    let rest_api = names::rest_api(suffix);
    let validator = names::function(suffix, "csv-validator");
    let api = RestApiSpec {
        description: format!("tap {suffix}: CSV transaction uploads"),
        endpoint_type: "REGIONAL".into(),
        resource_path: "/upload".into(),
        method: ApiMethod {
            http_method: "POST".into(),
            authorization_type: "NONE".into(),
            api_key_required: true,
            request_parameters: BTreeMap::from([(
                "method.request.header.Content-Type".into(),
                true,
            )]),
            request_models: BTreeMap::from([("application/json".into(), "UploadEnvelope".into())]),
        },
        integration: ApiIntegration {
            integration_type: "AWS_PROXY".into(),
            integration_http_method: "POST".into(),
            uri: arns.lambda_integration_uri(&arns.function(&validator)),
        },
        validator: RequestValidator {
            name: format!("tap-{suffix}-upload-validator"),
            validate_request_body: true,
            validate_request_parameters: true,
        },
        model: ApiModel {
            name: "UploadEnvelope".into(),
            content_type: "application/json".into(),
            schema: json!({
                "$schema": "http://json-schema.org/draft-04/schema#",
                "title": "UploadEnvelope",
                "type": "object",
                "required": ["csv"],
                "properties": {"csv": {"type": "string", "minLength": 1}}
            }),
        },
        duplicates: vec![],
    };
    let stage = StageSpec {
        rest_api_name: rest_api.clone(),
        stage_name: settings.stage_name.clone(),
        deployment: api.deployment_fingerprint(),
        tracing_enabled: true,
        throttle_rate_limit: settings.throttle.rate_limit,
        throttle_burst_limit: settings.throttle.burst_limit,
    };
    let plan = UsagePlanSpec {
        description: format!("tap {suffix}: upload clients"),
        rest_api_name: rest_api.clone(),
        stage_name: settings.stage_name.clone(),
        throttle_rate_limit: settings.throttle.rate_limit,
        throttle_burst_limit: settings.throttle.burst_limit,
        quota_limit: settings.quota.limit,
        quota_period: settings.quota.period.as_str().into(),
        api_key_name: names::api_key(suffix),
        duplicates: vec![],
    };
    let api_id = id(Kind::RestApi, &rest_api);
    let permission_id = id(
        Kind::Permission,
        names::permission(&validator, names::API_INVOKE_STATEMENT),
    );
    let stage_id = id(Kind::Stage, names::stage(&rest_api, &settings.stage_name));
    let key_id = id(Kind::ApiKey, names::api_key(suffix));
    // The integration's URI is the function's ARN, known from its name: the API is built alongside the
    // function rather than after it. Nothing can call it before the stage, which waits for the permission.
    b.add(api_id.clone(), vec![], ResourceSpec::RestApi(api));
    b.add(
        permission_id.clone(),
        vec![id(Kind::Function, &validator), api_id.clone()],
        ResourceSpec::Permission(PermissionSpec {
            function_name: validator.clone(),
            statement_id: names::API_INVOKE_STATEMENT.into(),
            principal: "apigateway.amazonaws.com".into(),
            source_arn: arns.execute_api("POST", "/upload"),
            source_account: None,
            source_api: Some(rest_api.clone()),
        }),
    );
    // The stage goes live only once the API may invoke the function.
    b.add(
        stage_id.clone(),
        vec![api_id.clone(), permission_id],
        ResourceSpec::Stage(stage),
    );
    b.add(
        key_id.clone(),
        vec![],
        ResourceSpec::ApiKey(ApiKeySpec {
            description: format!("tap {suffix}: upload clients"),
            enabled: true,
            duplicates: vec![],
        }),
    );
    b.add(
        id(Kind::UsagePlan, names::usage_plan(suffix)),
        vec![api_id, stage_id, key_id],
        ResourceSpec::UsagePlan(plan),
    );
}
