//! DynamoDB tables: keys, billing mode, global secondary indexes, point-in-time recovery, tags.
//!
//! A key-schema change cannot be applied in place (it needs a new table, i.e. a data migration): the
//! driver refuses it with a terminal error and never deletes data.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, CreateGlobalSecondaryIndexAction,
    DeleteGlobalSecondaryIndexAction, GlobalSecondaryIndex as AwsGsi, GlobalSecondaryIndexUpdate,
    IndexStatus, KeySchemaElement, KeyType, PointInTimeRecoverySpecification,
    PointInTimeRecoveryStatus, Projection, ProjectionType, ProvisionedThroughput,
    ScalarAttributeType, TableDescription, TableStatus, Tag,
};

use crate::aws::{AwsError, Optional, ResultExt};
use crate::desired::{GlobalSecondaryIndex, KeyAttribute, TableSpec, Tags};

use super::{
    poll, sync_tags, user_tags, waited, Changes, Ctx, Driver, DriverError, Observed, Outputs,
    TagApi,
};

pub struct Tables;

fn build_error(
    ctx: &Ctx<'_>,
    call: &str,
) -> impl FnOnce(aws_sdk_dynamodb::error::BuildError) -> AwsError {
    let resource = ctx.id.to_string();
    let call = call.to_string();
    move |e| AwsError::terminal(resource, call, format!("invalid request: {e}"))
}

/// How long a create or an index change may take before the driver hands back a transient error (the
/// engine comes back later; observe + update then finish the job).
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Capacity used only if a spec ever asks for `PROVISIONED` (the stack uses `PAY_PER_REQUEST`).
fn default_throughput() -> ProvisionedThroughput {
    ProvisionedThroughput::builder()
        .read_capacity_units(5)
        .write_capacity_units(5)
        .build()
        .expect("both units set")
}

fn provisioned(mode: &str) -> bool {
    mode == BillingMode::Provisioned.as_str()
}

fn key_schema(
    ctx: &Ctx<'_>,
    hash: &KeyAttribute,
    range: Option<&KeyAttribute>,
) -> Result<Vec<KeySchemaElement>, AwsError> {
    let mut keys = vec![KeySchemaElement::builder()
        .attribute_name(&hash.name)
        .key_type(KeyType::Hash)
        .build()
        .map_err(build_error(ctx, "dynamodb:CreateTable"))?];
    if let Some(range) = range {
        keys.push(
            KeySchemaElement::builder()
                .attribute_name(&range.name)
                .key_type(KeyType::Range)
                .build()
                .map_err(build_error(ctx, "dynamodb:CreateTable"))?,
        );
    }
    Ok(keys)
}

/// Attribute definitions of every key attribute named by `keys` (deduplicated by name).
fn attribute_definitions<'a>(
    ctx: &Ctx<'_>,
    keys: impl IntoIterator<Item = &'a KeyAttribute>,
) -> Result<Vec<AttributeDefinition>, AwsError> {
    let unique: BTreeMap<&str, &str> = keys
        .into_iter()
        .map(|k| (k.name.as_str(), k.attribute_type.as_str()))
        .collect();
    unique
        .into_iter()
        .map(|(n, t)| {
            AttributeDefinition::builder()
                .attribute_name(n)
                .attribute_type(ScalarAttributeType::from(t))
                .build()
                .map_err(build_error(ctx, "dynamodb:CreateTable"))
        })
        .collect()
}

fn all_keys(spec: &TableSpec) -> Vec<&KeyAttribute> {
    let mut keys = vec![&spec.hash_key];
    keys.extend(spec.range_key.as_ref());
    for index in &spec.global_secondary_indexes {
        keys.push(&index.hash_key);
        keys.extend(index.range_key.as_ref());
    }
    keys
}

fn projection(index: &GlobalSecondaryIndex) -> Projection {
    Projection::builder()
        .projection_type(ProjectionType::from(index.projection.as_str()))
        .build()
}

fn aws_tags(ctx: &Ctx<'_>, tags: &Tags) -> Result<Vec<Tag>, AwsError> {
    tags.iter()
        .map(|(k, v)| {
            Tag::builder()
                .key(k)
                .value(v)
                .build()
                .map_err(build_error(ctx, "dynamodb:TagResource"))
        })
        .collect()
}

