//! The stack's control table `tap-<suffix>-control` (DynamoDB, tagged like the stack, created on the
//! first write that needs it, deleted by the teardown that leaves nothing else): where a writer records
//! what it is about to do that AWS cannot make atomic, so that a writer that crashed can be resumed by
//! any other — the CLI on a laptop and the controller in a cluster alike, with nothing kept locally.
//!
//! An *intent* is recorded before creating a resource whose create call cannot carry tags (an S3
//! bucket: `CreateBucket`, then `PutBucketTagging`). A resource found under our name without our tags is
//! ours only when such an intent, written by this pipeline, names it; it is cleared once the resource
//! carries its tags. Anything else under our name stays someone else's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableDescription, TableStatus, Tag,
};
use tokio::sync::OnceCell;

use crate::aws::{Aws, AwsError, Optional, ResultExt};
use crate::desired::{names, ResourceId, Tags, OWNER_TAG};
use crate::drivers::waited;

use super::lock::{LockOptions, LockState};

/// How long a new control table may take to become ACTIVE.
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// The control table of one stack, for one walk.
pub struct Control {
    pub(super) aws: Aws,
    table: String,
    pub(super) id: ResourceId,
    owner: String,
    tags: Tags,
    ready: OnceCell<()>,
    /// What [`Control::exists`] found, for [`Control::ensure`] to start from.
    seen: Mutex<Option<Option<TableDescription>>>,
    /// [`Control::ensure`] created the table.
    made: AtomicBool,
    /// When this walk's control was made: before anything the walk observes.
    pub(super) since: Instant,
    pub(super) lock: LockOptions,
    pub(super) lock_state: tokio::sync::Mutex<LockState>,
}

/// What a writer recorded before a create it cannot make atomic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    /// The owner tag value of the pipeline that recorded it.
    pub owner: String,
    /// When (RFC 3339).
    pub at: String,
}

fn key(id: &ResourceId) -> HashMap<String, AttributeValue> {
    HashMap::from([(
        "pk".to_string(),
        AttributeValue::S(format!("intent/{}/{}", id.kind, id.name)),
    )])
}

