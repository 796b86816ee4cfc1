//! The REST API's stage: the deployment it serves, X-Ray tracing, and `*/*` throttling.
//!
//! Which deployment is live is a field like any other: the desired one is the API's
//! [`deployment_fingerprint`](crate::desired::RestApiSpec::deployment_fingerprint), which the
//! deployment's description carries (`tap <fingerprint>`). A change of the API's method, integration,
//! validator or model changes the fingerprint, and the stage is pointed at a new deployment; a deployment
//! someone else put on the stage shows as drift. A new stage is made by its first deployment, in one
//! call. For a later one, the description doubles as the deployment's client token: before creating
//! one, the driver looks for a deployment with that description (one whose create answer was lost), so
//! a retried deployment is never made twice.

use aws_sdk_apigateway::types::Deployment;

use crate::aws::{AwsError, Optional, ResultExt};
use crate::desired::{Kind, StageSpec, Tags, OWNER_TAG};

use super::super::{
    sync_tags, user_tags, Changes, Ctx, Driver, DriverError, Observed, Outputs, TagApi,
};
use super::{find_rest_api, replace, require_rest_api_id, rest_api_id, settings_key, Tagging};

pub struct Stages;

const DESCRIPTION_PREFIX: &str = "tap ";

fn deployment_description(spec: &StageSpec) -> String {
    format!("{DESCRIPTION_PREFIX}{}", spec.deployment)
}

impl Stages {
    fn arn(ctx: &Ctx<'_>, api_id: &str, stage: &str) -> String {
        ctx.arns()
            .apigateway(&format!("/restapis/{api_id}/stages/{stage}"))
    }

    fn outputs(ctx: &Ctx<'_>, api_id: &str, desired: &StageSpec) -> Outputs {
        Outputs {
            arn: Some(Self::arn(ctx, api_id, &desired.stage_name)),
            id: Some(desired.stage_name.clone()),
            url: Some(ctx.arns().rest_api_url(api_id, &desired.stage_name, "")),
            ..Default::default()
        }
    }

    /// The deployment carrying the desired fingerprint: an existing one (its create answer may have been
    /// lost), else a new one.
    async fn deployment(
        ctx: &Ctx<'_>,
        api_id: &str,
        desired: &StageSpec,
    ) -> Result<String, AwsError> {
        let description = deployment_description(desired);
        let existing: Vec<Deployment> = ctx
            .aws
            .apigateway
            .get_deployments()
            .rest_api_id(api_id)
            .limit(500)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .context(ctx.id, "apigateway:GetDeployments")?;
        if let Some(id) = existing
            .iter()
            .find(|d| d.description() == Some(description.as_str()))
            .and_then(|d| d.id())
        {
            return Ok(id.to_string());
        }
        let created = ctx
            .aws
            .apigateway
            .create_deployment()
            .rest_api_id(api_id)
            .description(description)
            .customize()
            .config_override(super::once())
            .send()
            .await
            .context(ctx.id, "apigateway:CreateDeployment")?;
        created.id().map(str::to_string).ok_or_else(|| {
            AwsError::terminal(
                ctx.id,
                "apigateway:CreateDeployment",
                "no deployment id in the answer",
            )
        })
    }

    /// The fingerprint the stage's live deployment carries (its description, when not ours).
    async fn live_deployment(
        ctx: &Ctx<'_>,
        api_id: &str,
        deployment_id: Option<&str>,
    ) -> Result<String, AwsError> {
        let Some(id) = deployment_id else {
            return Ok(String::new());
        };
        let deployment = ctx
            .aws
            .apigateway
            .get_deployment()
            .rest_api_id(api_id)
            .deployment_id(id)
            .send()
            .await
            .context(ctx.id, "apigateway:GetDeployment")
            .optional()?;
        let description = deployment.and_then(|d| d.description).unwrap_or_default();
        Ok(description
            .strip_prefix(DESCRIPTION_PREFIX)
            .map(str::to_string)
            .unwrap_or(description))
    }

    fn settings(desired: &StageSpec) -> Vec<aws_sdk_apigateway::types::PatchOperation> {
        vec![
            replace("/tracingEnabled", desired.tracing_enabled),
            replace("/*/*/throttling/rateLimit", desired.throttle_rate_limit),
            replace("/*/*/throttling/burstLimit", desired.throttle_burst_limit),
        ]
    }

    async fn patch_stage(
        ctx: &Ctx<'_>,
        api_id: &str,
        stage: &str,
        ops: Vec<aws_sdk_apigateway::types::PatchOperation>,
    ) -> Result<(), AwsError> {
        ctx.aws
            .apigateway
            .update_stage()
            .rest_api_id(api_id)
            .stage_name(stage)
            .set_patch_operations(Some(ops))
            .send()
            .await
            .context(ctx.id, "apigateway:UpdateStage")?;
        Ok(())
    }
}