/// Maps a key schema back to (hash, range) with their types from the attribute definitions.
fn keys_back(
    table: &TableDescription,
    schema: &[KeySchemaElement],
) -> (KeyAttribute, Option<KeyAttribute>) {
    let attribute = |name: &str| KeyAttribute {
        name: name.to_string(),
        attribute_type: table
            .attribute_definitions()
            .iter()
            .find(|d| d.attribute_name() == name)
            .map(|d| d.attribute_type().as_str().to_string())
            .unwrap_or_default(),
    };
    let hash = schema
        .iter()
        .find(|k| k.key_type() == &KeyType::Hash)
        .map(|k| attribute(k.attribute_name()));
    let range = schema
        .iter()
        .find(|k| k.key_type() == &KeyType::Range)
        .map(|k| attribute(k.attribute_name()));
    (
        hash.unwrap_or(KeyAttribute {
            name: String::new(),
            attribute_type: String::new(),
        }),
        range,
    )
}

/// The billing mode as AWS reports it. `BillingModeSummary` is absent for tables that were always
/// provisioned. An on-demand table reports 0 read/write capacity units, which a provisioned table cannot
/// have (minimum 1): so a missing summary with 0/0 folds to `PAY_PER_REQUEST`, for an emulator that omits
/// the summary (checked: moto 5.2 and ministack 1.5 both do send it for on-demand tables).
fn billing_mode(table: &TableDescription) -> String {
    if let Some(mode) = table.billing_mode_summary().and_then(|s| s.billing_mode()) {
        return mode.as_str().to_string();
    }
    let zero = table.provisioned_throughput().is_none_or(|t| {
        t.read_capacity_units().unwrap_or(0) == 0 && t.write_capacity_units().unwrap_or(0) == 0
    });
    if zero {
        BillingMode::PayPerRequest
    } else {
        BillingMode::Provisioned
    }
    .as_str()
    .to_string()
}

impl Tables {
    async fn describe(ctx: &Ctx<'_>) -> Result<Option<TableDescription>, AwsError> {
        Ok(ctx
            .aws
            .dynamodb
            .describe_table()
            .table_name(ctx.name())
            .send()
            .await
            .context(ctx.id, "dynamodb:DescribeTable")
            .optional()?
            .and_then(|out| out.table))
    }

    /// The table and its ARN, unless it is absent or being deleted: a table being deleted is gone for
    /// every purpose (the deletion cannot be cancelled); creating it again meanwhile fails with
    /// ResourceInUseException, which is transient.
    async fn live(ctx: &Ctx<'_>) -> Result<Option<(TableDescription, String)>, AwsError> {
        let Some(table) = Self::describe(ctx).await? else {
            return Ok(None);
        };
        if table.table_status() == Some(&TableStatus::Deleting) {
            return Ok(None);
        }
        let arn = table
            .table_arn()
            .map(str::to_string)
            .or_else(|| Self::outputs(ctx).arn)
            .unwrap_or_default();
        Ok(Some((table, arn)))
    }

    /// Waits (bounded) until the table is ACTIVE (the SDK's waiter), then until every index is ACTIVE
    /// too; a transient error when they are not.
    async fn wait_active(ctx: &Ctx<'_>) -> Result<TableDescription, AwsError> {
        let answer = waited(
            ctx.aws
                .dynamodb
                .wait_until_table_exists()
                .table_name(ctx.name())
                .wait(ACTIVE_TIMEOUT)
                .await,
            ctx.id,
            "dynamodb:DescribeTable",
            ACTIVE_TIMEOUT,
            |_| "the table cannot become ACTIVE".into(),
        )?;
        // The waiter's last answer already says whether the indexes are ACTIVE too (a fresh table's
        // usually are): no second read then.
        if let Some(table) = answer
            .and_then(|out| out.table)
            .filter(|t| Self::inactive_index(t).is_none())
        {
            return Ok(table);
        }
        poll(ctx.id, "dynamodb:DescribeTable", ACTIVE_TIMEOUT, || async {
            Ok(match Self::describe(ctx).await? {
                None => Err("table not visible yet".to_string()),
                Some(t) => match Self::inactive_index(&t) {
                    Some(why) => Err(why),
                    None => Ok(t),
                },
            })
        })
        .await
    }

