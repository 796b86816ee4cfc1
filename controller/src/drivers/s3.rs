//! S3 buckets: default encryption, public access block, versioning, the Lambda notification on new
//! objects (and the function permission letting S3 invoke it), tags. Deletion empties the bucket first.

use serde_json::Value;

use aws_sdk_s3::types::{
    BucketLocationConstraint, BucketVersioningStatus, CreateBucketConfiguration, Delete, Event,
    FilterRule, FilterRuleName, LambdaFunctionConfiguration, NotificationConfiguration,
    NotificationConfigurationFilter, ObjectIdentifier, PublicAccessBlockConfiguration, S3KeyFilter,
    ServerSideEncryption, ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration,
    ServerSideEncryptionRule, Tag, Tagging, VersioningConfiguration,
};

use crate::aws::{AwsError, ResultExt};
use crate::desired::{BucketNotification, BucketSpec, InvokePermission, Tags};

use super::{parse_policy, user_tags, Changes, Ctx, Driver, Observed, Outputs};

pub struct Buckets;

fn resource(name: &str) -> String {
    format!("Bucket {name}")
}

/// A request the SDK refused to build (a required field missing): a bug of ours, not AWS's.
fn build_error(name: &str, call: &str) -> impl FnOnce(aws_sdk_s3::error::BuildError) -> AwsError {
    let resource = resource(name);
    let call = call.to_string();
    move |e| AwsError::terminal(resource, call, format!("invalid request: {e}"))
}

/// `DeleteObjects` takes at most 1000 keys per call.
const DELETE_BATCH: usize = 1000;

impl Buckets {
    fn outputs(ctx: &Ctx<'_>, name: &str) -> Outputs {
        Outputs {
            arn: Some(format!("arn:{}:s3:::{name}", ctx.aws.partition)),
            id: Some(name.to_string()),
            ..Default::default()
        }
    }

    async fn put_tags(ctx: &Ctx<'_>, name: &str, tags: &Tags) -> Result<(), AwsError> {
        if tags.is_empty() {
            ctx.aws
                .s3
                .delete_bucket_tagging()
                .bucket(name)
                .send()
                .await
                .context(resource(name), "s3:DeleteBucketTagging")?;
            return Ok(());
        }
        let tag_set = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(build_error(name, "s3:PutBucketTagging"))?;
        let tagging = Tagging::builder()
            .set_tag_set(Some(tag_set))
            .build()
            .map_err(build_error(name, "s3:PutBucketTagging"))?;
        ctx.aws
            .s3
            .put_bucket_tagging()
            .bucket(name)
            .tagging(tagging)
            .send()
            .await
            .context(resource(name), "s3:PutBucketTagging")?;
        Ok(())
    }

    async fn put_encryption(
        ctx: &Ctx<'_>,
        name: &str,
        desired: &BucketSpec,
    ) -> Result<(), AwsError> {
        let by_default = ServerSideEncryptionByDefault::builder()
            .sse_algorithm(ServerSideEncryption::from(desired.encryption.as_str()))
            .build()
            .map_err(build_error(name, "s3:PutBucketEncryption"))?;
        let configuration = ServerSideEncryptionConfiguration::builder()
            .rules(
                ServerSideEncryptionRule::builder()
                    .apply_server_side_encryption_by_default(by_default)
                    .build(),
            )
            .build()
            .map_err(build_error(name, "s3:PutBucketEncryption"))?;
        ctx.aws
            .s3
            .put_bucket_encryption()
            .bucket(name)
            .server_side_encryption_configuration(configuration)
            .send()
            .await
            .context(resource(name), "s3:PutBucketEncryption")?;
        Ok(())
    }

    async fn put_public_access_block(
        ctx: &Ctx<'_>,
        name: &str,
        desired: &BucketSpec,
    ) -> Result<(), AwsError> {
        let on = desired.block_public_access;
        ctx.aws
            .s3
            .put_public_access_block()
            .bucket(name)
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
            .context(resource(name), "s3:PutPublicAccessBlock")?;
        Ok(())
    }

