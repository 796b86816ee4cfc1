//! ECR repositories: scan on push, tag mutability, the repository policy, tags. Also answers whether an
//! image tag has been pushed (the Lambda driver waits for it).

use serde_json::Value;

use aws_sdk_ecr::types::{
    ImageIdentifier, ImageScanningConfiguration, ImageTagMutability, Repository, Tag,
};

use crate::aws::{Aws, AwsError, ResultExt};
use crate::desired::{RepositorySpec, Tags};

use super::{parse_policy, tag_delta, user_tags, Changes, Ctx, Driver, Observed, Outputs};

pub struct Repositories;

fn resource(name: &str) -> String {
    format!("Repository {name}")
}

fn aws_tags(name: &str, tags: &Tags) -> Result<Vec<Tag>, AwsError> {
    tags.iter()
        .map(|(k, v)| {
            Tag::builder().key(k).value(v).build().map_err(|e| {
                AwsError::terminal(
                    resource(name),
                    "ecr:TagResource",
                    format!("invalid request: {e}"),
                )
            })
        })
        .collect()
}

/// Whether `repository` holds an image tagged `tag`. A missing image (AWS: `ImageNotFoundException`;
/// ministack: an empty list) or a missing repository is `false`.
pub async fn image_exists(aws: &Aws, repository: &str, tag: &str) -> Result<bool, AwsError> {
    match aws
        .ecr
        .describe_images()
        .repository_name(repository)
        .image_ids(ImageIdentifier::builder().image_tag(tag).build())
        .send()
        .await
        .context(format!("Repository {repository}"), "ecr:DescribeImages")
    {
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
        Ok(out) => Ok(out
            .image_details()
            .iter()
            .any(|d| d.image_tags().iter().any(|t| t == tag))),
    }
}

impl Repositories {
    fn outputs(repository: &Repository) -> Outputs {
        Outputs {
            arn: repository.repository_arn().map(str::to_string),
            id: repository.repository_name().map(str::to_string),
            url: repository.repository_uri().map(str::to_string),
            ..Default::default()
        }
    }

    async fn put_policy(ctx: &Ctx<'_>, name: &str, policy: &Value) -> Result<(), AwsError> {
        if policy.is_null() {
            return match ctx
                .aws
                .ecr
                .delete_repository_policy()
                .repository_name(name)
                .send()
                .await
                .context(resource(name), "ecr:DeleteRepositoryPolicy")
            {
                Err(e) if e.is_not_found() => Ok(()),
                other => other.map(|_| ()),
            };
        }
        ctx.aws
            .ecr
            .set_repository_policy()
            .repository_name(name)
            .policy_text(policy.to_string())
            .send()
            .await
            .context(resource(name), "ecr:SetRepositoryPolicy")?;
        Ok(())
    }
}

impl Driver for Repositories {
    type Spec = RepositorySpec;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        _desired: &RepositorySpec,
    ) -> Result<Option<Observed<RepositorySpec>>, AwsError> {
        let described = match ctx
            .aws
            .ecr
            .describe_repositories()
            .repository_names(name)
            .send()
            .await
            .context(resource(name), "ecr:DescribeRepositories")
        {
            Err(e) if e.is_not_found() => return Ok(None),
            other => other?,
        };
        let Some(repository) = described
            .repositories()
            .iter()
            .find(|r| r.repository_name() == Some(name))
        else {
            return Ok(None);
        };
        let policy = match ctx
            .aws
            .ecr
            .get_repository_policy()
            .repository_name(name)
            .send()
            .await
            .context(resource(name), "ecr:GetRepositoryPolicy")
        {
            Err(e) if e.is_not_found() => Value::Null,
            other => other?
                .policy_text()
                .map(parse_policy)
                .unwrap_or(Value::Null),
        };
        let outputs = Self::outputs(repository);
        let tags = ctx
            .aws
            .ecr
            .list_tags_for_resource()
            .resource_arn(outputs.arn.clone().unwrap_or_default())
            .send()
            .await
            .context(resource(name), "ecr:ListTagsForResource")?;
        Ok(Some(Observed {
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
            tags: user_tags(
                tags.tags()
                    .iter()
                    .map(|t| (t.key().to_string(), t.value().to_string())),
            ),
            outputs,
        }))
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &RepositorySpec,
        tags: &Tags,
    ) -> Result<Outputs, AwsError> {
        let created = ctx
            .aws
            .ecr
            .create_repository()
            .repository_name(name)
            .image_scanning_configuration(
                ImageScanningConfiguration::builder()
                    .scan_on_push(desired.scan_on_push)
                    .build(),
            )
            .image_tag_mutability(ImageTagMutability::from(desired.tag_mutability.as_str()))
            .set_tags(
                (!tags.is_empty())
                    .then(|| aws_tags(name, tags))
                    .transpose()?,
            )
            .send()
            .await
            .context(resource(name), "ecr:CreateRepository")?;
        if !desired.policy.is_null() {
            Self::put_policy(ctx, name, &desired.policy).await?;
        }
        Ok(created.repository().map(Self::outputs).unwrap_or_default())
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &RepositorySpec,
        tags: &Tags,
        observed: &Observed<RepositorySpec>,
        changes: &Changes,
    ) -> Result<Outputs, AwsError> {
        if changes.touches("scanOnPush") {
            ctx.aws
                .ecr
                .put_image_scanning_configuration()
                .repository_name(name)
                .image_scanning_configuration(
                    ImageScanningConfiguration::builder()
                        .scan_on_push(desired.scan_on_push)
                        .build(),
                )
                .send()
                .await
                .context(resource(name), "ecr:PutImageScanningConfiguration")?;
        }
        if changes.touches("tagMutability") {
            ctx.aws
                .ecr
                .put_image_tag_mutability()
                .repository_name(name)
                .image_tag_mutability(ImageTagMutability::from(desired.tag_mutability.as_str()))
                .send()
                .await
                .context(resource(name), "ecr:PutImageTagMutability")?;
        }
        if changes.touches("policy") {
            Self::put_policy(ctx, name, &desired.policy).await?;
        }
        if changes.touches("tags") {
            let arn = observed.outputs.arn.clone().unwrap_or_default();
            let (set, remove) = tag_delta(tags, &observed.tags);
            if !set.is_empty() {
                ctx.aws
                    .ecr
                    .tag_resource()
                    .resource_arn(&arn)
                    .set_tags(Some(aws_tags(name, &set)?))
                    .send()
                    .await
                    .context(resource(name), "ecr:TagResource")?;
            }
            if !remove.is_empty() {
                ctx.aws
                    .ecr
                    .untag_resource()
                    .resource_arn(&arn)
                    .set_tag_keys(Some(remove))
                    .send()
                    .await
                    .context(resource(name), "ecr:UntagResource")?;
            }
        }
        Ok(observed.outputs.clone())
    }

    async fn delete(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        _observed: &Observed<RepositorySpec>,
    ) -> Result<(), AwsError> {
        // force: the images go with the repository (they are rebuilt from source, not data).
        match ctx
            .aws
            .ecr
            .delete_repository()
            .repository_name(name)
            .force(true)
            .send()
            .await
            .context(resource(name), "ecr:DeleteRepository")
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }
}
