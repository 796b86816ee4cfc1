//! `csv-validator`: one function, three event shapes (see [`handle`]):
//!
//! * API Gateway REST proxy `POST /upload` with a CSV body → validate; store under `validated/`
//!   (202) or reject with errors by row and column (400).
//! * S3 `ObjectCreated` records for `validated/` keys → start the EXPRESS state machine.
//! * Step Functions task input `{"bucket","key"}` → re-validate the object; `ValidationFailed` if bad.

use aws_lambda_events::apigw::{ApiGatewayProxyRequest, ApiGatewayProxyResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::{header::CONTENT_TYPE, HeaderValue, Method};
use aws_lambda_events::s3::S3Event;
use base64::Engine;
use serde::Deserialize;
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

/// API Gateway REST API (v1) proxy request, as `aws_lambda_events` defines it.
pub type ApiRequest = ApiGatewayProxyRequest;
/// API Gateway proxy response, as `aws_lambda_events` defines it.
pub type ApiResponse = ApiGatewayProxyResponse;

/// A JSON response with `Content-Type: application/json`.
pub fn json_response(status_code: i64, body: Value) -> ApiResponse {
    let mut response = ApiResponse::default();
    response.status_code = status_code;
    response
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.body = Some(Body::Text(body.to_string()));
    response
}

/// A 4xx response `{"message": ...}` (boxed: it is the error side of [`upload_body`]).
fn client_error(status_code: i64, message: impl Into<String>) -> Box<ApiResponse> {
    Box::new(json_response(
        status_code,
        json!({ "message": message.into() }),
    ))
}

/// Reading a proxy response's body (for tests and the local invoker).
pub trait ResponseBody {
    /// The body as text (empty when there is none).
    fn body_text(&self) -> String;
    /// The body parsed as JSON (`null` when it is not JSON).
    fn body_json(&self) -> Value {
        serde_json::from_str(&self.body_text()).unwrap_or(Value::Null)
    }
}

impl ResponseBody for ApiResponse {
    fn body_text(&self) -> String {
        match &self.body {
            Some(Body::Text(text)) => text.clone(),
            Some(body) => String::from_utf8_lossy(body).into_owned(),
            None => String::new(),
        }
    }
}

/// The Step Functions task input: `{"bucket", "key"}` (other fields of the state are ignored).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct TaskInput {
    pub bucket: String,
    pub key: String,
}

/// The shape of an incoming event.
#[derive(Debug)]
pub enum Event {
    Api(Box<ApiRequest>),
    S3(Vec<(String, String)>),
    Task(TaskInput),
}

/// Tells the three event shapes apart by deserializing into each type in turn: an API Gateway proxy
/// request, an S3 event (its `ObjectCreated` records' bucket and decoded key), a task input.
pub fn classify(event: &Value) -> Result<Event> {
    let api_error = match ApiRequest::deserialize(event) {
        Ok(request) => return Ok(Event::Api(Box::new(request))),
        Err(e) => e,
    };
    let s3_error = match S3Event::deserialize(event) {
        Ok(s3) => return s3_objects(s3).map(Event::S3),
        Err(e) => e,
    };
    let task_error = match TaskInput::deserialize(event) {
        Ok(task) => return Ok(Event::Task(task)),
        Err(e) => e,
    };
    Err(Error::BadEvent(format!(
        "expected an API Gateway proxy event ({api_error}), an S3 event ({s3_error}) or a task input {{\"bucket\",\"key\"}} ({task_error})"
    )))
}

/// The `(bucket, key)` of each `ObjectCreated` record, keys decoded.
fn s3_objects(event: S3Event) -> Result<Vec<(String, String)>> {
    let mut objects = Vec::new();
    for record in event.records {
        if let Some(name) = &record.event_name {
            if !name.starts_with("ObjectCreated") {
                continue;
            }
        }
        match (record.s3.bucket.name, record.s3.object.key) {
            (Some(bucket), Some(key)) => objects.push((bucket, decode_s3_key(&key))),
            _ => {
                return Err(Error::BadEvent(
                    "a Records[] entry has no s3.bucket.name / s3.object.key".into(),
                ))
            }
        }
    }
    Ok(objects)
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
            let response = handle_upload(*request, clients, config).await;
            Ok(serde_json::to_value(response).expect("response serialises"))
        }
        Event::S3(objects) => handle_s3_event(&objects, clients, config).await,
        Event::Task(TaskInput { bucket, key }) => handle_task(&bucket, &key, clients, config).await,
    }
}