    async fn put_versioning(
        ctx: &Ctx<'_>,
        name: &str,
        desired: &BucketSpec,
    ) -> Result<(), AwsError> {
        // A bucket once versioned can only be suspended, never un-versioned.
        let status = if desired.versioning {
            BucketVersioningStatus::Enabled
        } else {
            BucketVersioningStatus::Suspended
        };
        ctx.aws
            .s3
            .put_bucket_versioning()
            .bucket(name)
            .versioning_configuration(VersioningConfiguration::builder().status(status).build())
            .send()
            .await
            .context(resource(name), "s3:PutBucketVersioning")?;
        Ok(())
    }

    /// Adds the statement letting S3 invoke the function (replacing one of the same id if `replace`).
    async fn put_permission(
        ctx: &Ctx<'_>,
        name: &str,
        permission: &InvokePermission,
        replace: bool,
    ) -> Result<(), AwsError> {
        if replace {
            Self::remove_permission(ctx, name, permission).await?;
        }
        ctx.aws
            .lambda
            .add_permission()
            .function_name(&permission.function_name)
            .statement_id(&permission.statement_id)
            .action("lambda:InvokeFunction")
            .principal(&permission.principal)
            .source_arn(&permission.source_arn)
            .set_source_account(permission.source_account.clone())
            .send()
            .await
            .context(resource(name), "lambda:AddPermission")?;
        Ok(())
    }

    async fn remove_permission(
        ctx: &Ctx<'_>,
        name: &str,
        permission: &InvokePermission,
    ) -> Result<(), AwsError> {
        match ctx
            .aws
            .lambda
            .remove_permission()
            .function_name(&permission.function_name)
            .statement_id(&permission.statement_id)
            .send()
            .await
            .context(resource(name), "lambda:RemovePermission")
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }

    fn lambda_configuration(
        name: &str,
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
            .map_err(build_error(name, "s3:PutBucketNotificationConfiguration"))
    }

    /// Puts our notification, keeping any other configuration already on the bucket (replacing ours).
    async fn put_notification(
        ctx: &Ctx<'_>,
        name: &str,
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
                .bucket(name)
                .send()
                .await
                .context(resource(name), "s3:GetBucketNotificationConfiguration")?;
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
            configuration.lambda_function_configurations(Self::lambda_configuration(name, ours)?);
        ctx.aws
            .s3
            .put_bucket_notification_configuration()
            .bucket(name)
            .notification_configuration(configuration.build())
            .send()
            .await
            .context(resource(name), "s3:PutBucketNotificationConfiguration")?;
        Ok(())
    }

    /// Reads the function's resource policy and maps our statement back to an [`InvokePermission`]; a
    /// placeholder (empty fields) when the function or the statement is missing, so that it diffs.
    async fn observe_permission(
        ctx: &Ctx<'_>,
        name: &str,
        desired: &InvokePermission,
    ) -> Result<InvokePermission, AwsError> {
        let missing = InvokePermission {
            function_name: desired.function_name.clone(),
            statement_id: String::new(),
            principal: String::new(),
            source_arn: String::new(),
            source_account: None,
        };
        let policy = match ctx
            .aws
            .lambda
            .get_policy()
            .function_name(&desired.function_name)
            .send()
            .await
            .context(resource(name), "lambda:GetPolicy")
        {
            Err(e) if e.is_not_found() => return Ok(missing),
            other => other?,
        };
        let Some(text) = policy.policy() else {
            return Ok(missing);
        };
        Ok(permission_from_policy(
            &parse_policy(text),
            &desired.function_name,
            &desired.statement_id,
        )
        .unwrap_or(missing))
    }

