//! ECR repositories: scan on push, tag mutability, the repository policy, tags. Also answers whether an
//! image tag has been pushed (the Lambda driver waits for it).

use serde_json::Value;

use aws_sdk_ecr::types::{
    ImageIdentifier, ImageScanningConfiguration, ImageTagMutability, Repository, Tag,
};

use crate::aws::{AwsError, Optional, ResultExt};
use crate::desired::policies::parse_policy;
use crate::desired::{RepositorySpec, Tags};

use super::{sync_tags, user_tags, Changes, Ctx, Driver, DriverError, Observed, Outputs, TagApi};

pub struct Repositories;

fn aws_tags(ctx: &Ctx<'_>, tags: &Tags) -> Result<Vec<Tag>, AwsError> {
    tags.iter()
        .map(|(k, v)| {
            Tag::builder().key(k).value(v).build().map_err(|e| {
                AwsError::terminal(ctx.id, "ecr:TagResource", format!("invalid request: {e}"))
            })
        })
        .collect()
}

/// Whether `repository` holds an image tagged `tag`. A missing image (AWS: `ImageNotFoundException`;
/// ministack: an empty list) or a missing repository is `false`.
pub async fn image_exists(ctx: &Ctx<'_>, repository: &str, tag: &str) -> Result<bool, AwsError> {
    let found = ctx
        .aws
        .ecr
        .describe_images()
        .repository_name(repository)
        .image_ids(ImageIdentifier::builder().image_tag(tag).build())
        .send()
        .await
        .context(ctx.id, "ecr:DescribeImages")
        .optional()?;
    Ok(found.is_some_and(|out| {
        out.image_details()
            .iter()
            .any(|d| d.image_tags().iter().any(|t| t == tag))
    }))
}

impl Repositories {
    /// The repository, from the walk's batch if it has it.
    async fn find(ctx: &Ctx<'_>) -> Result<Option<Repository>, AwsError> {
        match super::batch::repository(ctx).await {
            Some(repository) => Ok(Some(repository)),
            None => Self::describe(ctx).await,
        }
    }

    async fn tags(ctx: &Ctx<'_>, arn: &str) -> Result<Tags, AwsError> {
        super::batch::tags_or(ctx, arn, || async {
            let tags = ctx
                .aws
                .ecr
                .list_tags_for_resource()
                .resource_arn(arn)
                .send()
                .await
                .context(ctx.id, "ecr:ListTagsForResource")?;
            Ok(user_tags(
                tags.tags()
                    .iter()
                    .map(|t| (t.key().to_string(), t.value().to_string())),
            ))
        })
        .await
    }

    /// Repository `ctx.name()` on its own (`DescribeRepositories` of that one name).
    async fn describe(ctx: &Ctx<'_>) -> Result<Option<Repository>, AwsError> {
        Ok(ctx
            .aws
            .ecr
            .describe_repositories()
            .repository_names(ctx.name())
            .send()
            .await
            .context(ctx.id, "ecr:DescribeRepositories")
            .optional()?
            .and_then(|out| {
                out.repositories
                    .unwrap_or_default()
                    .into_iter()
                    .find(|r| r.repository_name() == Some(ctx.name()))
            }))
    }

    fn outputs(repository: &Repository) -> Outputs {
        Outputs {
            arn: repository.repository_arn().map(str::to_string),
            id: repository.repository_name().map(str::to_string),
            url: repository.repository_uri().map(str::to_string),
            ..Default::default()
        }
    }

    async fn put_policy(ctx: &Ctx<'_>, policy: &Value) -> Result<(), AwsError> {
        if policy.is_null() {
            ctx.aws
                .ecr
                .delete_repository_policy()
                .repository_name(ctx.name())
                .send()
                .await
                .context(ctx.id, "ecr:DeleteRepositoryPolicy")
                .optional()?;
            return Ok(());
        }
        ctx.aws
            .ecr
            .set_repository_policy()
            .repository_name(ctx.name())
            .policy_text(policy.to_string())
            .send()
            .await
            .context(ctx.id, "ecr:SetRepositoryPolicy")?;
        Ok(())
    }
}

impl TagApi for Repositories {
    async fn tag(&self, ctx: &Ctx<'_>, arn: &str, tags: Tags) -> Result<(), AwsError> {
        ctx.aws
            .ecr
            .tag_resource()
            .resource_arn(arn)
            .set_tags(Some(aws_tags(ctx, &tags)?))
            .send()
            .await
            .context(ctx.id, "ecr:TagResource")?;
        Ok(())
    }

    async fn untag(&self, ctx: &Ctx<'_>, arn: &str, keys: Vec<String>) -> Result<(), AwsError> {
        ctx.aws
            .ecr
            .untag_resource()
            .resource_arn(arn)
            .set_tag_keys(Some(keys))
            .send()
            .await
            .context(ctx.id, "ecr:UntagResource")?;
        Ok(())
    }
}

