//! The usage plan: throttle and quota on the API's stage, and the binding of the API key (a resource of
//! its own) to the plan.

use std::collections::HashMap;

use aws_sdk_apigateway::types::{
    ApiStage as AwsApiStage, Op, QuotaPeriodType, QuotaSettings, ThrottleSettings, UsagePlan,
};

use crate::aws::{AwsError, Optional, ResultExt};
use crate::desired::{Kind, Tags, UsagePlanSpec, OWNER_TAG};

use super::super::{sync_tags, user_tags, Changes, Ctx, Driver, DriverError, Observed, Outputs};
use super::{once, patch, pick, replace, require_rest_api_id, rest_api_id, Picked, Tagging};

pub struct UsagePlans;

impl UsagePlans {
    /// The observation of `plan` with `spec` as its settings, its same-owner `copies` to be deleted.
    fn observed(
        ctx: &Ctx<'_>,
        plan: &UsagePlan,
        copies: &[UsagePlan],
        namesakes: usize,
        spec: UsagePlanSpec,
    ) -> Observed<UsagePlanSpec> {
        let spec = UsagePlanSpec {
            duplicates: copies
                .iter()
                .filter_map(|p| p.id().map(str::to_string))
                .collect(),
            ..spec
        };
        Observed::new(
            spec,
            user_tags(plan.tags().cloned().unwrap_or_default()),
            Self::outputs(ctx, plan.id().unwrap_or_default()),
        )
        .with_namesakes(namesakes)
    }

    fn outputs(ctx: &Ctx<'_>, plan_id: &str) -> Outputs {
        Outputs {
            arn: Some(ctx.arns().apigateway(&format!("/usageplans/{plan_id}"))),
            id: Some(plan_id.to_string()),
            ..Default::default()
        }
    }

    /// Detaches the plan's stages (AWS refuses to delete a plan still associated with them), then deletes it.
    async fn delete_plan(ctx: &Ctx<'_>, plan_id: &str) -> Result<(), AwsError> {
        // AWS refuses to delete a plan still associated with API stages: detach them first.
        let Some(plan) = ctx
            .aws
            .apigateway
            .get_usage_plan()
            .usage_plan_id(plan_id)
            .send()
            .await
            .context(ctx.id, "apigateway:GetUsagePlan")
            .optional()?
        else {
            return Ok(());
        };
        let ops: Vec<_> = plan
            .api_stages()
            .iter()
            .map(|s| {
                let stage = Self::stage_key(
                    s.api_id().unwrap_or_default(),
                    s.stage().unwrap_or_default(),
                );
                patch(Op::Remove, "/apiStages", Some(stage))
            })
            .collect();
        if !ops.is_empty() {
            ctx.aws
                .apigateway
                .update_usage_plan()
                .usage_plan_id(plan_id)
                .set_patch_operations(Some(ops))
                .send()
                .await
                .context(ctx.id, "apigateway:UpdateUsagePlan")
                .optional()?;
        }
        ctx.aws
            .apigateway
            .delete_usage_plan()
            .usage_plan_id(plan_id)
            .send()
            .await
            .context(ctx.id, "apigateway:DeleteUsagePlan")
            .optional()?;
        Ok(())
    }

    /// The plan named like the resource that this pipeline owns (see [`pick`]), and its other copies.
    async fn find_plans(ctx: &Ctx<'_>) -> Result<Picked<UsagePlan>, AwsError> {
        let named = super::super::batch::usage_plans(ctx)
            .await?
            .iter()
            .filter(|p| p.name() == Some(ctx.name()))
            .cloned()
            .collect();
        // Usage plans have no creation date: ties break on the id.
        Ok(pick(named, ctx.owner, UsagePlan::tags, |_| None))
    }

    /// The key's id, from the dependency (which this walk proved ours).
    fn key_id<'a>(ctx: &'a Ctx<'_>, desired: &UsagePlanSpec) -> Result<&'a str, AwsError> {
        ctx.dep(Kind::ApiKey, &desired.api_key_name)
            .and_then(|o| o.id.as_deref())
            .ok_or_else(|| {
                AwsError::transient(
                    ctx.id,
                    "apigateway:GetApiKeys",
                    format!("API key {} does not exist yet", desired.api_key_name),
                )
            })
    }

    async fn bind_key(ctx: &Ctx<'_>, plan_id: &str, key_id: &str) -> Result<(), AwsError> {
        ctx.aws
            .apigateway
            .create_usage_plan_key()
            .usage_plan_id(plan_id)
            .key_id(key_id)
            .key_type("API_KEY")
            .send()
            .await
            .context(ctx.id, "apigateway:CreateUsagePlanKey")?;
        Ok(())
    }

