//! S3 buckets: default encryption, public access block, versioning, the Lambda notification on new
//! objects, tags. Deletion empties the bucket first.

use aws_sdk_s3::types::{
    BucketLocationConstraint, BucketVersioningStatus, CreateBucketConfiguration, Delete, Event,
    FilterRule, FilterRuleName, LambdaFunctionConfiguration, NotificationConfiguration,
    NotificationConfigurationFilter, ObjectIdentifier, PublicAccessBlockConfiguration, S3KeyFilter,
    ServerSideEncryption, ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration,
    ServerSideEncryptionRule, Tag, Tagging, VersioningConfiguration,
};

use crate::aws::{AwsError, Optional, ResultExt};
use crate::desired::{BucketNotification, BucketSpec, Tags};

use super::{user_tags, Changes, Ctx, Driver, DriverError, Observed, Outputs};

pub struct Buckets;

/// A request the SDK refused to build (a required field missing): a bug of ours, not AWS's.
fn build_error(
    ctx: &Ctx<'_>,
    call: &str,
) -> impl FnOnce(aws_sdk_s3::error::BuildError) -> AwsError {
    let resource = ctx.id.to_string();
    let call = call.to_string();
    move |e| AwsError::terminal(resource, call, format!("invalid request: {e}"))
}

/// `DeleteObjects` takes at most 1000 keys per call.
const DELETE_BATCH: usize = 1000;

impl Buckets {
    fn outputs(ctx: &Ctx<'_>) -> Outputs {
        Outputs {
            arn: Some(ctx.arns().bucket(ctx.name())),
            id: Some(ctx.name().to_string()),
            ..Default::default()
        }
    }

    /// The bucket's tags (none when it has no tag set); `NoSuchBucket` is an error: there is no bucket.
    async fn read_tags(ctx: &Ctx<'_>) -> Result<Tags, AwsError> {
        let answer = match ctx
            .aws
            .s3
            .get_bucket_tagging()
            .bucket(ctx.name())
            .send()
            .await
            .context(ctx.id, "s3:GetBucketTagging")
        {
            Err(e) if e.code.as_deref() == Some("NoSuchBucket") => return Err(e),
            read => read.optional()?,
        };
        Ok(answer
            .map(|out| {
                user_tags(
                    out.tag_set()
                        .iter()
                        .map(|t| (t.key().to_string(), t.value().to_string())),
                )
            })
            .unwrap_or_default())
    }

    async fn put_tags(ctx: &Ctx<'_>, tags: &Tags) -> Result<(), AwsError> {
        if tags.is_empty() {
            ctx.aws
                .s3
                .delete_bucket_tagging()
                .bucket(ctx.name())
                .send()
                .await
                .context(ctx.id, "s3:DeleteBucketTagging")?;
            return Ok(());
        }
        let tag_set = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(build_error(ctx, "s3:PutBucketTagging"))?;
        let tagging = Tagging::builder()
            .set_tag_set(Some(tag_set))
            .build()
            .map_err(build_error(ctx, "s3:PutBucketTagging"))?;
        ctx.aws
            .s3
            .put_bucket_tagging()
            .bucket(ctx.name())
            .tagging(tagging)
            .send()
            .await
            .context(ctx.id, "s3:PutBucketTagging")?;
        Ok(())
    }

    async fn put_encryption(ctx: &Ctx<'_>, desired: &BucketSpec) -> Result<(), AwsError> {
        let by_default = ServerSideEncryptionByDefault::builder()
            .sse_algorithm(ServerSideEncryption::from(desired.encryption.as_str()))
            .build()
            .map_err(build_error(ctx, "s3:PutBucketEncryption"))?;
        let configuration = ServerSideEncryptionConfiguration::builder()
            .rules(
                ServerSideEncryptionRule::builder()
                    .apply_server_side_encryption_by_default(by_default)
                    .build(),
            )
            .build()
            .map_err(build_error(ctx, "s3:PutBucketEncryption"))?;
        ctx.aws
            .s3
            .put_bucket_encryption()
            .bucket(ctx.name())
            .server_side_encryption_configuration(configuration)
            .send()
            .await
            .context(ctx.id, "s3:PutBucketEncryption")?;
        Ok(())
    }