impl Driver for Repositories {
    type Spec = RepositorySpec;

    /// `CreateRepository` answers `RepositoryAlreadyExistsException`.
    const CREATE_REFUSES_EXISTING: bool = true;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        _desired: &RepositorySpec,
    ) -> Result<Option<Observed<RepositorySpec>>, AwsError> {
        let Some(repository) = Self::find(ctx).await? else {
            return Ok(None);
        };
        let outputs = Self::outputs(&repository);
        let arn = outputs.arn.clone().unwrap_or_default();
        let policy = async {
            Ok::<_, AwsError>(
                ctx.aws
                    .ecr
                    .get_repository_policy()
                    .repository_name(ctx.name())
                    .send()
                    .await
                    .context(ctx.id, "ecr:GetRepositoryPolicy")
                    .optional()?
                    .and_then(|out| out.policy_text().map(parse_policy))
                    .unwrap_or(Value::Null),
            )
        };
        let tags = Self::tags(ctx, &arn);
        let (policy, tags) = tokio::try_join!(policy, tags)?;
        Ok(Some(Observed {
            parent_owner: None,
            namesakes: 0,
            spec: RepositorySpec {
                scan_on_push: repository
                    .image_scanning_configuration()
                    .is_some_and(|c| c.scan_on_push()),
                // AWS's default when unset is MUTABLE.
                tag_mutability: repository
                    .image_tag_mutability()
                    .map(|m| m.as_str().to_string())
                    .unwrap_or_else(|| ImageTagMutability::Mutable.as_str().to_string()),
                policy,
            },
            tags,
            outputs,
        }))
    }

    /// The repository and its tags: no policy read.
    async fn observe_owner(
        &self,
        ctx: &Ctx<'_>,
        desired: &RepositorySpec,
    ) -> Result<Option<Observed<RepositorySpec>>, AwsError> {
        let Some(repository) = Self::find(ctx).await? else {
            return Ok(None);
        };
        let outputs = Self::outputs(&repository);
        let tags = Self::tags(ctx, outputs.arn.as_deref().unwrap_or_default()).await?;
        Ok(Some(Observed::new(desired.clone(), tags, outputs)))
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        desired: &RepositorySpec,
        tags: &Tags,
    ) -> Result<Outputs, DriverError> {
        let created = ctx
            .aws
            .ecr
            .create_repository()
            .repository_name(ctx.name())
            .image_scanning_configuration(
                ImageScanningConfiguration::builder()
                    .scan_on_push(desired.scan_on_push)
                    .build(),
            )
            .image_tag_mutability(ImageTagMutability::from(desired.tag_mutability.as_str()))
            .set_tags(
                (!tags.is_empty())
                    .then(|| aws_tags(ctx, tags))
                    .transpose()?,
            )
            .send()
            .await
            .context(ctx.id, "ecr:CreateRepository")?;
        if !desired.policy.is_null() {
            Self::put_policy(ctx, &desired.policy).await?;
        }
        Ok(created.repository().map(Self::outputs).unwrap_or_default())
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        desired: &RepositorySpec,
        tags: &Tags,
        observed: &Observed<RepositorySpec>,
        changes: &Changes,
    ) -> Result<Outputs, DriverError> {
        if changes.touches("scanOnPush") {
            ctx.aws
                .ecr
                .put_image_scanning_configuration()
                .repository_name(ctx.name())
                .image_scanning_configuration(
                    ImageScanningConfiguration::builder()
                        .scan_on_push(desired.scan_on_push)
                        .build(),
                )
                .send()
                .await
                .context(ctx.id, "ecr:PutImageScanningConfiguration")?;
        }
        if changes.touches("tagMutability") {
            ctx.aws
                .ecr
                .put_image_tag_mutability()
                .repository_name(ctx.name())
                .image_tag_mutability(ImageTagMutability::from(desired.tag_mutability.as_str()))
                .send()
                .await
                .context(ctx.id, "ecr:PutImageTagMutability")?;
        }
        if changes.touches("policy") {
            Self::put_policy(ctx, &desired.policy).await?;
        }
        if changes.touches("tags") {
            let arn = observed.outputs.arn.clone().unwrap_or_default();
            sync_tags(self, ctx, &arn, tags, &observed.tags).await?;
        }
        Ok(observed.outputs.clone())
    }

    async fn delete(
        &self,
        ctx: &Ctx<'_>,
        _observed: &Observed<RepositorySpec>,
    ) -> Result<(), AwsError> {
        // force: the images go with the repository (they are rebuilt from source, not data).
        ctx.aws
            .ecr
            .delete_repository()
            .repository_name(ctx.name())
            .force(true)
            .send()
            .await
            .context(ctx.id, "ecr:DeleteRepository")
            .optional()?;
        Ok(())
    }
}
