//! Lambda functions (container images): image, role, memory, timeout, architectures, environment,
//! tracing, dead-letter target and tags. The image is checked in ECR before it is used, so a pipeline
//! whose image is not pushed yet waits with a clear message instead of failing.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_lambda::client::Waiters;
use aws_sdk_lambda::types::{
    Architecture, DeadLetterConfig, Environment, FunctionCode, PackageType, State, TracingConfig,
    TracingMode,
};

use crate::aws::{AwsError, Optional, ResultExt};
use crate::desired::arns::Arn;
use crate::desired::{FunctionSpec, Tags};

use super::{
    ecr, sync_tags, user_tags, waited, while_role_propagates, Changes, Ctx, Driver, DriverError,
    Observed, Outputs, TagApi, WaitReason, ROLE_PROPAGATION,
};

pub struct Functions;

/// Configuration fields that one `UpdateFunctionConfiguration` call sets (serde names).
const CONFIG_FIELDS: [&str; 6] = [
    "roleArn",
    "memoryMb",
    "timeoutSeconds",
    "environment",
    "tracingMode",
    "deadLetterTargetArn",
];

/// How long to wait for a function to become Active or finish an update (AWS takes seconds to pull an
/// image; ministack is Pending for ~0.5 s).
const READY_LIMIT: Duration = Duration::from_secs(60);

impl Functions {
    fn outputs(ctx: &Ctx<'_>, arn: Option<&str>) -> Outputs {
        Outputs {
            arn: Some(
                arn.and_then(Arn::parse)
                    .map(|a| a.unqualified())
                    .unwrap_or_else(|| ctx.arns().function(ctx.name())),
            ),
            ..Default::default()
        }
    }

    /// When the image lives in the stack's repository, it must be pushed before the function uses it.
    async fn require_image(ctx: &Ctx<'_>, desired: &FunctionSpec) -> Result<(), DriverError> {
        let Some(image) = &desired.image_in_repository else {
            return Ok(());
        };
        if ecr::image_exists(ctx, &image.repository, &image.tag).await? {
            return Ok(());
        }
        Err(DriverError::Wait(WaitReason::Image {
            uri: desired.image_uri.clone(),
            repository: image.repository.clone(),
            tag: image.tag.clone(),
        }))
    }

    /// Waits (bounded) until the function is Active.
    async fn wait_active(ctx: &Ctx<'_>) -> Result<(), AwsError> {
        waited(
            ctx.aws
                .lambda
                .wait_until_function_active_v2()
                .function_name(ctx.name())
                .wait(READY_LIMIT)
                .await,
            ctx.id,
            "lambda:GetFunction",
            READY_LIMIT,
            |out| {
                let reason = out
                    .configuration()
                    .and_then(|c| c.state_reason())
                    .unwrap_or("no reason given");
                format!("the function failed to become active: {reason}")
            },
        )
        .map(drop)
    }

    /// Waits (bounded) until no update is in progress, so the next one gets no 409.
    async fn wait_updated(ctx: &Ctx<'_>) -> Result<(), AwsError> {
        waited(
            ctx.aws
                .lambda
                .wait_until_function_updated_v2()
                .function_name(ctx.name())
                .wait(READY_LIMIT)
                .await,
            ctx.id,
            "lambda:GetFunction",
            READY_LIMIT,
            |out| {
                let reason = out
                    .configuration()
                    .and_then(|c| c.last_update_status_reason())
                    .unwrap_or("no reason given");
                format!("the last update failed: {reason}")
            },
        )
        .map(drop)
    }

    fn environment(desired: &FunctionSpec) -> Environment {
        Environment::builder()
            .set_variables(Some(desired.environment.clone().into_iter().collect()))
            .build()
    }

    fn architectures(desired: &FunctionSpec) -> Vec<Architecture> {
        desired
            .architectures
            .iter()
            .map(|a| Architecture::from(a.as_str()))
            .collect()
    }

    fn tracing(desired: &FunctionSpec) -> TracingConfig {
        TracingConfig::builder()
            .mode(TracingMode::from(desired.tracing_mode.as_str()))
            .build()
    }

    fn dead_letter(desired: &FunctionSpec) -> DeadLetterConfig {
        DeadLetterConfig::builder()
            .target_arn(&desired.dead_letter_target_arn)
            .build()
    }
}

impl TagApi for Functions {
    async fn tag(&self, ctx: &Ctx<'_>, arn: &str, tags: Tags) -> Result<(), AwsError> {
        ctx.aws
            .lambda
            .tag_resource()
            .resource(arn)
            .set_tags(Some(tags.into_iter().collect()))
            .send()
            .await
            .context(ctx.id, "lambda:TagResource")?;
        Ok(())
    }

    async fn untag(&self, ctx: &Ctx<'_>, arn: &str, keys: Vec<String>) -> Result<(), AwsError> {
        ctx.aws
            .lambda
            .untag_resource()
            .resource(arn)
            .set_tag_keys(Some(keys))
            .send()
            .await
            .context(ctx.id, "lambda:UntagResource")?;
        Ok(())
    }
}

impl Driver for Functions {
    type Spec = FunctionSpec;