    /// Which index of `table` is not ACTIVE yet, and what it is instead.
    fn inactive_index(table: &TableDescription) -> Option<String> {
        table
            .global_secondary_indexes()
            .iter()
            .find(|i| i.index_status() != Some(&IndexStatus::Active))
            .map(|i| {
                format!(
                    "index {} is {}",
                    i.index_name().unwrap_or_default(),
                    i.index_status()
                        .map_or("in an unknown state", |s| s.as_str())
                )
            })
    }

    async fn put_pitr(ctx: &Ctx<'_>, enabled: bool) -> Result<(), AwsError> {
        ctx.aws
            .dynamodb
            .update_continuous_backups()
            .table_name(ctx.name())
            .point_in_time_recovery_specification(
                PointInTimeRecoverySpecification::builder()
                    .point_in_time_recovery_enabled(enabled)
                    .build()
                    .map_err(build_error(ctx, "dynamodb:UpdateContinuousBackups"))?,
            )
            .send()
            .await
            .context(ctx.id, "dynamodb:UpdateContinuousBackups")?;
        Ok(())
    }

    fn outputs(ctx: &Ctx<'_>) -> Outputs {
        Outputs {
            arn: Some(ctx.arns().table(ctx.name())),
            id: Some(ctx.name().to_string()),
            ..Default::default()
        }
    }

    /// One index change per `UpdateTable` (AWS allows only one at a time), waiting for ACTIVE between.
    async fn update_indexes(
        ctx: &Ctx<'_>,
        desired: &TableSpec,
        observed: &TableSpec,
    ) -> Result<(), AwsError> {
        let current: BTreeMap<&str, &GlobalSecondaryIndex> = observed
            .global_secondary_indexes
            .iter()
            .map(|i| (i.name.as_str(), i))
            .collect();
        let wanted: BTreeMap<&str, &GlobalSecondaryIndex> = desired
            .global_secondary_indexes
            .iter()
            .map(|i| (i.name.as_str(), i))
            .collect();
        // An index whose keys or projection changed is dropped and rebuilt (AWS cannot alter one).
        let to_delete: BTreeSet<&str> = current
            .iter()
            .filter(|(n, i)| wanted.get(*n) != Some(*i))
            .map(|(n, _)| *n)
            .collect();
        let to_create: Vec<&GlobalSecondaryIndex> = wanted
            .iter()
            .filter(|(n, i)| current.get(*n) != Some(*i))
            .map(|(_, i)| *i)
            .collect();
        for index in to_delete {
            ctx.aws
                .dynamodb
                .update_table()
                .table_name(ctx.name())
                .global_secondary_index_updates(
                    GlobalSecondaryIndexUpdate::builder()
                        .delete(
                            DeleteGlobalSecondaryIndexAction::builder()
                                .index_name(index)
                                .build()
                                .map_err(build_error(ctx, "dynamodb:UpdateTable"))?,
                        )
                        .build(),
                )
                .send()
                .await
                .context(ctx.id, "dynamodb:UpdateTable")?;
            poll(ctx.id, "dynamodb:DescribeTable", ACTIVE_TIMEOUT, || async {
                let there = Self::describe(ctx).await?.is_some_and(|t| {
                    t.global_secondary_indexes()
                        .iter()
                        .any(|i| i.index_name() == Some(index))
                });
                Ok(if there {
                    Err(format!("index {index} still being deleted"))
                } else {
                    Ok(())
                })
            })
            .await?;
            Self::wait_active(ctx).await?;
        }
        for index in to_create {
            let mut action = CreateGlobalSecondaryIndexAction::builder()
                .index_name(&index.name)
                .set_key_schema(Some(key_schema(
                    ctx,
                    &index.hash_key,
                    index.range_key.as_ref(),
                )?))
                .projection(projection(index));
            if provisioned(&desired.billing_mode) {
                action = action.provisioned_throughput(default_throughput());
            }
            ctx.aws
                .dynamodb
                .update_table()
                .table_name(ctx.name())
                .set_attribute_definitions(Some(attribute_definitions(ctx, all_keys(desired))?))
                .global_secondary_index_updates(
                    GlobalSecondaryIndexUpdate::builder()
                        .create(
                            action
                                .build()
                                .map_err(build_error(ctx, "dynamodb:UpdateTable"))?,
                        )
                        .build(),
                )
                .send()
                .await
                .context(ctx.id, "dynamodb:UpdateTable")?;
            Self::wait_active(ctx).await?;
        }
        Ok(())
    }

