//! `csv-validator`: one function, three event shapes (see [`handle`]):
//!
//! * API Gateway REST proxy `POST /upload` with a CSV body → validate; store under `validated/`
//!   (202) or reject with errors by row and column (400).
//! * S3 `ObjectCreated` records for `validated/` keys → start the EXPRESS state machine.
//! * Step Functions task input `{"bucket","key"}` → re-validate the object; `ValidationFailed` if bad.

use std::collections::HashMap;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tap_lambda_shared::status::{update_status, Status, StatusUpdate};
use tap_lambda_shared::validate::StreamError;
use tap_lambda_shared::{
    aws_error, upload_id_from_key, validate_async, validate_bytes, validated_key, Error, Result,
    ValidationReport, ValidatorConfig, VALIDATED_PREFIX,
};

/// Content types accepted for uploads (parameters such as `charset` aside).
pub const ACCEPTED_CONTENT_TYPES: [&str; 4] = [
    "text/csv",
    "application/csv",
    "text/plain",
    "application/json",
];

/// `application/json` uploads carry the CSV in an envelope `{"csv": "..."}` (the API's `UploadEnvelope`
/// model, which API Gateway validates before the function is invoked).
pub const JSON_ENVELOPE_FIELD: &str = "csv";
/// Errors stored on a REJECTED status item.
const STATUS_ERRORS: usize = 10;

#[derive(Clone, Debug)]
pub struct Clients {
    pub s3: aws_sdk_s3::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sfn: aws_sdk_sfn::Client,
}

impl Clients {
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Clients {
            s3: tap_lambda_shared::aws::s3_client(sdk),
            dynamodb: aws_sdk_dynamodb::Client::new(sdk),
            sfn: aws_sdk_sfn::Client::new(sdk),
        }
    }
}

/// API Gateway REST API (v1) proxy request: the fields used here.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiRequest {
    #[serde(default)]
    pub http_method: Option<String>,
    #[serde(default)]
    pub headers: Option<HashMap<String, Option<String>>>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub is_base64_encoded: Option<bool>,
}

impl ApiRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .as_ref()?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_deref())
    }
}

/// API Gateway proxy response.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiResponse {
    pub status_code: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
    pub is_base64_encoded: bool,
}

impl ApiResponse {
    pub fn json(status_code: u16, body: Value) -> Self {
        ApiResponse {
            status_code,
            headers: HashMap::from([("Content-Type".to_string(), "application/json".to_string())]),
            body: body.to_string(),
            is_base64_encoded: false,
        }
    }

    fn client_error(status_code: u16, message: impl Into<String>) -> Self {
        Self::json(status_code, json!({ "message": message.into() }))
    }