/// Checks the request's envelope and returns the body bytes, or the 4xx response.
pub fn upload_body(
    request: &ApiRequest,
    max_bytes: usize,
) -> std::result::Result<Vec<u8>, Box<ApiResponse>> {
    let method = &request.http_method;
    if method != Method::POST {
        return Err(client_error(
            405,
            format!("method {method} not allowed: use POST"),
        ));
    }
    let content_type = request
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let Some(content_type) = content_type else {
        return Err(client_error(
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
        return Err(client_error(
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
                return Err(client_error(
                    415,
                    format!("unsupported charset {value:?}: the CSV must be UTF-8"),
                ));
            }
        }
    }
    let body = request.body.as_deref().unwrap_or_default();
    if body.is_empty() {
        return Err(client_error(
            400,
            "empty body: expected a CSV with a header row",
        ));
    }
    let too_large = |n: usize| {
        client_error(
            413,
            format!("body of {n} bytes exceeds the limit of {max_bytes} bytes"),
        )
    };
    let bytes = if request.is_base64_encoded {
        // Decoded size is at most 3/4 of the encoded size: refuse before decoding what cannot fit.
        if body.len() / 4 * 3 > max_bytes + 3 {
            return Err(too_large(body.len() / 4 * 3));
        }
        let compact: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|e| {
                client_error(
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
        return Err(client_error(
            400,
            "empty body: expected a CSV with a header row",
        ));
    }
    if let Err(e) = std::str::from_utf8(&bytes) {
        return Err(client_error(
            400,
            format!("the body is not valid UTF-8 (first invalid byte at offset {}): the CSV must be UTF-8", e.valid_up_to()),
        ));
    }
    if media_type == "application/json" {
        let envelope: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| client_error(400, format!("the JSON body is not valid JSON: {e}")))?;
        return match envelope.get(JSON_ENVELOPE_FIELD).and_then(serde_json::Value::as_str) {
            Some(csv) if !csv.is_empty() => Ok(csv.as_bytes().to_vec()),
            _ => Err(client_error(
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
    json_response(
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
        Err(response) => return *response,
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
            return json_response(
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
        return json_response(
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
    json_response(
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
        let mut request = ApiRequest::default();
        request.http_method = Method::POST;
        if let Some(c) = content_type {
            request
                .headers
                .insert(CONTENT_TYPE, HeaderValue::from_str(c).unwrap());
        }
        request.body = body.map(str::to_string);
        request.is_base64_encoded = base64;
        request
    }

    fn status_of(r: std::result::Result<Vec<u8>, Box<ApiResponse>>) -> i64 {
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
        get.http_method = Method::GET;
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
        let api = json!({"httpMethod": "POST", "path": "/upload", "headers": {"Content-Type": "text/csv", "X-Empty": ""}, "body": "x", "isBase64Encoded": false, "requestContext": {"httpMethod": "POST"}});
        assert!(
            matches!(classify(&api).unwrap(), Event::Api(r) if r.headers.get("content-type").and_then(|v| v.to_str().ok()) == Some("text/csv"))
        );
        let record = |name: &str, key: &str| {
            json!({"eventName": name, "eventTime": "2024-05-01T12:00:00.000Z", "userIdentity": {}, "requestParameters": {},
                   "s3": {"bucket": {"name": "b"}, "object": {"key": key}}})
        };
        let s3 = json!({"Records": [
            record("ObjectCreated:Put", "validated/my+file%2B1.csv"),
            record("ObjectRemoved:Delete", "validated/x.csv")
        ]});
        match classify(&s3).unwrap() {
            Event::S3(objects) => assert_eq!(
                objects,
                vec![("b".to_string(), "validated/my file+1.csv".to_string())]
            ),
            other => panic!("{other:?}"),
        }
        let task = json!({"bucket": "b", "key": "validated/1.csv", "extra": 1});
        assert!(matches!(classify(&task).unwrap(), Event::Task(_)));
        assert!(matches!(
            classify(&json!({"hello": 1})),
            Err(Error::BadEvent(_))
        ));
    }
}
