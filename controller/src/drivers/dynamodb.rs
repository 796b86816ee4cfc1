//! DynamoDB tables: keys, billing mode, global secondary indexes, point-in-time recovery, tags.
//!
//! A key-schema change cannot be applied in place (it needs a new table, i.e. a data migration): the
//! driver refuses it with a terminal error and never deletes data.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, CreateGlobalSecondaryIndexAction,
    DeleteGlobalSecondaryIndexAction, GlobalSecondaryIndex as AwsGsi, GlobalSecondaryIndexUpdate,
    IndexStatus, KeySchemaElement, KeyType, PointInTimeRecoverySpecification,
    PointInTimeRecoveryStatus, Projection, ProjectionType, ProvisionedThroughput,
    ScalarAttributeType, TableDescription, TableStatus, Tag,
};

use crate::aws::{AwsError, ResultExt};
use crate::desired::{GlobalSecondaryIndex, KeyAttribute, TableSpec, Tags};

use super::{tag_delta, user_tags, Changes, Ctx, Driver, Observed, Outputs};

pub struct Tables;

fn resource(name: &str) -> String {
    format!("Table {name}")
}

fn build_error(
    name: &str,
    call: &str,
) -> impl FnOnce(aws_sdk_dynamodb::error::BuildError) -> AwsError {
    let resource = resource(name);
    let call = call.to_string();
    move |e| AwsError::terminal(resource, call, format!("invalid request: {e}"))
}

/// How long a create or an index change may take before the driver hands back a transient error (the
/// engine comes back later; observe + update then finish the job).
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(500);

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
    name: &str,
    hash: &KeyAttribute,
    range: Option<&KeyAttribute>,
) -> Result<Vec<KeySchemaElement>, AwsError> {
    let mut keys = vec![KeySchemaElement::builder()
        .attribute_name(&hash.name)
        .key_type(KeyType::Hash)
        .build()
        .map_err(build_error(name, "dynamodb:CreateTable"))?];
    if let Some(range) = range {
        keys.push(
            KeySchemaElement::builder()
                .attribute_name(&range.name)
                .key_type(KeyType::Range)
                .build()
                .map_err(build_error(name, "dynamodb:CreateTable"))?,
        );
    }
    Ok(keys)
}

/// Attribute definitions of every key attribute named by `keys` (deduplicated by name).
fn attribute_definitions<'a>(
    name: &str,
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
                .map_err(build_error(name, "dynamodb:CreateTable"))
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