    /// The body parsed as JSON (for tests and the local invoker).
    pub fn body_json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// The shape of an incoming event.
#[derive(Debug)]
pub enum Event {
    Api(ApiRequest),
    S3(Vec<(String, String)>),
    Task { bucket: String, key: String },
}

/// Tells the three event shapes apart.
pub fn classify(event: &Value) -> Result<Event> {
    if event.get("httpMethod").is_some()
        || (event.get("requestContext").is_some() && event.get("body").is_some())
    {
        let request: ApiRequest = serde_json::from_value(event.clone())
            .map_err(|e| Error::BadEvent(format!("API Gateway event: {e}")))?;
        return Ok(Event::Api(request));
    }
    if let Some(records) = event.get("Records").and_then(Value::as_array) {
        let mut objects = Vec::new();
        for record in records {
            if let Some(name) = record.get("eventName").and_then(Value::as_str) {
                if !name.starts_with("ObjectCreated") {
                    continue;
                }
            }
            let bucket = record.pointer("/s3/bucket/name").and_then(Value::as_str);
            let key = record.pointer("/s3/object/key").and_then(Value::as_str);
            match (bucket, key) {
                (Some(b), Some(k)) => objects.push((b.to_string(), decode_s3_key(k))),
                _ => {
                    return Err(Error::BadEvent(
                        "a Records[] entry has no s3.bucket.name / s3.object.key".into(),
                    ))
                }
            }
        }
        return Ok(Event::S3(objects));
    }
    if let (Some(bucket), Some(key)) = (
        event.get("bucket").and_then(Value::as_str),
        event.get("key").and_then(Value::as_str),
    ) {
        return Ok(Event::Task {
            bucket: bucket.to_string(),
            key: key.to_string(),
        });
    }
    Err(Error::BadEvent(
        "expected an API Gateway proxy event, an S3 event (Records[].s3) or a task input {\"bucket\",\"key\"}".into(),
    ))
}

/// S3 event keys are URL-encoded with `+` for spaces.
pub fn decode_s3_key(key: &str) -> String {
    let plus = key.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8_lossy()
        .into_owned()
}

/// Entry point for all three event shapes.
pub async fn handle(event: Value, clients: &Clients, config: &ValidatorConfig) -> Result<Value> {
    match classify(&event)? {
        Event::Api(request) => {
            let response = handle_upload(request, clients, config).await;
            Ok(serde_json::to_value(response).expect("response serialises"))
        }
        Event::S3(objects) => handle_s3_event(&objects, clients, config).await,
        Event::Task { bucket, key } => handle_task(&bucket, &key, clients, config).await,
    }
}

/// Checks the request's envelope and returns the body bytes, or the 4xx response.
pub fn upload_body(
    request: &ApiRequest,
    max_bytes: usize,
) -> std::result::Result<Vec<u8>, ApiResponse> {
    if let Some(method) = &request.http_method {
        if !method.eq_ignore_ascii_case("POST") {
            return Err(ApiResponse::client_error(
                405,
                format!("method {method} not allowed: use POST"),
            ));
        }
    }
    let Some(content_type) = request.header("content-type") else {
        return Err(ApiResponse::client_error(
            415,
            format!(
                "missing Content-Type: send the CSV as one of {}",
                ACCEPTED_CONTENT_TYPES.join(", ")
            ),
        ));
    };
    let mut parts = content_type.split(';');
    let media_type = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    if !ACCEPTED_CONTENT_TYPES.contains(&media_type.as_str()) {
        return Err(ApiResponse::client_error(
            415,
            format!(
                "unsupported Content-Type {media_type:?}: send the CSV as one of {}",
                ACCEPTED_CONTENT_TYPES.join(", ")
            ),
        ));
    }
    for param in parts {
        if let Some((name, value)) = param.split_once('=') {
            let value = value.trim().trim_matches('"').to_ascii_lowercase();
            if name.trim().eq_ignore_ascii_case("charset")
                && value != "utf-8"
                && value != "utf8"
                && value != "us-ascii"
            {
                return Err(ApiResponse::client_error(
                    415,
                    format!("unsupported charset {value:?}: the CSV must be UTF-8"),
                ));
            }
        }
    }
    let body = request.body.as_deref().unwrap_or_default();
    if body.is_empty() {
        return Err(ApiResponse::client_error(
            400,
            "empty body: expected a CSV with a header row",
        ));
    }
    let too_large = |n: usize| {
        ApiResponse::client_error(
            413,
            format!("body of {n} bytes exceeds the limit of {max_bytes} bytes"),
        )
    };
    let bytes = if request.is_base64_encoded.unwrap_or(false) {
        // Decoded size is at most 3/4 of the encoded size: refuse before decoding what cannot fit.
        if body.len() / 4 * 3 > max_bytes + 3 {
            return Err(too_large(body.len() / 4 * 3));
        }
        let compact: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|e| {
                ApiResponse::client_error(
                    400,
                    format!("the body is marked base64-encoded but is not valid base64: {e}"),
                )
            })?
    } else {
        body.as_bytes().to_vec()
    };
    if bytes.len() > max_bytes {
        return Err(too_large(bytes.len()));
    }
    if bytes.is_empty() {
        return Err(ApiResponse::client_error(
            400,
            "empty body: expected a CSV with a header row",
        ));
    }
    if let Err(e) = std::str::from_utf8(&bytes) {
        return Err(ApiResponse::client_error(
            400,
            format!("the body is not valid UTF-8 (first invalid byte at offset {}): the CSV must be UTF-8", e.valid_up_to()),
        ));
    }
    if media_type == "application/json" {
        let envelope: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiResponse::client_error(400, format!("the JSON body is not valid JSON: {e}"))
        })?;
        return match envelope.get(JSON_ENVELOPE_FIELD).and_then(serde_json::Value::as_str) {
            Some(csv) if !csv.is_empty() => Ok(csv.as_bytes().to_vec()),
            _ => Err(ApiResponse::client_error(
                400,
                format!("a JSON upload must be an object with a non-empty string field {JSON_ENVELOPE_FIELD:?} holding the CSV"),
            )),
        };
    }
    Ok(bytes)
}

