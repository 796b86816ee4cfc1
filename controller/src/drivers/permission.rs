//! Lambda permissions: one statement of a function's resource policy letting a principal (S3, API
//! Gateway) invoke it. A statement has no tags of its own; it is as much ours as the function it lives
//! in, so `observe` reports the function's owner as the parent owner. A statement cannot be edited: a
//! drifted one is removed and added again.

use serde_json::Value;

use crate::aws::{AwsError, Optional, ResultExt};
use crate::desired::arns::API_ID;
use crate::desired::policies::{parse_policy, statement};
use crate::desired::{Kind, PermissionSpec, Tags, OWNER_TAG};

use super::{Changes, Ctx, Driver, DriverError, Observed, Outputs};

pub struct Permissions;

/// The id of the REST API whose id fills the source ARN's pattern, when the spec has one and the API
/// converged earlier in this walk.
fn api_id<'a>(ctx: &'a Ctx<'_>, desired: &PermissionSpec) -> Option<&'a str> {
    let api = desired.source_api.as_deref()?;
    ctx.dep(Kind::RestApi, api)?.id.as_deref()
}

/// A string, or the first string of an array (a normalised policy value may be either).
fn text(value: &Value) -> Option<&str> {
    match value {
        Value::String(s) => Some(s),
        Value::Array(items) => items.first().and_then(Value::as_str),
        _ => None,
    }
}

/// Maps statement `sid` of a (normalised) function policy back to a spec; the API's id in the source ARN
/// goes back to its pattern.
fn from_policy(
    policy: &Value,
    desired: &PermissionSpec,
    api_id: Option<&str>,
) -> Option<PermissionSpec> {
    let found = statement(policy, &desired.statement_id)?;
    let principal = match &found["Principal"] {
        Value::Object(p) => p
            .get("Service")
            .or_else(|| p.get("AWS"))
            .and_then(text)
            .unwrap_or_default(),
        other => text(other).unwrap_or_default(),
    };
    let condition = &found["Condition"];
    let mut source_arn = text(&condition["ArnLike"]["AWS:SourceArn"])
        .or_else(|| text(&condition["ArnEquals"]["AWS:SourceArn"]))
        .unwrap_or_default()
        .to_string();
    if let Some(id) = api_id {
        source_arn = source_arn.replacen(&format!(":{id}/"), &format!(":{API_ID}/"), 1);
    }
    Some(PermissionSpec {
        function_name: desired.function_name.clone(),
        statement_id: desired.statement_id.clone(),
        principal: principal.to_string(),
        source_arn,
        source_account: text(&condition["StringEquals"]["AWS:SourceAccount"]).map(str::to_string),
        source_api: desired.source_api.clone(),
    })
}

impl Permissions {
    async fn remove(ctx: &Ctx<'_>, spec: &PermissionSpec) -> Result<(), AwsError> {
        ctx.aws
            .lambda
            .remove_permission()
            .function_name(&spec.function_name)
            .statement_id(&spec.statement_id)
            .send()
            .await
            .context(ctx.id, "lambda:RemovePermission")
            .optional()?;
        Ok(())
    }

    async fn add(ctx: &Ctx<'_>, desired: &PermissionSpec) -> Result<(), AwsError> {
        let source_arn = match (desired.source_arn.contains(API_ID), api_id(ctx, desired)) {
            (false, _) => desired.source_arn.clone(),
            (true, Some(id)) => desired.source_arn.replace(API_ID, id),
            (true, None) => {
                return Err(AwsError::transient(
                    ctx.id,
                    "lambda:AddPermission",
                    format!(
                        "the id of REST API {} is not known yet",
                        desired.source_api.as_deref().unwrap_or_default()
                    ),
                ))
            }
        };
        ctx.aws
            .lambda
            .add_permission()
            .function_name(&desired.function_name)
            .statement_id(&desired.statement_id)
            .action("lambda:InvokeFunction")
            .principal(&desired.principal)
            .source_arn(source_arn)
            .set_source_account(desired.source_account.clone())
            .send()
            .await
            .context(ctx.id, "lambda:AddPermission")?;
        Ok(())
    }
}

impl Driver for Permissions {
    type Spec = PermissionSpec;

