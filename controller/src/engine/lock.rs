//! One writer per stack: a lock item (`pk = "lock"`) in the stack's control table, which every writer
//! sees, the CLI on a laptop and the controller in a cluster alike. Taken with one conditional
//! `PutItem` (free, expired, or already ours), kept alive by a heartbeat, released with one conditional
//! `UpdateItem` that expires it (the item stays: a table whose lock item is missing was never locked),
//! and gone with the table after the last teardown. It is taken at a walk's first write, not before: a
//! resync that finds nothing to change writes nothing, the lock included. A resource observed before
//! the lock was taken is observed again under it, unless this walk made the table and took its first
//! lock: then no one else can have written the stack since the walk began.
//!
//! A lock whose holder string is ours is ours to take: the controller's replicas share one identity (the
//! Kubernetes Lease already makes one of them active), so a restarted controller resumes at once. The
//! CLI's identity carries its process id: a crashed CLI's lock expires after its lease, or is removed
//! with `force-unlock` and its id.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use serde::Serialize;

use super::control::Control;
use super::Progress;
use crate::aws::{AwsError, ErrorClass, Optional, ResultExt};

/// AWS-style code of the error a writer gets when someone else holds the lock.
pub const LOCKED: &str = "StackLocked";

/// Who writes, how long a lock lasts without a heartbeat, how long to wait for someone else's.
#[derive(Clone, Debug)]
pub struct LockOptions {
    pub holder: String,
    pub lease: Duration,
    pub timeout: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self {
            holder: cli_holder(),
            lease: Duration::from_secs(60),
            timeout: Duration::ZERO,
        }
    }
}

/// `cli <user>@<host> pid <pid>`.
pub fn cli_holder() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".into());
    format!("cli {user}@{host} pid {}", std::process::id())
}

/// A lock as the table holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LockHolder {
    pub holder: String,
    /// What `force-unlock` must be given.
    pub id: String,
    /// When it was taken (RFC 3339).
    pub since: String,
    /// Epoch milliseconds after which it is free, unless renewed.
    pub expires_ms: i64,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "locked by {} since {} (lock id {})",
            self.holder, self.since, self.id
        )
    }
}

#[derive(Debug, Default)]
pub(super) enum LockState {
    #[default]
    Free,
    Held {
        id: String,
        at: Instant,
    },
    /// Someone else holds it: every write of this walk is refused with this.
    Refused(AwsError, LockHolder),
}

/// What one conditional put found.
enum Try {
    Taken {
        /// No lock item was there: the table was never locked.
        first: bool,
    },
    HeldBy(LockHolder),
}