    /// Tags of a table: from the walk's batch, else its own read.
    async fn tags(ctx: &Ctx<'_>, arn: &str) -> Result<Tags, AwsError> {
        super::batch::tags_or(ctx, arn, || Self::own_tags(ctx, arn)).await
    }

    /// `ListTagsOfResource` pages with a token but has no SDK paginator.
    async fn own_tags(ctx: &Ctx<'_>, arn: &str) -> Result<Tags, AwsError> {
        let mut tags = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page = ctx
                .aws
                .dynamodb
                .list_tags_of_resource()
                .resource_arn(arn)
                .set_next_token(next.take())
                .send()
                .await
                .context(ctx.id, "dynamodb:ListTagsOfResource")?;
            tags.extend(
                page.tags()
                    .iter()
                    .map(|t| (t.key().to_string(), t.value().to_string())),
            );
            match page.next_token() {
                Some(token) if !token.is_empty() => next = Some(token.to_string()),
                _ => return Ok(user_tags(tags)),
            }
        }
    }
}

impl TagApi for Tables {
    async fn tag(&self, ctx: &Ctx<'_>, arn: &str, tags: Tags) -> Result<(), AwsError> {
        ctx.aws
            .dynamodb
            .tag_resource()
            .resource_arn(arn)
            .set_tags(Some(aws_tags(ctx, &tags)?))
            .send()
            .await
            .context(ctx.id, "dynamodb:TagResource")?;
        Ok(())
    }

    async fn untag(&self, ctx: &Ctx<'_>, arn: &str, keys: Vec<String>) -> Result<(), AwsError> {
        ctx.aws
            .dynamodb
            .untag_resource()
            .resource_arn(arn)
            .set_tag_keys(Some(keys))
            .send()
            .await
            .context(ctx.id, "dynamodb:UntagResource")?;
        Ok(())
    }
}

impl Driver for Tables {
    type Spec = TableSpec;