fn status_errors(report: &ValidationReport) -> Vec<String> {
    report
        .errors
        .iter()
        .take(STATUS_ERRORS)
        .map(ToString::to_string)
        .collect()
}

fn internal_error(upload_id: &str, error: &Error) -> ApiResponse {
    tracing::error!(upload_id, error = %error, "upload failed");
    ApiResponse::json(
        500,
        json!({ "message": "the upload could not be stored; try again later", "upload_id": upload_id }),
    )
}

/// `POST /upload`: validate the CSV body and store it under `validated/`, or reject it.
pub async fn handle_upload(
    request: ApiRequest,
    clients: &Clients,
    config: &ValidatorConfig,
) -> ApiResponse {
    let bytes = match upload_body(&request, config.max_upload_bytes) {
        Ok(b) => b,
        Err(response) => return response,
    };
    let upload_id = uuid::Uuid::new_v4().to_string();
    let table = &config.status_table;
    let report = match validate_bytes(&bytes) {
        Ok(report) => report,
        Err(header_error) => {
            let update = StatusUpdate {
                row_count: Some(0),
                error_count: Some(header_error.problems.len() as u64),
                errors: Some(header_error.problems.clone()),
                ..Default::default()
            };
            if let Err(e) = update_status(
                &clients.dynamodb,
                table,
                &upload_id,
                Status::Rejected,
                update,
            )
            .await
            {
                return internal_error(&upload_id, &e);
            }
            return ApiResponse::json(
                400,
                json!({
                    "message": header_error.to_string(),
                    "upload_id": upload_id,
                    "status": "REJECTED",
                    "error_count": header_error.problems.len(),
                    "errors": header_error.problems.iter().map(|p| json!({"row": 0, "message": p})).collect::<Vec<_>>(),
                }),
            );
        }
    };
    if !report.is_valid() {
        let update = StatusUpdate {
            row_count: Some(report.row_count),
            error_count: Some(report.error_count),
            errors: Some(status_errors(&report)),
            ..Default::default()
        };
        if let Err(e) = update_status(
            &clients.dynamodb,
            table,
            &upload_id,
            Status::Rejected,
            update,
        )
        .await
        {
            return internal_error(&upload_id, &e);
        }
        tracing::info!(
            upload_id,
            error_count = report.error_count,
            "upload rejected"
        );
        return ApiResponse::json(
            400,
            json!({
                "message": format!("validation failed: {} error(s)", report.error_count),
                "upload_id": upload_id,
                "status": "REJECTED",
                "row_count": report.row_count,
                "error_count": report.error_count,
                "errors": report.errors,
            }),
        );
    }
    let key = validated_key(&upload_id);
    // Status first: the object's arrival starts the pipeline, whose later statuses must win.
    let update = StatusUpdate {
        row_count: Some(report.row_count),
        error_count: Some(0),
        object_key: Some(key.clone()),
        ..Default::default()
    };
    if let Err(e) = update_status(
        &clients.dynamodb,
        table,
        &upload_id,
        Status::Validated,
        update,
    )
    .await
    {
        return internal_error(&upload_id, &e);
    }
    let bucket = &config.bucket_name;
    let put = clients
        .s3
        .put_object()
        .bucket(bucket)
        .key(&key)
        .content_type("text/csv")
        .metadata("upload-id", &upload_id)
        .body(bytes.into())
        .send()
        .await
        .map_err(aws_error("PutObject", format!("s3://{bucket}/{key}")));
    if let Err(e) = put {
        let update = StatusUpdate {
            errors: Some(vec![e.to_string()]),
            ..Default::default()
        };
        let _ = update_status(&clients.dynamodb, table, &upload_id, Status::Failed, update).await;
        return internal_error(&upload_id, &e);
    }
    tracing::info!(upload_id, rows = report.row_count, key, "upload validated");
    ApiResponse::json(
        202,
        json!({ "upload_id": upload_id, "status": "VALIDATED", "row_count": report.row_count, "object_key": key }),
    )
}