    /// `AddPermission` answers `ResourceConflictException` for a statement id the policy already has.
    const CREATE_REFUSES_EXISTING: bool = true;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        desired: &PermissionSpec,
    ) -> Result<Option<Observed<PermissionSpec>>, AwsError> {
        // One GetPolicy per function and walk, shared by its statements (see `batch`).
        let Some(policy) = super::batch::function_policy(ctx, &desired.function_name).await? else {
            return Ok(None);
        };
        let policy = parse_policy(&policy);
        let Some(spec) = from_policy(&policy, desired, api_id(ctx, desired)) else {
            return Ok(None);
        };
        let function_arn = ctx.arns().function(&desired.function_name);
        // The function's owner tag, as its GetFunction read it in this walk, else read here.
        let mut tags = match super::batch::function_tags(&desired.function_name) {
            Some(tags) => tags,
            None => {
                let Some(tags) = ctx
                    .aws
                    .lambda
                    .list_tags()
                    .resource(&function_arn)
                    .send()
                    .await
                    .context(ctx.id, "lambda:ListTags")
                    .optional()?
                else {
                    return Ok(None);
                };
                tags.tags.unwrap_or_default().into_iter().collect()
            }
        };
        Ok(Some(Observed {
            spec,
            tags: Tags::new(),
            parent_owner: tags.remove(OWNER_TAG),
            namesakes: 0,
            outputs: Outputs {
                arn: Some(function_arn),
                ..Default::default()
            },
        }))
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        desired: &PermissionSpec,
        _tags: &Tags,
    ) -> Result<Outputs, DriverError> {
        Self::add(ctx, desired).await?;
        Ok(Outputs {
            arn: Some(ctx.arns().function(&desired.function_name)),
            ..Default::default()
        })
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        desired: &PermissionSpec,
        _tags: &Tags,
        observed: &Observed<PermissionSpec>,
        changes: &Changes,
    ) -> Result<Outputs, DriverError> {
        if !changes.is_empty() {
            Self::remove(ctx, &observed.spec).await?;
            Self::add(ctx, desired).await?;
        }
        Ok(observed.outputs.clone())
    }

    async fn delete(
        &self,
        ctx: &Ctx<'_>,
        observed: &Observed<PermissionSpec>,
    ) -> Result<(), AwsError> {
        Self::remove(ctx, &observed.spec).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn desired(source_api: Option<&str>) -> PermissionSpec {
        PermissionSpec {
            function_name: "f".into(),
            statement_id: "tap-s3-invoke".into(),
            principal: "s3.amazonaws.com".into(),
            source_arn: "arn:aws:s3:::b".into(),
            source_account: Some("123456789012".into()),
            source_api: source_api.map(str::to_string),
        }
    }

    #[test]
    fn maps_a_service_statement_back() {
        let policy = parse_policy(
            &json!({"Version": "2012-10-17", "Id": "default", "Statement": [
                {"Sid": "other", "Effect": "Allow", "Principal": "*", "Action": "lambda:InvokeFunction", "Resource": "f"},
                {"Sid": "tap-s3-invoke", "Effect": "Allow", "Principal": {"Service": "s3.amazonaws.com"},
                 "Action": "lambda:InvokeFunction", "Resource": "f",
                 "Condition": {"StringEquals": {"AWS:SourceAccount": "123456789012"},
                               "ArnLike": {"AWS:SourceArn": "arn:aws:s3:::b"}}}
            ]})
            .to_string(),
        );
        assert_eq!(
            from_policy(&policy, &desired(None), None),
            Some(desired(None))
        );
        let mut missing = desired(None);
        missing.statement_id = "missing".into();
        assert!(from_policy(&policy, &missing, None).is_none());
    }

    #[test]
    fn an_api_statement_maps_its_id_back_and_an_aws_principal_is_read_too() {
        let policy = parse_policy(
            &json!({"Statement": {"Sid": "tap-s3-invoke", "Principal": {"AWS": "apigateway.amazonaws.com"},
                "Condition": {"ArnLike": {"AWS:SourceArn": "arn:aws:execute-api:us-east-1:1:abc123/*/POST/upload"}}}})
            .to_string(),
        );
        let spec = from_policy(&policy, &desired(Some("api")), Some("abc123")).unwrap();
        assert_eq!(spec.principal, "apigateway.amazonaws.com");
        assert_eq!(
            spec.source_arn,
            "arn:aws:execute-api:us-east-1:1:{api_id}/*/POST/upload"
        );
        assert_eq!(spec.source_account, None);
    }
}