    async fn put_public_access_block(ctx: &Ctx<'_>, desired: &BucketSpec) -> Result<(), AwsError> {
        let on = desired.block_public_access;
        ctx.aws
            .s3
            .put_public_access_block()
            .bucket(ctx.name())
            .public_access_block_configuration(
                PublicAccessBlockConfiguration::builder()
                    .block_public_acls(on)
                    .ignore_public_acls(on)
                    .block_public_policy(on)
                    .restrict_public_buckets(on)
                    .build(),
            )
            .send()
            .await
            .context(ctx.id, "s3:PutPublicAccessBlock")?;
        Ok(())
    }

    async fn put_versioning(ctx: &Ctx<'_>, desired: &BucketSpec) -> Result<(), AwsError> {
        // A bucket once versioned can only be suspended, never un-versioned.
        let status = if desired.versioning {
            BucketVersioningStatus::Enabled
        } else {
            BucketVersioningStatus::Suspended
        };
        ctx.aws
            .s3
            .put_bucket_versioning()
            .bucket(ctx.name())
            .versioning_configuration(VersioningConfiguration::builder().status(status).build())
            .send()
            .await
            .context(ctx.id, "s3:PutBucketVersioning")?;
        Ok(())
    }

    fn lambda_configuration(
        ctx: &Ctx<'_>,
        n: &BucketNotification,
    ) -> Result<LambdaFunctionConfiguration, AwsError> {
        let filter = NotificationConfigurationFilter::builder()
            .key(
                S3KeyFilter::builder()
                    .filter_rules(
                        FilterRule::builder()
                            .name(FilterRuleName::Prefix)
                            .value(&n.prefix)
                            .build(),
                    )
                    .build(),
            )
            .build();
        LambdaFunctionConfiguration::builder()
            .id(&n.id)
            .lambda_function_arn(&n.function_arn)
            .set_events(Some(
                n.events.iter().map(|e| Event::from(e.as_str())).collect(),
            ))
            .filter(filter)
            .build()
            .map_err(build_error(ctx, "s3:PutBucketNotificationConfiguration"))
    }

    /// Puts our notification, keeping any other configuration already on the bucket (replacing ours).
    async fn put_notification(
        ctx: &Ctx<'_>,
        desired: &BucketSpec,
        keep_others: bool,
    ) -> Result<(), AwsError> {
        let ours = &desired.notification;
        let mut configuration = NotificationConfiguration::builder();
        if keep_others {
            let current = ctx
                .aws
                .s3
                .get_bucket_notification_configuration()
                .bucket(ctx.name())
                .send()
                .await
                .context(ctx.id, "s3:GetBucketNotificationConfiguration")?;
            for other in current.lambda_function_configurations() {
                if other.id() != Some(ours.id.as_str())
                    && other.lambda_function_arn() != ours.function_arn
                {
                    configuration = configuration.lambda_function_configurations(other.clone());
                }
            }
            configuration = configuration
                .set_queue_configurations(current.queue_configurations.clone())
                .set_topic_configurations(current.topic_configurations.clone())
                .set_event_bridge_configuration(current.event_bridge_configuration.clone());
        }
        configuration =
            configuration.lambda_function_configurations(Self::lambda_configuration(ctx, ours)?);
        ctx.aws
            .s3
            .put_bucket_notification_configuration()
            .bucket(ctx.name())
            .notification_configuration(configuration.build())
            .send()
            .await
            .context(ctx.id, "s3:PutBucketNotificationConfiguration")?;
        Ok(())
    }

