//! The one error type of the Lambda functions, and its mapping to the Lambda runtime's
//! `Diagnostic` (whose `errorType` the state machine's `Catch` matches on).

use aws_smithy_types::error::display::DisplayErrorContext;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required environment variable is not set (a deployment error).
    #[error("missing environment variable {0}: the function cannot start without it")]
    MissingEnv(&'static str),
    #[error("invalid environment variable {name}: {reason}")]
    InvalidEnv { name: &'static str, reason: String },
    /// An AWS call failed; `call` names the API call and `resource` what it was made on.
    #[error("{call} on {resource} failed: {message}")]
    Aws {
        call: &'static str,
        resource: String,
        message: String,
    },
    /// The event did not have a shape this function handles.
    #[error("unsupported event: {0}")]
    BadEvent(String),
    /// The uploaded CSV did not pass validation.
    #[error("{0}")]
    ValidationFailed(String),
    /// A validated object could not be transformed (changed after validation, unreadable, ...).
    #[error("{0}")]
    TransformFailed(String),
    /// Reading an S3 object's body failed part way.
    #[error("reading {resource}: {message}")]
    Read { resource: String, message: String },
}

impl Error {
    /// The `errorType` reported to Lambda (and so to Step Functions' `Catch` / `Retry`).
    pub fn error_type(&self) -> &'static str {
        match self {
            Error::MissingEnv(_) | Error::InvalidEnv { .. } => "ConfigurationError",
            Error::Aws { .. } => "AwsServiceError",
            Error::BadEvent(_) => "BadEvent",
            Error::ValidationFailed(_) => "ValidationFailed",
            Error::TransformFailed(_) => "TransformFailed",
            Error::Read { .. } => "ReadFailed",
        }
    }
}

impl From<Error> for lambda_runtime::Diagnostic {
    fn from(error: Error) -> Self {
        lambda_runtime::Diagnostic {
            error_type: error.error_type().to_string(),
            error_message: error.to_string(),
        }
    }
}

/// Maps an SDK error to [`Error::Aws`] naming the call and the resource, with the full error
/// chain (service error code and message) as the message:
/// `client.get_object()...send().await.map_err(aws_error("GetObject", format!("s3://{b}/{k}")))`.
pub fn aws_error<E: std::error::Error>(
    call: &'static str,
    resource: impl Into<String>,
) -> impl FnOnce(E) -> Error {
    let resource = resource.into();
    move |e| Error::Aws {
        call,
        resource,
        message: DisplayErrorContext(&e).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostic_carries_error_type_name() {
        let d: lambda_runtime::Diagnostic = Error::ValidationFailed("3 errors".into()).into();
        assert_eq!(d.error_type, "ValidationFailed");
        assert_eq!(d.error_message, "3 errors");
        let d: lambda_runtime::Diagnostic = Error::MissingEnv("BUCKET_NAME").into();
        assert!(d.error_message.contains("BUCKET_NAME"));
    }

    #[test]
    fn aws_error_names_call_and_resource() {
        let e = aws_error("PutItem", "table processing-status")(std::io::Error::other("boom"));
        let text = e.to_string();
        assert!(
            text.contains("PutItem") && text.contains("processing-status") && text.contains("boom"),
            "{text}"
        );
    }
}