    /// `(id, name)` of the keys bound to the plan.
    async fn bound_keys(ctx: &Ctx<'_>, plan_id: &str) -> Result<Vec<(String, String)>, AwsError> {
        let keys = ctx
            .aws
            .apigateway
            .get_usage_plan_keys()
            .usage_plan_id(plan_id)
            .limit(500)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .context(ctx.id, "apigateway:GetUsagePlanKeys")?;
        Ok(keys
            .iter()
            .map(|k| {
                (
                    k.id().unwrap_or_default().to_string(),
                    k.name().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }

    fn stage_key(api_id: &str, stage: &str) -> String {
        format!("{api_id}:{stage}")
    }
}

impl Driver for UsagePlans {
    type Spec = UsagePlanSpec;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        desired: &UsagePlanSpec,
    ) -> Result<Option<Observed<UsagePlanSpec>>, AwsError> {
        let Picked {
            meant: Some(plan),
            copies,
            namesakes,
        } = Self::find_plans(ctx).await?
        else {
            return Ok(None);
        };
        let plan_id = plan.id().unwrap_or_default().to_string();
        // The stage the plan covers (the one desired, when it covers several), its API id mapped back to
        // the API's name.
        let desired_api_id = rest_api_id(ctx, &desired.rest_api_name).await?;
        let stages = plan.api_stages();
        let stage = stages
            .iter()
            .find(|s| {
                s.api_id() == desired_api_id.as_deref()
                    && s.stage() == Some(desired.stage_name.as_str())
            })
            .or_else(|| stages.first());
        let (rest_api_name, stage_name) = match stage {
            None => (String::new(), String::new()),
            Some(s) if s.api_id() == desired_api_id.as_deref() => (
                desired.rest_api_name.clone(),
                s.stage().unwrap_or_default().to_string(),
            ),
            // Another API: named by its id (it is not the one desired either way).
            Some(s) => (
                s.api_id().unwrap_or_default().to_string(),
                s.stage().unwrap_or_default().to_string(),
            ),
        };
        let keys = Self::bound_keys(ctx, &plan_id).await?;
        let api_key_name = keys
            .iter()
            .find(|(_, name)| *name == desired.api_key_name)
            .or_else(|| keys.first())
            .map(|(_, name)| name.clone())
            .unwrap_or_default();
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
            api_key_name,
            duplicates: vec![],
        };
        Ok(Some(Self::observed(ctx, &plan, &copies, namesakes, spec)))
    }

    /// The plan (found by name and owner) and its copies: its stages are read afresh by the delete,
    /// its key bindings go with it.
    async fn observe_owner(
        &self,
        ctx: &Ctx<'_>,
        desired: &UsagePlanSpec,
    ) -> Result<Option<Observed<UsagePlanSpec>>, AwsError> {
        let Picked {
            meant: Some(plan),
            copies,
            namesakes,
        } = Self::find_plans(ctx).await?
        else {
            return Ok(None);
        };
        Ok(Some(Self::observed(
            ctx,
            &plan,
            &copies,
            namesakes,
            desired.clone(),
        )))
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        desired: &UsagePlanSpec,
        tags: &Tags,
    ) -> Result<Outputs, DriverError> {
        let api_id = require_rest_api_id(ctx, &desired.rest_api_name).await?;
        let key_id = Self::key_id(ctx, desired)?;
        let plan = ctx
            .aws
            .apigateway
            .create_usage_plan()
            .name(ctx.name())
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
            .customize()
            .config_override(once())
            .send()
            .await
            .context(ctx.id, "apigateway:CreateUsagePlan");
        let plan_id = match plan {
            Ok(plan) => plan.id().map(str::to_string),
            // The answer was lost, not necessarily the plan: one of ours under the name is the one made.
            Err(e) if e.outcome_unknown() => match Self::find_plans(ctx).await?.meant {
                Some(plan)
                    if plan
                        .tags()
                        .and_then(|t| t.get(OWNER_TAG))
                        .map(String::as_str)
                        == Some(ctx.owner) =>
                {
                    plan.id().map(str::to_string)
                }
                _ => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        }
        .ok_or_else(|| {
            AwsError::terminal(
                ctx.id,
                "apigateway:CreateUsagePlan",
                "no plan id in the answer",
            )
        })?;
        Self::bind_key(ctx, &plan_id, key_id).await?;
        Ok(Self::outputs(ctx, &plan_id))
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        desired: &UsagePlanSpec,
        tags: &Tags,
        observed: &Observed<UsagePlanSpec>,
        changes: &Changes,
    ) -> Result<Outputs, DriverError> {
        let plan_id = observed.id(ctx)?;
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
            let api_id = require_rest_api_id(ctx, &desired.rest_api_name).await?;
            let wanted = Self::stage_key(&api_id, &desired.stage_name);
            let current = ctx
                .aws
                .apigateway
                .get_usage_plan()
                .usage_plan_id(&plan_id)
                .send()
                .await
                .context(ctx.id, "apigateway:GetUsagePlan")?;
            let mut present = false;
            for s in current.api_stages() {
                let stage = Self::stage_key(
                    s.api_id().unwrap_or_default(),
                    s.stage().unwrap_or_default(),
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
                .context(ctx.id, "apigateway:UpdateUsagePlan")?;
        }
        if changes.touches("apiKeyName") {
            let key_id = Self::key_id(ctx, desired)?;
            let bound = Self::bound_keys(ctx, &plan_id).await?;
            for (id, _) in bound.iter().filter(|(id, _)| id != key_id) {
                ctx.aws
                    .apigateway
                    .delete_usage_plan_key()
                    .usage_plan_id(&plan_id)
                    .key_id(id)
                    .send()
                    .await
                    .context(ctx.id, "apigateway:DeleteUsagePlanKey")
                    .optional()?;
            }
            if !bound.iter().any(|(id, _)| id == key_id) {
                Self::bind_key(ctx, &plan_id, key_id).await?;
            }
        }
        if changes.touches("tags") {
            let arn = observed.outputs.arn.clone().unwrap_or_default();
            sync_tags(&Tagging, ctx, &arn, tags, &observed.tags).await?;
        }
        for copy in &observed.spec.duplicates {
            tracing::warn!(resource = %ctx.id, copy = %copy, "deleting a copy of the usage plan made by a repeated create");
            Self::delete_plan(ctx, copy).await?;
        }
        Ok(observed.outputs.clone())
    }

    async fn delete(
        &self,
        ctx: &Ctx<'_>,
        observed: &Observed<UsagePlanSpec>,
    ) -> Result<(), AwsError> {
        for copy in &observed.spec.duplicates {
            Self::delete_plan(ctx, copy).await?;
        }
        Self::delete_plan(ctx, &observed.id(ctx)?).await
    }
}
