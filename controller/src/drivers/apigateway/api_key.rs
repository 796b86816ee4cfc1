//! The API key clients send in `x-api-key`: enabled, described, tagged. Its value goes to
//! `Outputs.secret` (a Kubernetes Secret) only. Found by its own name and tag, never through the usage
//! plan, so an interrupted teardown still finds it.

use aws_sdk_apigateway::types::{ApiKey, Op};

use crate::aws::{AwsError, Optional, ResultExt};
use crate::desired::{ApiKeySpec, Tags, OWNER_TAG};

use super::super::{
    sync_tags, user_tags, Changes, Ctx, Driver, DriverError, Observed, Outputs, SecretValue,
};
use super::{once, patch, pick, replace, Picked, Tagging};

pub struct ApiKeys;

impl ApiKeys {
    /// The key named like the resource that this pipeline owns (see [`pick`]), and its other copies.
    async fn find(ctx: &Ctx<'_>) -> Result<Picked<ApiKey>, AwsError> {
        let all = ctx
            .aws
            .apigateway
            .get_api_keys()
            .name_query(ctx.name())
            .include_values(true)
            .limit(500)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .context(ctx.id, "apigateway:GetApiKeys")?;
        let named = all
            .into_iter()
            .filter(|k| k.name() == Some(ctx.name()))
            .collect();
        Ok(pick(named, ctx.owner, ApiKey::tags, |k| {
            k.created_date().map(|d| (d.secs(), d.subsec_nanos()))
        }))
    }

    async fn delete_key(ctx: &Ctx<'_>, key_id: &str) -> Result<(), AwsError> {
        ctx.aws
            .apigateway
            .delete_api_key()
            .api_key(key_id)
            .send()
            .await
            .context(ctx.id, "apigateway:DeleteApiKey")
            .optional()?;
        Ok(())
    }

    fn outputs(ctx: &Ctx<'_>, key: &ApiKey) -> Outputs {
        let id = key.id().unwrap_or_default();
        Outputs {
            arn: Some(ctx.arns().apigateway(&format!("/apikeys/{id}"))),
            id: Some(id.to_string()),
            secret: key.value().map(|v| SecretValue(v.to_string())),
            ..Default::default()
        }
    }
}

impl Driver for ApiKeys {
    type Spec = ApiKeySpec;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        _desired: &ApiKeySpec,
    ) -> Result<Option<Observed<ApiKeySpec>>, AwsError> {
        let Picked {
            meant: Some(key),
            copies,
            namesakes,
        } = Self::find(ctx).await?
        else {
            return Ok(None);
        };
        Ok(Some(
            Observed::new(
                ApiKeySpec {
                    description: key.description().unwrap_or_default().to_string(),
                    enabled: key.enabled(),
                    duplicates: copies
                        .iter()
                        .filter_map(|k| k.id().map(str::to_string))
                        .collect(),
                },
                user_tags(key.tags().cloned().unwrap_or_default()),
                Self::outputs(ctx, &key),
            )
            .with_namesakes(namesakes),
        ))
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        desired: &ApiKeySpec,
        tags: &Tags,
    ) -> Result<Outputs, DriverError> {
        let created = ctx
            .aws
            .apigateway
            .create_api_key()
            .name(ctx.name())
            .description(&desired.description)
            .enabled(desired.enabled)
            .set_tags(Some(tags.clone().into_iter().collect()))
            .customize()
            .config_override(once())
            .send()
            .await
            .context(ctx.id, "apigateway:CreateApiKey");
        let key = match created {
            Ok(created) => ApiKey::builder()
                .set_id(created.id)
                .set_value(created.value)
                .build(),
            // The answer was lost, not necessarily the key: one of ours under the name is the one made.
            Err(e) if e.outcome_unknown() => match Self::find(ctx).await?.meant {
                Some(key)
                    if key
                        .tags()
                        .and_then(|t| t.get(OWNER_TAG))
                        .map(String::as_str)
                        == Some(ctx.owner) =>
                {
                    key
                }
                _ => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        };
        Ok(Self::outputs(ctx, &key))
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        desired: &ApiKeySpec,
        tags: &Tags,
        observed: &Observed<ApiKeySpec>,
        changes: &Changes,
    ) -> Result<Outputs, DriverError> {
        let key_id = observed.id(ctx)?;
        let mut ops = Vec::new();
        if changes.touches("description") {
            ops.push(replace("/description", &desired.description));
        }
        if changes.touches("enabled") {
            ops.push(patch(
                Op::Replace,
                "/enabled",
                Some(desired.enabled.to_string()),
            ));
        }
        if !ops.is_empty() {
            ctx.aws
                .apigateway
                .update_api_key()
                .api_key(&key_id)
                .set_patch_operations(Some(ops))
                .send()
                .await
                .context(ctx.id, "apigateway:UpdateApiKey")?;
        }
        if changes.touches("tags") {
            let arn = observed.outputs.arn.clone().unwrap_or_default();
            sync_tags(&Tagging, ctx, &arn, tags, &observed.tags).await?;
        }
        for copy in &observed.spec.duplicates {
            tracing::warn!(resource = %ctx.id, copy = %copy, "deleting a copy of the API key made by a repeated create");
            Self::delete_key(ctx, copy).await?;
        }
        Ok(observed.outputs.clone())
    }

    async fn delete(&self, ctx: &Ctx<'_>, observed: &Observed<ApiKeySpec>) -> Result<(), AwsError> {
        for copy in &observed.spec.duplicates {
            Self::delete_key(ctx, copy).await?;
        }
        Self::delete_key(ctx, &observed.id(ctx)?).await
    }
}
