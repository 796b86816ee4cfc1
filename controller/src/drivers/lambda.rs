//! Lambda functions (container images): image, role, memory, timeout, architectures, environment,
//! tracing, dead-letter target and tags. The image is checked in ECR before it is used, so a pipeline
//! whose image is not pushed yet waits with a clear message instead of failing.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_lambda::types::{
    Architecture, DeadLetterConfig, Environment, FunctionCode, LastUpdateStatus, PackageType,
    State, TracingConfig, TracingMode,
};
use backon::{ExponentialBuilder, Retryable};

use crate::aws::{AwsError, ResultExt};
use crate::desired::{FunctionSpec, Tags};

use super::{tag_delta, user_tags, Changes, Ctx, Driver, Observed, Outputs};

pub struct Functions;

fn resource(name: &str) -> String {
    format!("Function {name}")
}

/// Configuration fields that one `UpdateFunctionConfiguration` call sets (serde names).
const CONFIG_FIELDS: [&str; 6] = [
    "roleArn",
    "memoryMb",
    "timeoutSeconds",
    "environment",
    "tracingMode",
    "deadLetterTargetArn",
];

/// How often and how long to poll a function until it is ready (ministack is Pending for ~0.5 s; AWS
/// takes seconds to pull an image).
const POLL_INTERVAL: Duration = Duration::from_millis(250);
const POLL_LIMIT: Duration = Duration::from_secs(60);

/// Backoff for calls that fail while a role created a moment ago is not yet assumable by Lambda
/// (IAM is eventually consistent): about 30 s in all.
fn role_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(10)
        .with_total_delay(Some(Duration::from_secs(30)))
        .with_jitter()
}

/// Whether a failed create/update may succeed if simply retried: a role not yet assumable, throttling.
/// `ResourceConflictException` is excluded: on create it means the function already exists.
fn retryable(e: &AwsError) -> bool {
    e.is_transient() && e.code.as_deref() != Some("ResourceConflictException")
}

/// The unqualified function ARN (`…:function:name`, without a version or alias).
fn unqualified(arn: &str) -> String {
    arn.split(':').take(7).collect::<Vec<_>>().join(":")
}

impl Functions {
    fn arn(ctx: &Ctx<'_>, name: &str) -> String {
        format!(
            "arn:{}:lambda:{}:{}:function:{name}",
            ctx.aws.partition, ctx.aws.region, ctx.aws.account_id
        )
    }

    /// When the image lives in the stack's repository, it must be pushed before the function uses it.
    /// ECR answers a missing tag with `ImageNotFoundException` (some emulators: an empty list).
    async fn require_image(
        ctx: &Ctx<'_>,
        name: &str,
        desired: &FunctionSpec,
    ) -> Result<(), AwsError> {
        let Some(image) = &desired.image_in_repository else {
            return Ok(());
        };
        let found = match ctx
            .aws
            .ecr
            .describe_images()
            .repository_name(&image.repository)
            .image_ids(
                aws_sdk_ecr::types::ImageIdentifier::builder()
                    .image_tag(&image.tag)
                    .build(),
            )
            .send()
            .await
            .context(resource(name), "ecr:DescribeImages")
        {
            Ok(out) => !out.image_details().is_empty(),
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(e),
        };
        if found {
            return Ok(());
        }
        Err(AwsError::waiting(
            resource(name),
            "ecr:DescribeImages",
            format!(
                "push image {} (repository {}, tag {}) to ECR; the pipeline continues once it is there",
                desired.image_uri, image.repository, image.tag
            ),
        ))
    }