impl Driver for Stages {
    type Spec = StageSpec;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        desired: &StageSpec,
    ) -> Result<Option<Observed<StageSpec>>, AwsError> {
        // A stage lives inside its API and is owned with it (a stage made by a deployment carries no tags):
        // an API this walk converged is proven ours; otherwise its tags say whose it is.
        let (api_id, api_owner) = match ctx
            .dep(Kind::RestApi, &desired.rest_api_name)
            .and_then(|o| o.id.clone())
        {
            Some(id) => (id, Some(ctx.owner.to_string())),
            None => match find_rest_api(ctx, &desired.rest_api_name).await? {
                Some(api) => (
                    api.id().unwrap_or_default().to_string(),
                    api.tags().and_then(|t| t.get(OWNER_TAG)).cloned(),
                ),
                None => return Ok(None),
            },
        };
        let Some(stage) = ctx
            .aws
            .apigateway
            .get_stage()
            .rest_api_id(&api_id)
            .stage_name(&desired.stage_name)
            .send()
            .await
            .context(ctx.id, "apigateway:GetStage")
            .optional()?
        else {
            return Ok(None);
        };
        let all = stage.method_settings().and_then(|m| {
            m.iter()
                .find(|(k, _)| settings_key(k) == "*/*")
                .map(|(_, v)| v)
        });
        let spec = StageSpec {
            rest_api_name: desired.rest_api_name.clone(),
            stage_name: stage.stage_name().unwrap_or_default().to_string(),
            deployment: Self::live_deployment(ctx, &api_id, stage.deployment_id()).await?,
            tracing_enabled: stage.tracing_enabled(),
            throttle_rate_limit: all.map_or(0.0, |m| m.throttling_rate_limit()),
            throttle_burst_limit: all.map_or(0, |m| m.throttling_burst_limit()),
        };
        let mut tags = user_tags(stage.tags().cloned().unwrap_or_default());
        if api_owner.is_none() {
            // A stage of an API that is not tagged by us is not ours, whatever its own tags say.
            tags.remove(OWNER_TAG);
        }
        let mut observed = Observed::new(spec, tags, Self::outputs(ctx, &api_id, desired));
        observed.parent_owner = api_owner;
        Ok(Some(observed))
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        desired: &StageSpec,
        tags: &Tags,
    ) -> Result<Outputs, DriverError> {
        let api_id = require_rest_api_id(ctx, &desired.rest_api_name).await?;
        // A deployment made with the stage's name makes the stage with it, in one call: a lost answer
        // leaves either nothing or the stage on our deployment, which the next observe finds, so there is
        // no deployment to look for first. The call cannot tag the stage or set its throttling; those two
        // follow at once, and a crash before them is tag and settings drift the next walk corrects.
        ctx.aws
            .apigateway
            .create_deployment()
            .rest_api_id(&api_id)
            .description(deployment_description(desired))
            .stage_name(&desired.stage_name)
            .tracing_enabled(desired.tracing_enabled)
            .customize()
            .config_override(super::once())
            .send()
            .await
            .context(ctx.id, "apigateway:CreateDeployment")?;
        let arn = Self::arn(ctx, &api_id, &desired.stage_name);
        tokio::try_join!(
            Self::patch_stage(ctx, &api_id, &desired.stage_name, Self::settings(desired)),
            Tagging.tag(ctx, &arn, tags.clone()),
        )?;
        Ok(Self::outputs(ctx, &api_id, desired))
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        desired: &StageSpec,
        tags: &Tags,
        observed: &Observed<StageSpec>,
        changes: &Changes,
    ) -> Result<Outputs, DriverError> {
        let api_id = require_rest_api_id(ctx, &desired.rest_api_name).await?;
        let mut ops = Vec::new();
        if changes.touches("deployment") {
            let deployment = Self::deployment(ctx, &api_id, desired).await?;
            ops.push(replace("/deploymentId", deployment));
        }
        if changes.touches_any(&["tracingEnabled", "throttleRateLimit", "throttleBurstLimit"]) {
            ops.extend(Self::settings(desired));
        }
        if !ops.is_empty() {
            Self::patch_stage(ctx, &api_id, &desired.stage_name, ops).await?;
        }
        if changes.touches("tags") {
            let arn = Self::arn(ctx, &api_id, &desired.stage_name);
            sync_tags(&Tagging, ctx, &arn, tags, &observed.tags).await?;
        }
        Ok(Self::outputs(ctx, &api_id, desired))
    }

    async fn delete(&self, ctx: &Ctx<'_>, observed: &Observed<StageSpec>) -> Result<(), AwsError> {
        let Some(api_id) = rest_api_id(ctx, &observed.spec.rest_api_name).await? else {
            return Ok(());
        };
        ctx.aws
            .apigateway
            .delete_stage()
            .rest_api_id(api_id)
            .stage_name(&observed.spec.stage_name)
            .send()
            .await
            .context(ctx.id, "apigateway:DeleteStage")
            .optional()?;
        Ok(())
    }
}