/// S3 event: start one state machine execution per new object under `validated/`.
pub async fn handle_s3_event(
    objects: &[(String, String)],
    clients: &Clients,
    config: &ValidatorConfig,
) -> Result<Value> {
    let mut started = Vec::new();
    let mut ignored = Vec::new();
    for (bucket, key) in objects {
        if !key.starts_with(VALIDATED_PREFIX) {
            ignored.push(key.clone());
            continue;
        }
        let input = json!({ "bucket": bucket, "key": key }).to_string();
        let arn = &config.state_machine_arn;
        let out = clients
            .sfn
            .start_execution()
            .state_machine_arn(arn)
            .input(input)
            .send()
            .await
            .map_err(aws_error(
                "StartExecution",
                format!("state machine {arn} (for s3://{bucket}/{key})"),
            ))?;
        tracing::info!(
            bucket,
            key,
            execution = out.execution_arn(),
            "pipeline started"
        );
        started.push(json!({ "key": key, "execution_arn": out.execution_arn() }));
    }
    Ok(json!({ "started": started, "ignored": ignored }))
}

/// Step Functions task: re-validate the object (it may have reached `validated/` another way).
pub async fn handle_task(
    bucket: &str,
    key: &str,
    clients: &Clients,
    config: &ValidatorConfig,
) -> Result<Value> {
    let upload_id = upload_id_from_key(key);
    let reader = tap_lambda_shared::aws::open_object(&clients.s3, bucket, key).await?;
    let table = &config.status_table;
    let report = match validate_async(reader).await {
        Ok(report) => report,
        Err(StreamError::Read(message)) => {
            return Err(Error::Read {
                resource: format!("s3://{bucket}/{key}"),
                message,
            })
        }
        Err(StreamError::Header(header_error)) => {
            let update = StatusUpdate {
                row_count: Some(0),
                error_count: Some(header_error.problems.len() as u64),
                object_key: Some(key.to_string()),
                errors: Some(header_error.problems.clone()),
                ..Default::default()
            };
            update_status(
                &clients.dynamodb,
                table,
                &upload_id,
                Status::Rejected,
                update,
            )
            .await?;
            return Err(Error::ValidationFailed(format!(
                "s3://{bucket}/{key}: {header_error}"
            )));
        }
    };
    if !report.is_valid() {
        let update = StatusUpdate {
            row_count: Some(report.row_count),
            error_count: Some(report.error_count),
            object_key: Some(key.to_string()),
            errors: Some(status_errors(&report)),
            ..Default::default()
        };
        update_status(
            &clients.dynamodb,
            table,
            &upload_id,
            Status::Rejected,
            update,
        )
        .await?;
        return Err(Error::ValidationFailed(format!(
            "s3://{bucket}/{key}: {}",
            report.summary(5)
        )));
    }
    let update = StatusUpdate {
        row_count: Some(report.row_count),
        error_count: Some(0),
        object_key: Some(key.to_string()),
        ..Default::default()
    };
    update_status(
        &clients.dynamodb,
        table,
        &upload_id,
        Status::Validated,
        update,
    )
    .await?;
    Ok(json!({ "upload_id": upload_id, "status": "VALIDATED", "row_count": report.row_count }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_envelope_carries_the_csv() {
        let csv = "transaction_id,account_id,amount,currency,timestamp\nt1,a1,1.00,USD,2026-01-01T00:00:00Z\n";
        let body = serde_json::json!({ "csv": csv }).to_string();
        let bytes = upload_body(
            &request(Some("application/json"), Some(&body), false),
            10_000,
        )
        .unwrap();
        assert_eq!(bytes, csv.as_bytes());
        let wrong = upload_body(
            &request(Some("application/json"), Some(r#"{"data": "x"}"#), false),
            10_000,
        );
        assert_eq!(status_of(wrong), 400);
        let broken = upload_body(
            &request(Some("application/json"), Some("{not json"), false),
            10_000,
        );
        assert_eq!(status_of(broken), 400);
    }

    fn request(content_type: Option<&str>, body: Option<&str>, base64: bool) -> ApiRequest {
        ApiRequest {
            http_method: Some("POST".into()),
            headers: content_type
                .map(|c| HashMap::from([("content-type".to_string(), Some(c.to_string()))])),
            body: body.map(str::to_string),
            is_base64_encoded: Some(base64),
        }
    }

    fn status_of(r: std::result::Result<Vec<u8>, ApiResponse>) -> u16 {
        match r {
            Ok(_) => 200,
            Err(resp) => {
                assert!(resp.body_json()["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()));
                resp.status_code
            }
        }
    }

    #[test]
    fn envelope_checks() {
        let csv = "transaction_id,account_id,amount,currency,timestamp\n";
        assert_eq!(
            status_of(upload_body(
                &request(Some("text/csv"), Some(csv), false),
                1000
            )),
            200
        );
        assert_eq!(
            status_of(upload_body(
                &request(Some("Application/CSV; charset=UTF-8"), Some(csv), false),
                1000
            )),
            200
        );
        assert_eq!(
            status_of(upload_body(
                &request(Some("text/plain"), Some(csv), false),
                1000
            )),
            200
        );
        assert_eq!(
            status_of(upload_body(
                &request(Some("application/xml"), Some(csv), false),
                1000
            )),
            415
        );
        // A raw CSV sent as JSON is not the JSON envelope.
        assert_eq!(
            status_of(upload_body(
                &request(Some("application/json"), Some(csv), false),
                1000
            )),
            400
        );
        assert_eq!(
            status_of(upload_body(
                &request(Some("text/csv; charset=latin1"), Some(csv), false),
                1000
            )),
            415
        );
        assert_eq!(
            status_of(upload_body(&request(None, Some(csv), false), 1000)),
            415
        );
        assert_eq!(
            status_of(upload_body(&request(Some("text/csv"), None, false), 1000)),
            400
        );
        assert_eq!(
            status_of(upload_body(
                &request(Some("text/csv"), Some(""), false),
                1000
            )),
            400
        );
        assert_eq!(
            status_of(upload_body(
                &request(Some("text/csv"), Some(csv), false),
                10
            )),
            413
        );
        let mut get = request(Some("text/csv"), Some(csv), false);
        get.http_method = Some("GET".into());
        assert_eq!(status_of(upload_body(&get, 1000)), 405);
    }

    #[test]
    fn base64_bodies() {
        let csv = "a,b\n1,2\n";
        let encoded = base64::engine::general_purpose::STANDARD.encode(csv);
        assert_eq!(
            upload_body(&request(Some("text/csv"), Some(&encoded), true), 1000).unwrap(),
            csv.as_bytes()
        );
        assert_eq!(
            status_of(upload_body(
                &request(Some("text/csv"), Some("@@not base64@@"), true),
                1000
            )),
            400
        );
        assert_eq!(
            status_of(upload_body(
                &request(Some("text/csv"), Some(&encoded), true),
                4
            )),
            413
        );
        // Non-UTF-8 bytes can only arrive base64-encoded.
        let latin1 = base64::engine::general_purpose::STANDARD.encode(b"caf\xe9\n");
        let resp = upload_body(&request(Some("text/csv"), Some(&latin1), true), 1000).unwrap_err();
        assert_eq!(resp.status_code, 400);
        assert!(resp.body_json()["message"]
            .as_str()
            .unwrap()
            .contains("offset 3"));
    }

    #[test]
    fn classify_events() {
        let api = json!({"httpMethod": "POST", "path": "/upload", "headers": {"Content-Type": "text/csv", "X-Null": null}, "body": "x", "isBase64Encoded": false, "requestContext": {}});
        assert!(
            matches!(classify(&api).unwrap(), Event::Api(r) if r.header("content-type") == Some("text/csv"))
        );
        let s3 = json!({"Records": [
            {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": "validated/my+file%2B1.csv"}}},
            {"eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": "b"}, "object": {"key": "validated/x.csv"}}}
        ]});
        match classify(&s3).unwrap() {
            Event::S3(objects) => assert_eq!(
                objects,
                vec![("b".to_string(), "validated/my file+1.csv".to_string())]
            ),
            other => panic!("{other:?}"),
        }
        let task = json!({"bucket": "b", "key": "validated/1.csv", "extra": 1});
        assert!(matches!(classify(&task).unwrap(), Event::Task { .. }));
        assert!(matches!(
            classify(&json!({"hello": 1})),
            Err(Error::BadEvent(_))
        ));
    }
}