fn key() -> HashMap<String, AttributeValue> {
    HashMap::from([("pk".to_string(), AttributeValue::S("lock".into()))])
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn new_lock_id(holder: &str) -> String {
    use sha2::Digest;
    let seed = format!(
        "{holder} {} {:?}",
        std::process::id(),
        std::time::SystemTime::now()
    );
    sha2::Sha256::digest(seed.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Control {
    /// Takes the lock for this walk's writes, once; waits up to the lock timeout for another holder.
    /// The instant it was taken: anything observed before it is to be observed again.
    pub async fn writer(&self, progress: Option<&dyn Progress>) -> Result<Instant, AwsError> {
        let mut state = self.lock_state.lock().await;
        match &*state {
            LockState::Held { at, .. } => return Ok(*at),
            LockState::Refused(e, _) => return Err(e.clone()),
            LockState::Free => {}
        }
        self.ensure().await?;
        let id = new_lock_id(&self.lock.holder);
        let deadline = Instant::now() + self.lock.timeout;
        let mut told: Option<String> = None;
        loop {
            match self.try_lock(&id).await? {
                Try::Taken { first } => {
                    // Every write is made under this table's lock: in a table this walk created, a
                    // first lock means nothing was written since the walk began, so what it observed
                    // before is current. (A table of an earlier teardown went with that teardown.)
                    let at = if first && self.made_by_this_walk() {
                        self.since
                    } else {
                        Instant::now()
                    };
                    *state = LockState::Held { id, at };
                    return Ok(at);
                }
                Try::HeldBy(holder) if Instant::now() >= deadline => {
                    let error = AwsError {
                        resource: self.id.to_string(),
                        call: "dynamodb:PutItem".into(),
                        code: Some(LOCKED.into()),
                        message: format!(
                            "{holder}: another writer is at work on this stack (waited {} s)",
                            self.lock.timeout.as_secs()
                        ),
                        class: ErrorClass::Transient,
                    };
                    *state = LockState::Refused(error.clone(), holder);
                    return Err(error);
                }
                Try::HeldBy(holder) => {
                    if told.as_deref() != Some(holder.id.as_str()) {
                        tracing::info!(%holder, "waiting for the stack's lock");
                        if let Some(progress) = progress {
                            progress.waiting_for_lock(&holder);
                        }
                        told = Some(holder.id.clone());
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    tokio::time::sleep(left.min(Duration::from_millis(500))).await;
                }
            }
        }
    }

    /// Someone else's live lock, when this walk was refused the lock.
    pub async fn refused_by(&self) -> Option<LockHolder> {
        match &*self.lock_state.lock().await {
            LockState::Refused(_, holder) => Some(holder.clone()),
            _ => None,
        }
    }

    /// One conditional put: taken (the table's first lock, or not), or who holds it.
    async fn try_lock(&self, id: &str) -> Result<Try, AwsError> {
        let now = now_ms();
        let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let expires = now + self.lock.lease.as_millis() as i64;
        let put = self
            .aws
            .dynamodb
            .put_item()
            .table_name(self.table())
            .set_item(Some(
                key()
                    .into_iter()
                    .chain([
                        (
                            "holder".to_string(),
                            AttributeValue::S(self.lock.holder.clone()),
                        ),
                        ("lock_id".to_string(), AttributeValue::S(id.to_string())),
                        ("since".to_string(), AttributeValue::S(since)),
                        (
                            "expires".to_string(),
                            AttributeValue::N(expires.to_string()),
                        ),
                    ])
                    .collect(),
            ))
            .condition_expression("attribute_not_exists(pk) OR expires < :now OR holder = :holder")
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .expression_attribute_values(":holder", AttributeValue::S(self.lock.holder.clone()))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .context(&self.id, "dynamodb:PutItem");
        match put {
            Ok(out) => Ok(Try::Taken {
                first: out.attributes.is_none_or(|old| old.is_empty()),
            }),
            Err(e) if e.code.as_deref() == Some("ConditionalCheckFailedException") => {
                // Released between the two calls: the next try takes it.
                Ok(Try::HeldBy(self.holder().await?.unwrap_or(LockHolder {
                    holder: "(released)".into(),
                    id: String::new(),
                    since: String::new(),
                    expires_ms: 0,
                })))
            }
            Err(e) => Err(e),
        }
    }

    /// The live lock, if any (none without a control table). A read: `plan` says who is writing.
    pub async fn holder(&self) -> Result<Option<LockHolder>, AwsError> {
        let found = self
            .aws
            .dynamodb
            .get_item()
            .table_name(self.table())
            .set_key(Some(key()))
            .consistent_read(true)
            .send()
            .await
            .context(&self.id, "dynamodb:GetItem")
            .optional()?;
        let Some(item) = found.and_then(|out| out.item) else {
            return Ok(None);
        };
        let text = |name: &str| {
            item.get(name)
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_default()
        };
        let expires_ms = item
            .get("expires")
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if expires_ms < now_ms() {
            return Ok(None);
        }
        Ok(Some(LockHolder {
            holder: text("holder"),
            id: text("lock_id"),
            since: text("since"),
            expires_ms,
        }))
    }

    /// Renews the lock while it is held, every third of its lease; runs until dropped.
    pub async fn keep_alive(&self) {
        let every = (self.lock.lease / 3).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(every).await;
            let id = match &*self.lock_state.lock().await {
                LockState::Held { id, .. } => id.clone(),
                _ => continue,
            };
            let expires = now_ms() + self.lock.lease.as_millis() as i64;
            let renewed = self
                .aws
                .dynamodb
                .update_item()
                .table_name(self.table())
                .set_key(Some(key()))
                .update_expression("SET expires = :expires")
                .condition_expression("lock_id = :id")
                .expression_attribute_values(":expires", AttributeValue::N(expires.to_string()))
                .expression_attribute_values(":id", AttributeValue::S(id))
                .send()
                .await
                .context(&self.id, "dynamodb:UpdateItem");
            if let Err(e) = renewed {
                tracing::warn!(error = %e, "could not renew the stack's lock");
            }
        }
    }

    /// Releases the lock if this walk holds it.
    pub async fn release(&self) -> Result<(), AwsError> {
        let id = {
            let mut state = self.lock_state.lock().await;
            let LockState::Held { id, .. } = &*state else {
                return Ok(());
            };
            let id = id.clone();
            *state = LockState::Free;
            id
        };
        self.expire_lock(&id).await
    }

    /// The table is gone, and the lock with it.
    pub(super) async fn forget_lock(&self) {
        *self.lock_state.lock().await = LockState::Free;
    }

    /// Frees the lock `id`: expired, not deleted, so that the table remembers it was locked before.
    async fn expire_lock(&self, id: &str) -> Result<(), AwsError> {
        let expired = self
            .aws
            .dynamodb
            .update_item()
            .table_name(self.table())
            .set_key(Some(key()))
            .update_expression("SET expires = :released")
            .condition_expression("lock_id = :id")
            .expression_attribute_values(":released", AttributeValue::N("0".into()))
            .expression_attribute_values(":id", AttributeValue::S(id.to_string()))
            .send()
            .await
            .context(&self.id, "dynamodb:UpdateItem")
            .optional();
        match expired {
            Ok(_) => Ok(()),
            // Taken over after it expired: it is not ours to delete any more.
            Err(e) if e.code.as_deref() == Some("ConditionalCheckFailedException") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes someone else's lock (a crashed writer's), only when `id` is its id.
    pub async fn force_unlock(&self, id: &str) -> Result<LockHolder, AwsError> {
        let refuse = |message: String| AwsError {
            resource: self.id.to_string(),
            call: "force-unlock".into(),
            code: None,
            message,
            class: ErrorClass::Terminal,
        };
        let Some(holder) = self.holder().await? else {
            return Err(refuse("the stack is not locked".into()));
        };
        if holder.id != id {
            return Err(refuse(format!(
                "{holder}; refusing to remove it with id {id}"
            )));
        }
        self.expire_lock(id).await?;
        Ok(holder)
    }
}
