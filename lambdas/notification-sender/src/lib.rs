//! `notification-sender` (Step Functions task). Input: the whole state. On the success path it
//! holds `validation` and `transform` results; on the failure path an `error: {"Error","Cause"}`
//! (a `Catch` with `ResultPath: "$.error"`). Publishes a summary to the topic with message
//! attributes `status` and `upload_id` (for subscription filters) and records NOTIFIED or FAILED.

use aws_sdk_sns::types::MessageAttributeValue;
use serde::Serialize;
use serde_json::{json, Value};
use tap_lambda_shared::status::{get_status, update_status, Status, StatusUpdate};
use tap_lambda_shared::{aws_error, upload_id_from_key, Error, NotifierConfig, Result};

/// Errors carried in a notification.
pub const MAX_NOTIFIED_ERRORS: usize = 10;

#[derive(Clone, Debug)]
pub struct Clients {
    pub sns: aws_sdk_sns::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
}

impl Clients {
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Clients {
            sns: aws_sdk_sns::Client::new(sdk),
            dynamodb: aws_sdk_dynamodb::Client::new(sdk),
        }
    }
}

/// The message published (as JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub upload_id: String,
    /// `SUCCEEDED` or `FAILED`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items_written: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

fn find_u64(state: &Value, pointers: &[&str]) -> Option<u64> {
    pointers
        .iter()
        .find_map(|p| state.pointer(p).and_then(Value::as_u64))
}

fn find_str(state: &Value, pointers: &[&str]) -> Option<String> {
    pointers
        .iter()
        .find_map(|p| state.pointer(p).and_then(Value::as_str))
        .map(str::to_string)
}

/// Builds the summary from the state alone (the status item may add to it, see [`handle`]).
pub fn summarise(state: &Value) -> Result<Summary> {
    let key = find_str(state, &["/key"]);
    let upload_id = find_str(
        state,
        &[
            "/upload_id",
            "/validation/upload_id",
            "/transform/upload_id",
        ],
    )
    .or_else(|| key.as_deref().map(upload_id_from_key))
    .ok_or_else(|| Error::BadEvent("the state has neither an upload_id nor a key".into()))?;
    let mut summary = Summary {
        upload_id,
        object_key: key,
        row_count: find_u64(
            state,
            &[
                "/validation/row_count",
                "/transform/row_count",
                "/row_count",
            ],
        ),
        items_written: find_u64(state, &["/transform/items_written", "/items_written"]),
        ..Default::default()
    };
    match state.get("error").filter(|e| !e.is_null()) {
        None => summary.status = "SUCCEEDED",
        Some(error) => {
            summary.status = "FAILED";
            summary.error_type = error
                .get("Error")
                .and_then(Value::as_str)
                .map(str::to_string);
            // A Lambda error's Cause is a JSON string {"errorType","errorMessage",...}.
            let cause = error
                .get("Cause")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let message = serde_json::from_str::<Value>(cause)
                .ok()
                .and_then(|c| {
                    c.get("errorMessage")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_else(|| cause.to_string());
            if !message.is_empty() {
                summary.errors.push(message);
            }
        }
    }
    Ok(summary)
}

/// The task: publish the summary, then record NOTIFIED (success) or FAILED.
pub async fn handle(state: Value, clients: &Clients, config: &NotifierConfig) -> Result<Value> {
    let mut summary = summarise(&state)?;
    let table = &config.status_table;
    // The status item has the validator's per-row errors and counts the state may lack.
    if let Some(record) = get_status(&clients.dynamodb, table, &summary.upload_id).await? {
        summary.row_count = summary.row_count.or(record.row_count);
        summary.items_written = summary.items_written.or(record.items_written);
        summary.object_key = summary.object_key.or(record.object_key);
        if summary.status == "FAILED" {
            summary.error_count = record.error_count;
            for e in record.errors {
                if !summary.errors.iter().any(|have| have.contains(&e)) {
                    summary.errors.push(e);
                }
            }
        }
    }
    summary.errors.truncate(MAX_NOTIFIED_ERRORS);
    let message = serde_json::to_string_pretty(&summary).expect("summary serialises");
    let attribute = |v: &str| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .expect("fields are set")
    };
    let topic = &config.topic_arn;
    let out = clients
        .sns
        .publish()
        .topic_arn(topic)
        .subject(format!(
            "Transaction upload {}: {}",
            summary.upload_id, summary.status
        ))
        .message(message)
        .message_attributes("status", attribute(summary.status))
        .message_attributes("upload_id", attribute(&summary.upload_id))
        .send()
        .await
        .map_err(aws_error(
            "Publish",
            format!("topic {topic} (upload {})", summary.upload_id),
        ))?;
    let (status, update) = if summary.status == "SUCCEEDED" {
        (Status::Notified, StatusUpdate::default())
    } else {
        let errors = (!summary.errors.is_empty()).then(|| summary.errors.clone());
        (
            Status::Failed,
            StatusUpdate {
                errors,
                ..Default::default()
            },
        )
    };
    update_status(&clients.dynamodb, table, &summary.upload_id, status, update).await?;
    tracing::info!(
        upload_id = summary.upload_id,
        status = summary.status,
        "notified"
    );
    Ok(json!({
        "upload_id": summary.upload_id,
        "status": summary.status,
        "message_id": out.message_id(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_state() {
        let state = json!({"bucket": "b", "key": "validated/u1.csv",
            "validation": {"upload_id": "u1", "status": "VALIDATED", "row_count": 3},
            "transform": {"upload_id": "u1", "items_written": 3}});
        let s = summarise(&state).unwrap();
        assert_eq!(
            (s.upload_id.as_str(), s.status, s.row_count, s.items_written),
            ("u1", "SUCCEEDED", Some(3), Some(3))
        );
        assert!(s.errors.is_empty());
    }

    #[test]
    fn failure_state_with_lambda_cause() {
        let cause = json!({"errorType": "ValidationFailed", "errorMessage": "2 error(s) in 5 row(s): row 1, amount: bad"}).to_string();
        let state = json!({"bucket": "b", "key": "validated/u2.csv", "error": {"Error": "ValidationFailed", "Cause": cause}});
        let s = summarise(&state).unwrap();
        assert_eq!(s.upload_id, "u2");
        assert_eq!(s.status, "FAILED");
        assert_eq!(s.error_type.as_deref(), Some("ValidationFailed"));
        assert_eq!(
            s.errors,
            vec!["2 error(s) in 5 row(s): row 1, amount: bad".to_string()]
        );
        let plain = json!({"key": "validated/u3.csv", "error": {"Error": "States.Timeout", "Cause": "took too long"}});
        assert_eq!(
            summarise(&plain).unwrap().errors,
            vec!["took too long".to_string()]
        );
    }

    #[test]
    fn state_without_id_is_rejected() {
        assert!(matches!(
            summarise(&json!({"foo": 1})),
            Err(Error::BadEvent(_))
        ));
    }
}