    /// Deletes every object version and delete marker, page by page (≤ 1000 keys per `DeleteObjects`).
    /// Each round lists from the start again (what was listed before is deleted), so no page marker ever
    /// points at a version that no longer exists.
    async fn empty(ctx: &Ctx<'_>) -> Result<(), AwsError> {
        let mut previous_first: Option<(String, Option<String>)> = None;
        loop {
            let page = ctx
                .aws
                .s3
                .list_object_versions()
                .bucket(ctx.name())
                .send()
                .await
                .context(ctx.id, "s3:ListObjectVersions")?;
            let first = page
                .versions()
                .iter()
                .map(|v| (v.key(), v.version_id()))
                .chain(
                    page.delete_markers()
                        .iter()
                        .map(|m| (m.key(), m.version_id())),
                )
                .find_map(|(k, v)| k.map(|k| (k.to_string(), v.map(str::to_string))));
            let Some(first) = first else { return Ok(()) };
            // The same version listed first twice: the previous round's deletes did not take.
            if previous_first.as_ref() == Some(&first) {
                return Err(AwsError::transient(
                    ctx.id,
                    "s3:DeleteObjects",
                    format!("object {} is still listed after it was deleted", first.0),
                ));
            }
            previous_first = Some(first);
            let mut ids = Vec::new();
            let versions = page.versions().iter().map(|v| (v.key(), v.version_id()));
            let markers = page
                .delete_markers()
                .iter()
                .map(|m| (m.key(), m.version_id()));
            for (key, version) in versions.chain(markers) {
                let Some(key) = key else { continue };
                ids.push(
                    ObjectIdentifier::builder()
                        .key(key)
                        .set_version_id(version.map(str::to_string))
                        .build()
                        .map_err(build_error(ctx, "s3:DeleteObjects"))?,
                );
            }
            for batch in ids.chunks(DELETE_BATCH) {
                let delete = Delete::builder()
                    .set_objects(Some(batch.to_vec()))
                    .quiet(true)
                    .build()
                    .map_err(build_error(ctx, "s3:DeleteObjects"))?;
                let out = ctx
                    .aws
                    .s3
                    .delete_objects()
                    .bucket(ctx.name())
                    .delete(delete)
                    .send()
                    .await
                    .context(ctx.id, "s3:DeleteObjects")?;
                if let Some(error) = out.errors().first() {
                    return Err(AwsError::transient(
                        ctx.id,
                        "s3:DeleteObjects",
                        format!(
                            "{} of {} objects not deleted, e.g. {}: {} {}",
                            out.errors().len(),
                            batch.len(),
                            error.key().unwrap_or_default(),
                            error.code().unwrap_or_default(),
                            error.message().unwrap_or_default()
                        ),
                    ));
                }
            }
        }
    }
}