impl Control {
    pub fn new(aws: Aws, suffix: &str, owner: &str, tags: Tags, lock: LockOptions) -> Self {
        let table = names::control_table(suffix);
        Self {
            id: ResourceId::new(crate::desired::Kind::Table, &table),
            aws,
            table,
            owner: owner.to_string(),
            tags,
            ready: OnceCell::new(),
            seen: Mutex::new(None),
            made: AtomicBool::new(false),
            since: Instant::now(),
            lock,
            lock_state: Default::default(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table when it is missing (tags in the same call: it is ours from its first moment);
    /// refuses one this pipeline does not own. Once per walk; from what [`Control::exists`] read, if it
    /// was asked.
    pub async fn ensure(&self) -> Result<(), AwsError> {
        self.ready
            .get_or_try_init(|| async {
                let seen = self.seen.lock().expect("control poisoned").take();
                let existing = match seen {
                    Some(seen) => seen,
                    None => self.describe().await?,
                };
                let active = match existing {
                    Some(table) => {
                        self.check_owner(&table).await?;
                        false
                    }
                    None => match self.create_table().await? {
                        Some(created) => {
                            self.made.store(true, Ordering::Relaxed);
                            created.table_status() == Some(&TableStatus::Active)
                        }
                        // Another writer made it meanwhile: ours only if its tags say so.
                        None => {
                            let table = self.describe().await?.ok_or_else(|| {
                                AwsError::transient(
                                    &self.id,
                                    "dynamodb:DescribeTable",
                                    "the control table was being created and is gone",
                                )
                            })?;
                            self.check_owner(&table).await?;
                            false
                        }
                    },
                };
                // A create answered ACTIVE needs no wait (on AWS it answers CREATING).
                if active {
                    return Ok(());
                }
                waited(
                    self.aws
                        .dynamodb
                        .wait_until_table_exists()
                        .table_name(&self.table)
                        .wait(ACTIVE_TIMEOUT)
                        .await,
                    &self.id,
                    "dynamodb:DescribeTable",
                    ACTIVE_TIMEOUT,
                    |_| "the control table cannot become ACTIVE".into(),
                )
                .map(drop)
            })
            .await
            .copied()
    }

    /// The owner tag's value on the table, if any.
    async fn owner_of(&self, table: &TableDescription) -> Result<Option<String>, AwsError> {
        let tags = self
            .aws
            .dynamodb
            .list_tags_of_resource()
            .resource_arn(table.table_arn().unwrap_or_default())
            .send()
            .await
            .context(&self.id, "dynamodb:ListTagsOfResource")?;
        Ok(tags
            .tags()
            .iter()
            .find(|t| t.key() == OWNER_TAG)
            .map(|t| t.value().to_string()))
    }

    /// Refuses a control table this pipeline's owner tag is not on.
    async fn check_owner(&self, table: &TableDescription) -> Result<(), AwsError> {
        let owner = self.owner_of(table).await?;
        if owner.as_deref() == Some(self.owner.as_str()) {
            return Ok(());
        }
        Err(AwsError::terminal(
            &self.id,
            "dynamodb:DescribeTable",
            format!(
                "the stack's control table exists but is {}: this pipeline writes nothing",
                owner
                    .map(|o| format!("owned by {o}"))
                    .unwrap_or_else(|| "not tagged by tap-controller".into())
            ),
        ))
    }

    /// Creates the table with the stack's tags: its description, or `None` when it exists already.
    async fn create_table(&self) -> Result<Option<TableDescription>, AwsError> {
        let tags = self
            .tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AwsError::terminal(&self.id, "dynamodb:CreateTable", e.to_string()))?;
        let created = self
            .aws
            .dynamodb
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("pk")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("name and type set"),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("pk")
                    .key_type(KeyType::Hash)
                    .build()
                    .expect("name and type set"),
            )
            .set_tags(Some(tags))
            .send()
            .await
            .context(&self.id, "dynamodb:CreateTable");
        match created {
            Ok(out) => Ok(Some(
                out.table_description
                    .unwrap_or_else(|| TableDescription::builder().build()),
            )),
            Err(e) if e.code.as_deref() == Some("ResourceInUseException") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether this walk created the table (so no one else can have written the stack under it
    /// before this walk's lock: see [`Control::writer`]).
    pub(super) fn made_by_this_walk(&self) -> bool {
        self.made.load(Ordering::Relaxed)
    }

    /// Whether the control table exists (a read; any writer of the stack made it at its first write).
    pub async fn exists(&self) -> Result<bool, AwsError> {
        let table = self.describe().await?;
        let exists = table.is_some();
        *self.seen.lock().expect("control poisoned") = Some(table);
        Ok(exists)
    }

    /// The control table as DynamoDB describes it, if it exists.
    async fn describe(&self) -> Result<Option<TableDescription>, AwsError> {
        Ok(self
            .aws
            .dynamodb
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .context(&self.id, "dynamodb:DescribeTable")
            .optional()?
            .and_then(|out| out.table))
    }

    /// Records that this pipeline is about to create `id`.
    pub async fn record_intent(&self, id: &ResourceId) -> Result<(), AwsError> {
        self.ensure().await?;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        self.aws
            .dynamodb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(
                key(id)
                    .into_iter()
                    .chain([
                        ("owner".to_string(), AttributeValue::S(self.owner.clone())),
                        ("at".to_string(), AttributeValue::S(now)),
                    ])
                    .collect(),
            ))
            .send()
            .await
            .context(id, "dynamodb:PutItem")?;
        Ok(())
    }

    /// The intent recorded for `id`, if any (none when there is no control table).
    pub async fn intent(&self, id: &ResourceId) -> Result<Option<Intent>, AwsError> {
        let found = self
            .aws
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(id)))
            .consistent_read(true)
            .send()
            .await
            .context(id, "dynamodb:GetItem")
            .optional()?;
        let text = |item: &HashMap<String, AttributeValue>, name: &str| {
            item.get(name)
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_default()
        };
        Ok(found.and_then(|out| out.item).map(|item| Intent {
            owner: text(&item, "owner"),
            at: text(&item, "at"),
        }))
    }

    /// Clears the intent of `id` (the resource carries its tags now, or is gone).
    pub async fn clear_intent(&self, id: &ResourceId) -> Result<(), AwsError> {
        self.aws
            .dynamodb
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(id)))
            .send()
            .await
            .context(id, "dynamodb:DeleteItem")
            .optional()?;
        Ok(())
    }

    /// Deletes the table (the teardown left nothing else), if it exists and is ours; under the lock,
    /// which goes with it.
    pub async fn remove(&self) -> Result<bool, AwsError> {
        let Some(table) = self.describe().await? else {
            return Ok(false);
        };
        if self.owner_of(&table).await?.as_deref() != Some(self.owner.as_str()) {
            return Ok(false);
        }
        self.writer(None).await?;
        self.aws
            .dynamodb
            .delete_table()
            .table_name(&self.table)
            .send()
            .await
            .context(&self.id, "dynamodb:DeleteTable")
            .optional()?;
        self.forget_lock().await;
        Ok(true)
    }
}