    /// Polls until the function is Active and no update is in progress (bounded).
    async fn wait_ready(ctx: &Ctx<'_>, name: &str) -> Result<(), AwsError> {
        let deadline = tokio::time::Instant::now() + POLL_LIMIT;
        loop {
            let conf = ctx
                .aws
                .lambda
                .get_function_configuration()
                .function_name(name)
                .send()
                .await
                .context(resource(name), "lambda:GetFunctionConfiguration")?;
            let state = conf.state().cloned();
            let update = conf.last_update_status().cloned();
            if state == Some(State::Failed) {
                return Err(AwsError::terminal(
                    resource(name),
                    "lambda:GetFunctionConfiguration",
                    format!(
                        "the function failed to become active: {}",
                        conf.state_reason().unwrap_or("no reason given")
                    ),
                ));
            }
            if update == Some(LastUpdateStatus::Failed) {
                return Err(AwsError::terminal(
                    resource(name),
                    "lambda:GetFunctionConfiguration",
                    format!(
                        "the last update failed: {}",
                        conf.last_update_status_reason()
                            .unwrap_or("no reason given")
                    ),
                ));
            }
            let active = matches!(state, None | Some(State::Active));
            let settled = !matches!(update, Some(LastUpdateStatus::InProgress));
            if active && settled {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AwsError::transient(
                    resource(name),
                    "lambda:GetFunctionConfiguration",
                    format!(
                        "not ready after {} s (state {}, last update {})",
                        POLL_LIMIT.as_secs(),
                        state.as_ref().map_or("unknown", |s| s.as_str()),
                        update.as_ref().map_or("unknown", |u| u.as_str())
                    ),
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
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
}

impl Driver for Functions {
    type Spec = FunctionSpec;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &FunctionSpec,
    ) -> Result<Option<Observed<FunctionSpec>>, AwsError> {
        let out = match ctx
            .aws
            .lambda
            .get_function()
            .function_name(name)
            .send()
            .await
            .context(resource(name), "lambda:GetFunction")
        {
            Ok(out) => out,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(conf) = out.configuration() else {
            return Err(AwsError::terminal(
                resource(name),
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
        let arn = conf
            .function_arn()
            .map(unqualified)
            .unwrap_or_else(|| Self::arn(ctx, name));
        Ok(Some(Observed {
            spec,
            tags: user_tags(out.tags().cloned().unwrap_or_default()),
            outputs: Outputs {
                arn: Some(arn),
                ..Default::default()
            },
        }))
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &FunctionSpec,
        tags: &Tags,
    ) -> Result<Outputs, AwsError> {
        Self::require_image(ctx, name, desired).await?;
        let create = || async {
            ctx.aws
                .lambda
                .create_function()
                .function_name(name)
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
                .tracing_config(
                    TracingConfig::builder()
                        .mode(TracingMode::from(desired.tracing_mode.as_str()))
                        .build(),
                )
                .dead_letter_config(
                    DeadLetterConfig::builder()
                        .target_arn(&desired.dead_letter_target_arn)
                        .build(),
                )
                .set_tags(Some(tags.clone().into_iter().collect()))
                .send()
                .await
                .context(resource(name), "lambda:CreateFunction")
        };
        let out = create.retry(role_backoff()).when(retryable).await?;
        Self::wait_ready(ctx, name).await?;
        let arn = out
            .function_arn()
            .map(unqualified)
            .unwrap_or_else(|| Self::arn(ctx, name));
        Ok(Outputs {
            arn: Some(arn),
            ..Default::default()
        })
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &FunctionSpec,
        tags: &Tags,
        observed: &Observed<FunctionSpec>,
        changes: &Changes,
    ) -> Result<Outputs, AwsError> {
        if changes.touches_any(&["imageUri", "architectures"]) {
            if changes.touches("imageUri") {
                Self::require_image(ctx, name, desired).await?;
            }
            // A previous update may still be in progress.
            Self::wait_ready(ctx, name).await?;
            ctx.aws
                .lambda
                .update_function_code()
                .function_name(name)
                .image_uri(&desired.image_uri)
                .set_architectures(Some(Self::architectures(desired)))
                .send()
                .await
                .context(resource(name), "lambda:UpdateFunctionCode")?;
            Self::wait_ready(ctx, name).await?;
        }
        if changes.touches_any(&CONFIG_FIELDS) {
            Self::wait_ready(ctx, name).await?;
            let update = || async {
                let mut call = ctx
                    .aws
                    .lambda
                    .update_function_configuration()
                    .function_name(name);
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
                    call = call.tracing_config(
                        TracingConfig::builder()
                            .mode(TracingMode::from(desired.tracing_mode.as_str()))
                            .build(),
                    );
                }
                if changes.touches("deadLetterTargetArn") {
                    call = call.dead_letter_config(
                        DeadLetterConfig::builder()
                            .target_arn(&desired.dead_letter_target_arn)
                            .build(),
                    );
                }
                call.send()
                    .await
                    .context(resource(name), "lambda:UpdateFunctionConfiguration")
            };
            // A new role may not be assumable yet.
            update.retry(role_backoff()).when(retryable).await?;
            Self::wait_ready(ctx, name).await?;
        }
        if changes.touches("tags") {
            let arn = observed
                .outputs
                .arn
                .clone()
                .unwrap_or_else(|| Self::arn(ctx, name));
            let (set, remove) = tag_delta(tags, &observed.tags);
            if !set.is_empty() {
                ctx.aws
                    .lambda
                    .tag_resource()
                    .resource(&arn)
                    .set_tags(Some(set.into_iter().collect()))
                    .send()
                    .await
                    .context(resource(name), "lambda:TagResource")?;
            }
            if !remove.is_empty() {
                ctx.aws
                    .lambda
                    .untag_resource()
                    .resource(&arn)
                    .set_tag_keys(Some(remove))
                    .send()
                    .await
                    .context(resource(name), "lambda:UntagResource")?;
            }
        }
        Ok(observed.outputs.clone())
    }

    async fn delete(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        _observed: &Observed<FunctionSpec>,
    ) -> Result<(), AwsError> {
        match ctx
            .aws
            .lambda
            .delete_function()
            .function_name(name)
            .send()
            .await
            .context(resource(name), "lambda:DeleteFunction")
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unqualified_arn_drops_version_or_alias() {
        assert_eq!(
            unqualified("arn:aws:lambda:us-east-1:123456789012:function:f:$LATEST"),
            "arn:aws:lambda:us-east-1:123456789012:function:f"
        );
        assert_eq!(
            unqualified("arn:aws:lambda:us-east-1:123456789012:function:f"),
            "arn:aws:lambda:us-east-1:123456789012:function:f"
        );
    }
}
