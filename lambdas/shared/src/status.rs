//! The `processing-status` table: one item per upload, keyed by `upload_id`, updated at each stage.
//! Updates SET attributes (counts are set, never added), so a retried stage is idempotent.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use crate::error::{aws_error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Validated,
    Rejected,
    Transformed,
    Notified,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Validated => "VALIDATED",
            Status::Rejected => "REJECTED",
            Status::Transformed => "TRANSFORMED",
            Status::Notified => "NOTIFIED",
            Status::Failed => "FAILED",
        }
    }
}

/// What to set on the status item; `None` fields are left as they are.
#[derive(Clone, Debug, Default)]
pub struct StatusUpdate {
    pub row_count: Option<u64>,
    pub error_count: Option<u64>,
    pub items_written: Option<u64>,
    pub object_key: Option<String>,
    pub errors: Option<Vec<String>>,
}

/// Sets `status` and `timestamp` (now) and the given fields on the item of `upload_id`.
pub async fn update_status(
    client: &Client,
    table: &str,
    upload_id: &str,
    status: Status,
    update: StatusUpdate,
) -> Result<()> {
    let mut sets = vec!["#status = :status", "#timestamp = :timestamp"];
    let mut values: HashMap<String, AttributeValue> = HashMap::new();
    values.insert(":status".into(), AttributeValue::S(status.as_str().into()));
    values.insert(":timestamp".into(), AttributeValue::S(crate::now_rfc3339()));
    let mut names: HashMap<String, String> = HashMap::new();
    names.insert("#status".into(), "status".into());
    names.insert("#timestamp".into(), "timestamp".into());
    let numbers = [
        ("row_count", update.row_count),
        ("error_count", update.error_count),
        ("items_written", update.items_written),
    ];
    for (name, value) in numbers {
        if let Some(v) = value {
            sets.push(match name {
                "row_count" => "row_count = :row_count",
                "error_count" => "error_count = :error_count",
                _ => "items_written = :items_written",
            });
            values.insert(format!(":{name}"), AttributeValue::N(v.to_string()));
        }
    }
    if let Some(key) = update.object_key {
        sets.push("object_key = :object_key");
        values.insert(":object_key".into(), AttributeValue::S(key));
    }
    if let Some(errors) = update.errors {
        sets.push("#errors = :errors");
        names.insert("#errors".into(), "errors".into());
        values.insert(
            ":errors".into(),
            AttributeValue::L(errors.into_iter().map(AttributeValue::S).collect()),
        );
    }
    client
        .update_item()
        .table_name(table)
        .key("upload_id", AttributeValue::S(upload_id.into()))
        .update_expression(format!("SET {}", sets.join(", ")))
        .set_expression_attribute_names(Some(names))
        .set_expression_attribute_values(Some(values))
        .send()
        .await
        .map_err(aws_error(
            "UpdateItem",
            format!("status table {table} (upload {upload_id})"),
        ))?;
    tracing::info!(upload_id, status = status.as_str(), "status updated");
    Ok(())
}

/// The status item of an upload, as read back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusRecord {
    pub upload_id: String,
    pub status: String,
    pub row_count: Option<u64>,
    pub error_count: Option<u64>,
    pub items_written: Option<u64>,
    pub object_key: Option<String>,
    pub timestamp: Option<String>,
    pub errors: Vec<String>,
}

fn num(item: &HashMap<String, AttributeValue>, name: &str) -> Option<u64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
}

fn string(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

impl StatusRecord {
    pub fn from_item(item: &HashMap<String, AttributeValue>) -> StatusRecord {
        StatusRecord {
            upload_id: string(item, "upload_id").unwrap_or_default(),
            status: string(item, "status").unwrap_or_default(),
            row_count: num(item, "row_count"),
            error_count: num(item, "error_count"),
            items_written: num(item, "items_written"),
            object_key: string(item, "object_key"),
            timestamp: string(item, "timestamp"),
            errors: item
                .get("errors")
                .and_then(|v| v.as_l().ok())
                .map(|l| l.iter().filter_map(|v| v.as_s().ok().cloned()).collect())
                .unwrap_or_default(),
        }
    }
}

/// Reads the status item of `upload_id` (consistent read).
pub async fn get_status(
    client: &Client,
    table: &str,
    upload_id: &str,
) -> Result<Option<StatusRecord>> {
    let out = client
        .get_item()
        .table_name(table)
        .key("upload_id", AttributeValue::S(upload_id.into()))
        .consistent_read(true)
        .send()
        .await
        .map_err(aws_error(
            "GetItem",
            format!("status table {table} (upload {upload_id})"),
        ))?;
    Ok(out.item().map(StatusRecord::from_item))
}