    /// `CreateFunction` answers `ResourceConflictException` (its image check before it only reads).
    const CREATE_REFUSES_EXISTING: bool = true;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        desired: &FunctionSpec,
    ) -> Result<Option<Observed<FunctionSpec>>, AwsError> {
        let Some(out) = ctx
            .aws
            .lambda
            .get_function()
            .function_name(ctx.name())
            .send()
            .await
            .context(ctx.id, "lambda:GetFunction")
            .optional()?
        else {
            return Ok(None);
        };
        let Some(conf) = out.configuration() else {
            return Err(AwsError::terminal(
                ctx.id,
                "lambda:GetFunction",
                "the answer has no configuration",
            ));
        };
        let mut architectures: Vec<String> = conf
            .architectures()
            .iter()
            .map(|a| a.as_str().to_string())
            .collect();
        if architectures.is_empty() {
            // AWS's default when a function was created without architectures.
            architectures.push("x86_64".into());
        }
        let environment: BTreeMap<String, String> = conf
            .environment()
            .and_then(|e| e.variables())
            .map(|vars| vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let spec = FunctionSpec {
            image_uri: out
                .code()
                .and_then(|c| c.image_uri())
                .unwrap_or_default()
                .to_string(),
            role_arn: conf.role().unwrap_or_default().to_string(),
            memory_mb: conf.memory_size().unwrap_or(128),
            timeout_seconds: conf.timeout().unwrap_or(3),
            architectures,
            environment,
            tracing_mode: conf
                .tracing_config()
                .and_then(|t| t.mode())
                .map_or("PassThrough", |m| m.as_str())
                .to_string(),
            dead_letter_target_arn: conf
                .dead_letter_config()
                .and_then(|d| d.target_arn())
                .unwrap_or_default()
                .to_string(),
            // A driver input, not a managed field.
            image_in_repository: desired.image_in_repository.clone(),
        };
        let tags = user_tags(out.tags().cloned().unwrap_or_default());
        // Its permission statements are proven ours by these tags (read once per walk).
        super::batch::note_function_tags(ctx.name(), &tags);
        Ok(Some(Observed {
            parent_owner: None,
            namesakes: 0,
            spec,
            tags,
            outputs: Self::outputs(ctx, conf.function_arn()),
        }))
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        desired: &FunctionSpec,
        tags: &Tags,
    ) -> Result<Outputs, DriverError> {
        Self::require_image(ctx, desired).await?;
        let create = || async {
            ctx.aws
                .lambda
                .create_function()
                .function_name(ctx.name())
                .package_type(PackageType::Image)
                .code(
                    FunctionCode::builder()
                        .image_uri(&desired.image_uri)
                        .build(),
                )
                .role(&desired.role_arn)
                .memory_size(desired.memory_mb)
                .timeout(desired.timeout_seconds)
                .set_architectures(Some(Self::architectures(desired)))
                .environment(Self::environment(desired))
                .tracing_config(Self::tracing(desired))
                .dead_letter_config(Self::dead_letter(desired))
                .set_tags(Some(tags.clone().into_iter().collect()))
                .send()
                .await
                .context(ctx.id, "lambda:CreateFunction")
        };
        let out = while_role_propagates(ROLE_PROPAGATION, create).await?;
        // A create answered Active needs no read-back (AWS answers Pending, and the waiter polls).
        if out.state() != Some(&State::Active) {
            Self::wait_active(ctx).await?;
        }
        Ok(Self::outputs(ctx, out.function_arn()))
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        desired: &FunctionSpec,
        tags: &Tags,
        observed: &Observed<FunctionSpec>,
        changes: &Changes,
    ) -> Result<Outputs, DriverError> {
        if changes.touches_any(&["imageUri", "architectures"]) {
            if changes.touches("imageUri") {
                Self::require_image(ctx, desired).await?;
            }
            // A previous update may still be in progress.
            Self::wait_updated(ctx).await?;
            ctx.aws
                .lambda
                .update_function_code()
                .function_name(ctx.name())
                .image_uri(&desired.image_uri)
                .set_architectures(Some(Self::architectures(desired)))
                .send()
                .await
                .context(ctx.id, "lambda:UpdateFunctionCode")?;
        }
        if changes.touches_any(&CONFIG_FIELDS) {
            Self::wait_updated(ctx).await?;
            let update = || async {
                let mut call = ctx
                    .aws
                    .lambda
                    .update_function_configuration()
                    .function_name(ctx.name());
                if changes.touches("roleArn") {
                    call = call.role(&desired.role_arn);
                }
                if changes.touches("memoryMb") {
                    call = call.memory_size(desired.memory_mb);
                }
                if changes.touches("timeoutSeconds") {
                    call = call.timeout(desired.timeout_seconds);
                }
                if changes.touches("environment") {
                    call = call.environment(Self::environment(desired));
                }
                if changes.touches("tracingMode") {
                    call = call.tracing_config(Self::tracing(desired));
                }
                if changes.touches("deadLetterTargetArn") {
                    call = call.dead_letter_config(Self::dead_letter(desired));
                }
                call.send()
                    .await
                    .context(ctx.id, "lambda:UpdateFunctionConfiguration")
            };
            // A new role may not be assumable yet.
            while_role_propagates(ROLE_PROPAGATION, update).await?;
        }
        if changes.touches("tags") {
            let arn = observed.outputs.arn.clone().unwrap_or_default();
            sync_tags(self, ctx, &arn, tags, &observed.tags).await?;
        }
        // The next update, or the state machine using the function, must not meet an update in progress.
        if changes.top_fields().iter().any(|f| *f != "tags") {
            Self::wait_updated(ctx).await?;
        }
        Ok(observed.outputs.clone())
    }

    async fn delete(
        &self,
        ctx: &Ctx<'_>,
        _observed: &Observed<FunctionSpec>,
    ) -> Result<(), AwsError> {
        ctx.aws
            .lambda
            .delete_function()
            .function_name(ctx.name())
            .send()
            .await
            .context(ctx.id, "lambda:DeleteFunction")
            .optional()?;
        Ok(())
    }
}