fn aws_tags(name: &str, tags: &Tags) -> Result<Vec<Tag>, AwsError> {
    tags.iter()
        .map(|(k, v)| {
            Tag::builder()
                .key(k)
                .value(v)
                .build()
                .map_err(build_error(name, "dynamodb:TagResource"))
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
    async fn describe(ctx: &Ctx<'_>, name: &str) -> Result<Option<TableDescription>, AwsError> {
        match ctx
            .aws
            .dynamodb
            .describe_table()
            .table_name(name)
            .send()
            .await
            .context(resource(name), "dynamodb:DescribeTable")
        {
            Err(e) if e.is_not_found() => Ok(None),
            other => Ok(other?.table),
        }
    }

    /// Waits (bounded) until the table and every index are ACTIVE; a transient error when they are not.
    async fn wait_active(ctx: &Ctx<'_>, name: &str) -> Result<TableDescription, AwsError> {
        let deadline = Instant::now() + ACTIVE_TIMEOUT;
        loop {
            let table = Self::describe(ctx, name).await?;
            let state = match &table {
                Some(t) if t.table_status() != Some(&TableStatus::Active) => {
                    format!(
                        "table is {}",
                        t.table_status()
                            .map(|s| s.as_str())
                            .unwrap_or("in an unknown state")
                    )
                }
                Some(t) => match t
                    .global_secondary_indexes()
                    .iter()
                    .find(|i| i.index_status() != Some(&IndexStatus::Active))
                {
                    Some(i) => format!(
                        "index {} is {}",
                        i.index_name().unwrap_or_default(),
                        i.index_status()
                            .map(|s| s.as_str())
                            .unwrap_or("in an unknown state")
                    ),
                    None => String::new(),
                },
                None => "table not visible yet".into(),
            };
            match table {
                Some(t) if state.is_empty() => return Ok(t),
                _ if Instant::now() > deadline => {
                    return Err(AwsError::transient(
                        resource(name),
                        "dynamodb:DescribeTable",
                        format!("not ACTIVE after {} s: {state}", ACTIVE_TIMEOUT.as_secs()),
                    ))
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }

    async fn put_pitr(ctx: &Ctx<'_>, name: &str, enabled: bool) -> Result<(), AwsError> {
        ctx.aws
            .dynamodb
            .update_continuous_backups()
            .table_name(name)
            .point_in_time_recovery_specification(
                PointInTimeRecoverySpecification::builder()
                    .point_in_time_recovery_enabled(enabled)
                    .build()
                    .map_err(build_error(name, "dynamodb:UpdateContinuousBackups"))?,
            )
            .send()
            .await
            .context(resource(name), "dynamodb:UpdateContinuousBackups")?;
        Ok(())
    }

    fn outputs(table: Option<&TableDescription>, ctx: &Ctx<'_>, name: &str) -> Outputs {
        let arn = table
            .and_then(|t| t.table_arn())
            .map(str::to_string)
            .unwrap_or_else(|| {
                format!(
                    "arn:{}:dynamodb:{}:{}:table/{name}",
                    ctx.aws.partition, ctx.aws.region, ctx.aws.account_id
                )
            });
        Outputs {
            arn: Some(arn),
            id: Some(name.to_string()),
            ..Default::default()
        }
    }

    /// One index change per `UpdateTable` (AWS allows only one at a time), waiting for ACTIVE between.
    async fn update_indexes(
        ctx: &Ctx<'_>,
        name: &str,
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
                .table_name(name)
                .global_secondary_index_updates(
                    GlobalSecondaryIndexUpdate::builder()
                        .delete(
                            DeleteGlobalSecondaryIndexAction::builder()
                                .index_name(index)
                                .build()
                                .map_err(build_error(name, "dynamodb:UpdateTable"))?,
                        )
                        .build(),
                )
                .send()
                .await
                .context(resource(name), "dynamodb:UpdateTable")?;
            Self::wait_index_gone(ctx, name, index).await?;
        }
        for index in to_create {
            let mut action = CreateGlobalSecondaryIndexAction::builder()
                .index_name(&index.name)
                .set_key_schema(Some(key_schema(
                    name,
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
                .table_name(name)
                .set_attribute_definitions(Some(attribute_definitions(name, all_keys(desired))?))
                .global_secondary_index_updates(
                    GlobalSecondaryIndexUpdate::builder()
                        .create(
                            action
                                .build()
                                .map_err(build_error(name, "dynamodb:UpdateTable"))?,
                        )
                        .build(),
                )
                .send()
                .await
                .context(resource(name), "dynamodb:UpdateTable")?;
            Self::wait_active(ctx, name).await?;
        }
        Ok(())
    }

    /// Waits (bounded) until a deleted index has disappeared and the table is ACTIVE again.
    async fn wait_index_gone(ctx: &Ctx<'_>, name: &str, index: &str) -> Result<(), AwsError> {
        let deadline = Instant::now() + ACTIVE_TIMEOUT;
        loop {
            let still_there = Self::describe(ctx, name).await?.is_some_and(|t| {
                t.global_secondary_indexes()
                    .iter()
                    .any(|i| i.index_name() == Some(index))
            });
            if !still_there {
                Self::wait_active(ctx, name).await?;
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(AwsError::transient(
                    resource(name),
                    "dynamodb:DescribeTable",
                    format!("index {index} still being deleted"),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Driver for Tables {
    type Spec = TableSpec;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        _desired: &TableSpec,
    ) -> Result<Option<Observed<TableSpec>>, AwsError> {
        let Some(table) = Self::describe(ctx, name).await? else {
            return Ok(None);
        };
        // A table being deleted is gone for every purpose (the deletion cannot be cancelled); creating it
        // again meanwhile fails with ResourceInUseException, which is transient.
        if table.table_status() == Some(&TableStatus::Deleting) {
            return Ok(None);
        }
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
        let backups = ctx
            .aws
            .dynamodb
            .describe_continuous_backups()
            .table_name(name)
            .send()
            .await
            .context(resource(name), "dynamodb:DescribeContinuousBackups")?;
        let point_in_time_recovery = backups
            .continuous_backups_description()
            .and_then(|d| d.point_in_time_recovery_description())
            .and_then(|p| p.point_in_time_recovery_status())
            == Some(&PointInTimeRecoveryStatus::Enabled);
        let outputs = Self::outputs(Some(&table), ctx, name);
        let arn = outputs.arn.clone().unwrap_or_default();
        let mut tags = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page = ctx
                .aws
                .dynamodb
                .list_tags_of_resource()
                .resource_arn(&arn)
                .set_next_token(next.take())
                .send()
                .await
                .context(resource(name), "dynamodb:ListTagsOfResource")?;
            tags.extend(
                page.tags()
                    .iter()
                    .map(|t| (t.key().to_string(), t.value().to_string())),
            );
            match page.next_token() {
                Some(token) if !token.is_empty() => next = Some(token.to_string()),
                _ => break,
            }
        }
        Ok(Some(Observed {
            spec: TableSpec {
                hash_key,
                range_key,
                billing_mode: billing_mode(&table),
                global_secondary_indexes,
                point_in_time_recovery,
            },
            tags: user_tags(tags),
            outputs,
        }))
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &TableSpec,
        tags: &Tags,
    ) -> Result<Outputs, AwsError> {
        let is_provisioned = provisioned(&desired.billing_mode);
        let indexes = desired
            .global_secondary_indexes
            .iter()
            .map(|i| {
                let mut index = AwsGsi::builder()
                    .index_name(&i.name)
                    .set_key_schema(Some(key_schema(name, &i.hash_key, i.range_key.as_ref())?))
                    .projection(projection(i));
                if is_provisioned {
                    index = index.provisioned_throughput(default_throughput());
                }
                index
                    .build()
                    .map_err(build_error(name, "dynamodb:CreateTable"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut request = ctx
            .aws
            .dynamodb
            .create_table()
            .table_name(name)
            .set_attribute_definitions(Some(attribute_definitions(name, all_keys(desired))?))
            .set_key_schema(Some(key_schema(
                name,
                &desired.hash_key,
                desired.range_key.as_ref(),
            )?))
            .billing_mode(BillingMode::from(desired.billing_mode.as_str()))
            .set_global_secondary_indexes((!indexes.is_empty()).then_some(indexes))
            .set_tags(
                (!tags.is_empty())
                    .then(|| aws_tags(name, tags))
                    .transpose()?,
            );
        if is_provisioned {
            request = request.provisioned_throughput(default_throughput());
        }
        request
            .send()
            .await
            .context(resource(name), "dynamodb:CreateTable")?;
        let table = Self::wait_active(ctx, name).await?;
        if desired.point_in_time_recovery {
            Self::put_pitr(ctx, name, true).await?;
        }
        Ok(Self::outputs(Some(&table), ctx, name))
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &TableSpec,
        tags: &Tags,
        observed: &Observed<TableSpec>,
        changes: &Changes,
    ) -> Result<Outputs, AwsError> {
        if changes.touches_any(&["hashKey", "rangeKey"]) {
            return Err(AwsError::terminal(
                resource(name),
                "dynamodb:UpdateTable",
                "the key schema of a table cannot change in place: the table must be replaced (create a new one and \
                 migrate the data; the controller never deletes a table's data to apply a change)",
            ));
        }
        if changes.touches("billingMode") {
            let mut request = ctx
                .aws
                .dynamodb
                .update_table()
                .table_name(name)
                .billing_mode(BillingMode::from(desired.billing_mode.as_str()));
            if provisioned(&desired.billing_mode) {
                request = request.provisioned_throughput(default_throughput());
            }
            request
                .send()
                .await
                .context(resource(name), "dynamodb:UpdateTable")?;
            Self::wait_active(ctx, name).await?;
        }
        if changes.touches("globalSecondaryIndexes") {
            Self::update_indexes(ctx, name, desired, &observed.spec).await?;
        }
        if changes.touches("pointInTimeRecovery") {
            // After a create that timed out waiting, the table may still be CREATING: backups need ACTIVE.
            Self::wait_active(ctx, name).await?;
            Self::put_pitr(ctx, name, desired.point_in_time_recovery).await?;
        }
        if changes.touches("tags") {
            let arn = observed.outputs.arn.clone().unwrap_or_default();
            let (set, remove) = tag_delta(tags, &observed.tags);
            if !set.is_empty() {
                ctx.aws
                    .dynamodb
                    .tag_resource()
                    .resource_arn(&arn)
                    .set_tags(Some(aws_tags(name, &set)?))
                    .send()
                    .await
                    .context(resource(name), "dynamodb:TagResource")?;
            }
            if !remove.is_empty() {
                ctx.aws
                    .dynamodb
                    .untag_resource()
                    .resource_arn(&arn)
                    .set_tag_keys(Some(remove))
                    .send()
                    .await
                    .context(resource(name), "dynamodb:UntagResource")?;
            }
        }
        Ok(observed.outputs.clone())
    }

    async fn delete(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        _observed: &Observed<TableSpec>,
    ) -> Result<(), AwsError> {
        match ctx
            .aws
            .dynamodb
            .delete_table()
            .table_name(name)
            .send()
            .await
            .context(resource(name), "dynamodb:DeleteTable")
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }
}