    /// `CreateTable` answers `ResourceInUseException` for an existing table.
    const CREATE_REFUSES_EXISTING: bool = true;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        _desired: &TableSpec,
    ) -> Result<Option<Observed<TableSpec>>, AwsError> {
        let Some((table, arn)) = Self::live(ctx).await? else {
            return Ok(None);
        };
        let (hash_key, range_key) = keys_back(&table, table.key_schema());
        let mut global_secondary_indexes: Vec<GlobalSecondaryIndex> = table
            .global_secondary_indexes()
            .iter()
            .map(|i| {
                let (hash_key, range_key) = keys_back(&table, i.key_schema());
                GlobalSecondaryIndex {
                    name: i.index_name().unwrap_or_default().to_string(),
                    hash_key,
                    range_key,
                    projection: i
                        .projection()
                        .and_then(|p| p.projection_type())
                        .map(|t| t.as_str().to_string())
                        .unwrap_or_default(),
                }
            })
            .collect();
        global_secondary_indexes.sort_by(|a, b| a.name.cmp(&b.name));
        let backups = async {
            ctx.aws
                .dynamodb
                .describe_continuous_backups()
                .table_name(ctx.name())
                .send()
                .await
                .context(ctx.id, "dynamodb:DescribeContinuousBackups")
        };
        let (backups, tags) = tokio::try_join!(backups, Self::tags(ctx, &arn))?;
        let point_in_time_recovery = backups
            .continuous_backups_description()
            .and_then(|d| d.point_in_time_recovery_description())
            .and_then(|p| p.point_in_time_recovery_status())
            == Some(&PointInTimeRecoveryStatus::Enabled);
        Ok(Some(Observed {
            parent_owner: None,
            namesakes: 0,
            spec: TableSpec {
                hash_key,
                range_key,
                billing_mode: billing_mode(&table),
                global_secondary_indexes,
                point_in_time_recovery,
            },
            tags,
            outputs: Self::outputs(ctx),
        }))
    }

    /// The table and its tags: no backup settings read.
    async fn observe_owner(
        &self,
        ctx: &Ctx<'_>,
        desired: &TableSpec,
    ) -> Result<Option<Observed<TableSpec>>, AwsError> {
        let Some((_, arn)) = Self::live(ctx).await? else {
            return Ok(None);
        };
        let tags = Self::tags(ctx, &arn).await?;
        Ok(Some(Observed::new(
            desired.clone(),
            tags,
            Self::outputs(ctx),
        )))
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        desired: &TableSpec,
        tags: &Tags,
    ) -> Result<Outputs, DriverError> {
        let is_provisioned = provisioned(&desired.billing_mode);
        let indexes = desired
            .global_secondary_indexes
            .iter()
            .map(|i| {
                let mut index = AwsGsi::builder()
                    .index_name(&i.name)
                    .set_key_schema(Some(key_schema(ctx, &i.hash_key, i.range_key.as_ref())?))
                    .projection(projection(i));
                if is_provisioned {
                    index = index.provisioned_throughput(default_throughput());
                }
                index
                    .build()
                    .map_err(build_error(ctx, "dynamodb:CreateTable"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut request = ctx
            .aws
            .dynamodb
            .create_table()
            .table_name(ctx.name())
            .set_attribute_definitions(Some(attribute_definitions(ctx, all_keys(desired))?))
            .set_key_schema(Some(key_schema(
                ctx,
                &desired.hash_key,
                desired.range_key.as_ref(),
            )?))
            .billing_mode(BillingMode::from(desired.billing_mode.as_str()))
            .set_global_secondary_indexes((!indexes.is_empty()).then_some(indexes))
            .set_tags(
                (!tags.is_empty())
                    .then(|| aws_tags(ctx, tags))
                    .transpose()?,
            );
        if is_provisioned {
            request = request.provisioned_throughput(default_throughput());
        }
        request
            .send()
            .await
            .context(ctx.id, "dynamodb:CreateTable")?;
        Self::wait_active(ctx).await?;
        if desired.point_in_time_recovery {
            Self::put_pitr(ctx, true).await?;
        }
        Ok(Self::outputs(ctx))
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        desired: &TableSpec,
        tags: &Tags,
        observed: &Observed<TableSpec>,
        changes: &Changes,
    ) -> Result<Outputs, DriverError> {
        if changes.touches_any(&["hashKey", "rangeKey"]) {
            return Err(AwsError::terminal(
                ctx.id,
                "dynamodb:UpdateTable",
                "the key schema of a table cannot change in place: the table must be replaced (create a new one and \
                 migrate the data; the controller never deletes a table's data to apply a change)",
            )
            .into());
        }
        if changes.touches("billingMode") {
            let mut request = ctx
                .aws
                .dynamodb
                .update_table()
                .table_name(ctx.name())
                .billing_mode(BillingMode::from(desired.billing_mode.as_str()));
            if provisioned(&desired.billing_mode) {
                request = request.provisioned_throughput(default_throughput());
            }
            request
                .send()
                .await
                .context(ctx.id, "dynamodb:UpdateTable")?;
            Self::wait_active(ctx).await?;
        }
        if changes.touches("globalSecondaryIndexes") {
            Self::update_indexes(ctx, desired, &observed.spec).await?;
        }
        if changes.touches("pointInTimeRecovery") {
            // After a create that timed out waiting, the table may still be CREATING: backups need ACTIVE.
            Self::wait_active(ctx).await?;
            Self::put_pitr(ctx, desired.point_in_time_recovery).await?;
        }
        if changes.touches("tags") {
            let arn = observed.outputs.arn.clone().unwrap_or_default();
            sync_tags(self, ctx, &arn, tags, &observed.tags).await?;
        }
        Ok(observed.outputs.clone())
    }

    async fn delete(&self, ctx: &Ctx<'_>, _observed: &Observed<TableSpec>) -> Result<(), AwsError> {
        ctx.aws
            .dynamodb
            .delete_table()
            .table_name(ctx.name())
            .send()
            .await
            .context(ctx.id, "dynamodb:DeleteTable")
            .optional()?;
        Ok(())
    }
}