    /// Deletes every object version and delete marker, page by page (≤ 1000 keys per `DeleteObjects`).
    /// Each round lists from the start again (what was listed before is deleted), so no page marker ever
    /// points at a version that no longer exists.
    async fn empty(ctx: &Ctx<'_>, name: &str) -> Result<(), AwsError> {
        let mut previous_first: Option<(String, Option<String>)> = None;
        loop {
            let page = ctx
                .aws
                .s3
                .list_object_versions()
                .bucket(name)
                .send()
                .await
                .context(resource(name), "s3:ListObjectVersions")?;
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
                    resource(name),
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
                        .map_err(build_error(name, "s3:DeleteObjects"))?,
                );
            }
            for batch in ids.chunks(DELETE_BATCH) {
                let delete = Delete::builder()
                    .set_objects(Some(batch.to_vec()))
                    .quiet(true)
                    .build()
                    .map_err(build_error(name, "s3:DeleteObjects"))?;
                let out = ctx
                    .aws
                    .s3
                    .delete_objects()
                    .bucket(name)
                    .delete(delete)
                    .send()
                    .await
                    .context(resource(name), "s3:DeleteObjects")?;
                if let Some(error) = out.errors().first() {
                    return Err(AwsError::transient(
                        resource(name),
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

/// A string or the first string of an array (a policy value after normalisation may be either).
fn as_str(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Array(items) => items.first().and_then(Value::as_str),
        _ => None,
    }
}

/// Finds the statement `sid` in a (normalised) Lambda resource policy and maps it back.
fn permission_from_policy(
    policy: &Value,
    function_name: &str,
    sid: &str,
) -> Option<InvokePermission> {
    let statements = match policy.get("Statement")? {
        Value::Array(items) => items.iter().collect::<Vec<_>>(),
        single => vec![single],
    };
    let statement = statements
        .into_iter()
        .find(|s| s.get("Sid").and_then(Value::as_str) == Some(sid))?;
    let principal = match statement.get("Principal") {
        Some(Value::Object(p)) => p
            .get("Service")
            .or_else(|| p.get("AWS"))
            .and_then(as_str)
            .unwrap_or_default()
            .to_string(),
        Some(other) => as_str(other).unwrap_or_default().to_string(),
        None => String::new(),
    };
    let condition = |operator: &str, key: &str| {
        statement
            .get("Condition")
            .and_then(|c| c.get(operator))
            .and_then(|o| o.get(key))
            .and_then(as_str)
            .map(str::to_string)
    };
    Some(InvokePermission {
        function_name: function_name.to_string(),
        statement_id: sid.to_string(),
        principal,
        source_arn: condition("ArnLike", "AWS:SourceArn")
            .or_else(|| condition("ArnEquals", "AWS:SourceArn"))
            .unwrap_or_default(),
        source_account: condition("StringEquals", "AWS:SourceAccount"),
    })
}

impl Driver for Buckets {
    type Spec = BucketSpec;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &BucketSpec,
    ) -> Result<Option<Observed<BucketSpec>>, AwsError> {
        let s3 = &ctx.aws.s3;
        match s3
            .head_bucket()
            .bucket(name)
            .send()
            .await
            .context(resource(name), "s3:HeadBucket")
        {
            Err(e) if e.is_not_found() => return Ok(None),
            other => other?,
        };
        let encryption = match s3
            .get_bucket_encryption()
            .bucket(name)
            .send()
            .await
            .context(resource(name), "s3:GetBucketEncryption")
        {
            Err(e) if e.is_not_found() => String::new(),
            other => other?
                .server_side_encryption_configuration()
                .and_then(|c| c.rules().first())
                .and_then(|r| r.apply_server_side_encryption_by_default())
                .map(|d| d.sse_algorithm().as_str().to_string())
                .unwrap_or_default(),
        };
        let block_public_access = match s3
            .get_public_access_block()
            .bucket(name)
            .send()
            .await
            .context(resource(name), "s3:GetPublicAccessBlock")
        {
            Err(e) if e.is_not_found() => false,
            other => other?.public_access_block_configuration().is_some_and(|c| {
                c.block_public_acls() == Some(true)
                    && c.ignore_public_acls() == Some(true)
                    && c.block_public_policy() == Some(true)
                    && c.restrict_public_buckets() == Some(true)
            }),
        };
        let versioning = s3
            .get_bucket_versioning()
            .bucket(name)
            .send()
            .await
            .context(resource(name), "s3:GetBucketVersioning")?
            .status()
            == Some(&BucketVersioningStatus::Enabled);
        let notifications = s3
            .get_bucket_notification_configuration()
            .bucket(name)
            .send()
            .await
            .context(resource(name), "s3:GetBucketNotificationConfiguration")?;
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
        let tags = match s3
            .get_bucket_tagging()
            .bucket(name)
            .send()
            .await
            .context(resource(name), "s3:GetBucketTagging")
        {
            Err(e) if e.is_not_found() => Tags::new(),
            other => user_tags(
                other?
                    .tag_set()
                    .iter()
                    .map(|t| (t.key().to_string(), t.value().to_string())),
            ),
        };
        let invoke_permission =
            Self::observe_permission(ctx, name, &desired.invoke_permission).await?;
        Ok(Some(Observed {
            spec: BucketSpec {
                encryption,
                block_public_access,
                versioning,
                notification,
                invoke_permission,
            },
            tags,
            outputs: Self::outputs(ctx, name),
        }))
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &BucketSpec,
        tags: &Tags,
    ) -> Result<Outputs, AwsError> {
        let mut request = ctx.aws.s3.create_bucket().bucket(name);
        // us-east-1 is the one region that refuses its own name as a location constraint.
        if ctx.aws.region != "us-east-1" {
            request = request.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(ctx.aws.region.as_str()))
                    .build(),
            );
        }
        request
            .send()
            .await
            .context(resource(name), "s3:CreateBucket")?;
        Self::put_tags(ctx, name, tags).await?;
        Self::put_encryption(ctx, name, desired).await?;
        Self::put_public_access_block(ctx, name, desired).await?;
        if desired.versioning {
            Self::put_versioning(ctx, name, desired).await?;
        }
        // AWS validates the destination of a notification: S3 must be allowed to invoke it first.
        Self::put_permission(ctx, name, &desired.invoke_permission, false).await?;
        Self::put_notification(ctx, name, desired, false).await?;
        Ok(Self::outputs(ctx, name))
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &BucketSpec,
        tags: &Tags,
        observed: &Observed<BucketSpec>,
        changes: &Changes,
    ) -> Result<Outputs, AwsError> {
        if changes.touches("tags") {
            // S3 has no tag/untag: the tag set is replaced whole.
            Self::put_tags(ctx, name, tags).await?;
        }
        if changes.touches("encryption") {
            Self::put_encryption(ctx, name, desired).await?;
        }
        if changes.touches("blockPublicAccess") {
            Self::put_public_access_block(ctx, name, desired).await?;
        }
        if changes.touches("versioning") {
            Self::put_versioning(ctx, name, desired).await?;
        }
        if changes.touches("invokePermission") {
            let replace = !observed.spec.invoke_permission.statement_id.is_empty();
            Self::put_permission(ctx, name, &desired.invoke_permission, replace).await?;
        }
        if changes.touches("notification") {
            Self::put_notification(ctx, name, desired, true).await?;
        }
        Ok(Self::outputs(ctx, name))
    }

    async fn delete(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        observed: &Observed<BucketSpec>,
    ) -> Result<(), AwsError> {
        // S3 refuses to delete a bucket that holds anything, old versions and delete markers included.
        match Self::empty(ctx, name).await {
            Err(e) if e.is_not_found() => {}
            other => other?,
        }
        match ctx
            .aws
            .s3
            .delete_bucket()
            .bucket(name)
            .send()
            .await
            .context(resource(name), "s3:DeleteBucket")
        {
            Err(e) if e.is_not_found() => {}
            other => {
                other?;
            }
        }
        if !observed.spec.invoke_permission.function_name.is_empty()
            && !observed.spec.invoke_permission.statement_id.is_empty()
        {
            Self::remove_permission(ctx, name, &observed.spec.invoke_permission).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_a_lambda_policy_statement_back() {
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
        let p = permission_from_policy(&policy, "f", "tap-s3-invoke").expect("statement found");
        assert_eq!(
            p,
            InvokePermission {
                function_name: "f".into(),
                statement_id: "tap-s3-invoke".into(),
                principal: "s3.amazonaws.com".into(),
                source_arn: "arn:aws:s3:::b".into(),
                source_account: Some("123456789012".into()),
            }
        );
        assert!(permission_from_policy(&policy, "f", "missing").is_none());
    }
}