impl Driver for Buckets {
    type Spec = BucketSpec;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        desired: &BucketSpec,
    ) -> Result<Option<Observed<BucketSpec>>, AwsError> {
        let s3 = &ctx.aws.s3;
        // Every bucket has an encryption setting (AWS encrypts all of them by default), so this read
        // doubles as the existence check: `NoSuchBucket` is absent, another not-found is no encryption.
        let encryption = match s3
            .get_bucket_encryption()
            .bucket(ctx.name())
            .send()
            .await
            .context(ctx.id, "s3:GetBucketEncryption")
        {
            Err(e) if e.code.as_deref() == Some("NoSuchBucket") => return Ok(None),
            read => read
                .optional()?
                .and_then(|out| {
                    out.server_side_encryption_configuration()
                        .and_then(|c| c.rules().first())
                        .and_then(|r| r.apply_server_side_encryption_by_default())
                        .map(|d| d.sse_algorithm().as_str().to_string())
                })
                .unwrap_or_default(),
        };
        // The other settings are independent reads: at once.
        let public_access = async {
            s3.get_public_access_block()
                .bucket(ctx.name())
                .send()
                .await
                .context(ctx.id, "s3:GetPublicAccessBlock")
                .optional()
        };
        let versioning = async {
            s3.get_bucket_versioning()
                .bucket(ctx.name())
                .send()
                .await
                .context(ctx.id, "s3:GetBucketVersioning")
        };
        let notifications = async {
            s3.get_bucket_notification_configuration()
                .bucket(ctx.name())
                .send()
                .await
                .context(ctx.id, "s3:GetBucketNotificationConfiguration")
        };
        let arn = ctx.arns().bucket(ctx.name());
        let tags = super::batch::tags_or(ctx, &arn, || Self::read_tags(ctx));
        let (public_access, versioning, notifications, tags) =
            tokio::try_join!(public_access, versioning, notifications, tags)?;
        let block_public_access = public_access.is_some_and(|out| {
            out.public_access_block_configuration().is_some_and(|c| {
                c.block_public_acls() == Some(true)
                    && c.ignore_public_acls() == Some(true)
                    && c.block_public_policy() == Some(true)
                    && c.restrict_public_buckets() == Some(true)
            })
        });
        let versioning = versioning.status() == Some(&BucketVersioningStatus::Enabled);
        let want = &desired.notification;
        let notification = notifications
            .lambda_function_configurations()
            .iter()
            .find(|c| c.id() == Some(want.id.as_str()))
            .or_else(|| {
                notifications
                    .lambda_function_configurations()
                    .iter()
                    .find(|c| c.lambda_function_arn() == want.function_arn)
            })
            .map(|c| BucketNotification {
                id: c.id().unwrap_or_default().to_string(),
                function_arn: c.lambda_function_arn().to_string(),
                prefix: c
                    .filter()
                    .and_then(|f| f.key())
                    .and_then(|k| {
                        k.filter_rules().iter().find(|r| {
                            r.name()
                                .is_some_and(|n| n.as_str().eq_ignore_ascii_case("prefix"))
                        })
                    })
                    .and_then(|r| r.value())
                    .unwrap_or_default()
                    .to_string(),
                events: c.events().iter().map(|e| e.as_str().to_string()).collect(),
            })
            .unwrap_or_else(|| BucketNotification {
                id: String::new(),
                function_arn: String::new(),
                prefix: String::new(),
                events: vec![],
            });
        Ok(Some(Observed {
            parent_owner: None,
            namesakes: 0,
            spec: BucketSpec {
                encryption,
                block_public_access,
                versioning,
                notification,
            },
            tags,
            outputs: Self::outputs(ctx),
        }))
    }

    /// The tags alone: `NoSuchBucket` says the bucket is gone, no tag set that it is not ours.
    async fn observe_owner(
        &self,
        ctx: &Ctx<'_>,
        desired: &BucketSpec,
    ) -> Result<Option<Observed<BucketSpec>>, AwsError> {
        match Self::read_tags(ctx).await {
            Err(e) if e.code.as_deref() == Some("NoSuchBucket") => Ok(None),
            tags => Ok(Some(Observed::new(
                desired.clone(),
                tags?,
                Self::outputs(ctx),
            ))),
        }
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        desired: &BucketSpec,
        tags: &Tags,
    ) -> Result<Outputs, DriverError> {
        let mut request = ctx.aws.s3.create_bucket().bucket(ctx.name());
        // us-east-1 is the one region that refuses its own name as a location constraint.
        if ctx.aws.region != "us-east-1" {
            request = request.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(ctx.aws.region.as_str()))
                    .build(),
            );
        }
        request.send().await.context(ctx.id, "s3:CreateBucket")?;
        // Each is a sub-resource of its own, and the create's intent (still recorded until this returns)
        // proves the bucket ours until its tags are on: all at once. S3 may refuse one with
        // OperationAborted while another is in progress: transient, and the next walk finishes it.
        let versioning = async {
            match desired.versioning {
                true => Self::put_versioning(ctx, desired).await,
                false => Ok(()),
            }
        };
        tokio::try_join!(
            Self::put_tags(ctx, tags),
            Self::put_encryption(ctx, desired),
            Self::put_public_access_block(ctx, desired),
            versioning,
            Self::put_notification(ctx, desired, false),
        )?;
        Ok(Self::outputs(ctx))
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        desired: &BucketSpec,
        tags: &Tags,
        observed: &Observed<BucketSpec>,
        changes: &Changes,
    ) -> Result<Outputs, DriverError> {
        if changes.touches("tags") {
            // S3 has no tag/untag: the tag set is replaced whole, keeping others' tags under Merge.
            let mut all = match ctx.tag_policy {
                crate::api::TagPolicy::Merge => observed.tags.clone(),
                crate::api::TagPolicy::Exclusive => Tags::new(),
            };
            all.extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
            Self::put_tags(ctx, &all).await?;
        }
        if changes.touches("encryption") {
            Self::put_encryption(ctx, desired).await?;
        }
        if changes.touches("blockPublicAccess") {
            Self::put_public_access_block(ctx, desired).await?;
        }
        if changes.touches("versioning") {
            Self::put_versioning(ctx, desired).await?;
        }
        if changes.touches("notification") {
            Self::put_notification(ctx, desired, true).await?;
        }
        Ok(Self::outputs(ctx))
    }

    async fn delete(
        &self,
        ctx: &Ctx<'_>,
        _observed: &Observed<BucketSpec>,
    ) -> Result<(), AwsError> {
        // S3 refuses to delete a bucket that holds anything, old versions and delete markers included.
        Self::empty(ctx).await.optional()?;
        ctx.aws
            .s3
            .delete_bucket()
            .bucket(ctx.name())
            .send()
            .await
            .context(ctx.id, "s3:DeleteBucket")
            .optional()?;
        Ok(())
    }
}
