//! One error type for every AWS call a driver makes: which resource, which call, what AWS said, and
//! whether retrying can help.

use std::fmt;

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Throttling, 5xx, timeouts, eventual consistency: retry with backoff.
    Transient,
    /// The resource does not exist.
    NotFound,
    /// Validation, access denied, limits: retrying the same request will not help.
    Terminal,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{call} on {resource}: {}{message}", code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
pub struct AwsError {
    /// The resource the call was about, e.g. `Function tap-dev1-csv-validator`.
    pub resource: String,
    /// The AWS operation, e.g. `lambda:CreateFunction`.
    pub call: String,
    /// AWS's error code, when it sent one.
    pub code: Option<String>,
    pub message: String,
    pub class: ErrorClass,
}

impl AwsError {
    pub fn is_not_found(&self) -> bool {
        self.class == ErrorClass::NotFound
    }

    pub fn is_transient(&self) -> bool {
        self.class == ErrorClass::Transient
    }

    /// Whether AWS may have carried the request out although it failed: a timeout, a connection lost,
    /// a 5xx. (Throttling, validation, a role not yet assumable: it was refused.) A create that is not
    /// idempotent must look for what it may have made before it is repeated.
    pub fn outcome_unknown(&self) -> bool {
        self.is_transient()
            && !self
                .code
                .as_deref()
                .is_some_and(|c| THROTTLING_CODES.contains(&c))
            && !self.is_role_propagation()
    }

    /// A role that is not assumable yet (see [`role_not_assumable_yet`]).
    pub fn is_role_propagation(&self) -> bool {
        self.code
            .as_deref()
            .is_some_and(|code| role_not_assumable_yet(code, &self.message))
    }

    fn raised(
        resource: impl fmt::Display,
        call: impl fmt::Display,
        message: impl Into<String>,
        class: ErrorClass,
    ) -> Self {
        Self {
            resource: resource.to_string(),
            call: call.to_string(),
            code: None,
            message: message.into(),
            class,
        }
    }

    /// An error the engine raises itself about a resource (no AWS error behind it).
    pub fn terminal(
        resource: impl fmt::Display,
        call: impl fmt::Display,
        message: impl Into<String>,
    ) -> Self {
        Self::raised(resource, call, message, ErrorClass::Terminal)
    }

    pub fn transient(
        resource: impl fmt::Display,
        call: impl fmt::Display,
        message: impl Into<String>,
    ) -> Self {
        Self::raised(resource, call, message, ErrorClass::Transient)
    }
}

const NOT_FOUND_CODES: &[&str] = &[
    "NoSuchBucket",
    "NoSuchKey",
    "NoSuchTagSet",
    "NoSuchTagSetError",
    "NoSuchBucketPolicy",
    "NoSuchPublicAccessBlockConfiguration",
    "ServerSideEncryptionConfigurationNotFoundError",
    "NotFound",
    "NotFoundException",
    "ResourceNotFoundException",
    "ResourceNotFoundFault",
    "RepositoryNotFoundException",
    "RepositoryPolicyNotFoundException",
    "ImageNotFoundException",
    "NoSuchEntity",
    "StateMachineDoesNotExist",
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
];

/// Refused for the rate: nothing was carried out.
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "ProvisionedThroughputExceededException",
    "SlowDown",
];

const TRANSIENT_CODES: &[&str] = &[
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "ServiceException",
    // Lambda: an update is still in progress; DynamoDB: the table is being created/updated.
    "ResourceConflictException",
    "ResourceInUseException",
    "ConcurrentModificationException",
    "ConflictException",
    "OperationAbortedException",
    // S3: another operation on the same bucket is still in progress.
    "OperationAborted",
    // DynamoDB: point-in-time recovery is still being enabled on a new table ("Please retry later").
    "ContinuousBackupsUnavailableException",
];

/// Whether an error says a role cannot be assumed (yet): IAM is eventually consistent, and a role created
/// or changed a moment ago may not be assumable by Lambda ("The role defined for the function cannot be
/// assumed by Lambda.") or Step Functions ("Neither the global service principal states.amazonaws.com, nor
/// the regional one is authorized to assume the provided role.") for several seconds.
pub fn role_not_assumable_yet(code: &str, message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    matches!(
        code,
        "AccessDeniedException" | "InvalidArn" | "InvalidParameterValueException"
    ) && (message.contains("not authorized to assume")
        || message.contains("authorized to assume the provided role")
        || message.contains("cannot be assumed")
        || message.contains("sts:assumerole"))
}

/// Classifies an AWS error code and message.
pub fn classify(code: Option<&str>, message: &str, status: Option<u16>) -> ErrorClass {
    match code {
        Some(code) if NOT_FOUND_CODES.contains(&code) => ErrorClass::NotFound,
        Some(code) if TRANSIENT_CODES.contains(&code) || THROTTLING_CODES.contains(&code) => {
            ErrorClass::Transient
        }
        Some(code) if role_not_assumable_yet(code, message) => ErrorClass::Transient,
        // A REST API answering 404 without a modelled error (moto's DeleteRestApi on a missing API).
        None if status == Some(404) => ErrorClass::NotFound,
        _ if status.is_some_and(|s| s == 429 || s >= 500) => ErrorClass::Transient,
        _ => ErrorClass::Terminal,
    }
}

/// Adds the resource and call to an SDK error.
pub trait ResultExt<T> {
    fn context(self, resource: impl fmt::Display, call: &str) -> Result<T, AwsError>;
}

/// Not-found as a value: `Ok(None)` when the resource does not exist (reads), and success on deletes.
pub trait Optional<T> {
    fn optional(self) -> Result<Option<T>, AwsError>;
}

impl<T> Optional<T> for Result<T, AwsError> {
    fn optional(self) -> Result<Option<T>, AwsError> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl<T, E, R> ResultExt<T> for Result<T, SdkError<E, R>>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + HttpStatus,
{
    fn context(self, resource: impl fmt::Display, call: &str) -> Result<T, AwsError> {
        self.map_err(|err| {
            let status = err.raw_response().map(|r| r.status_code());
            let (code, message, class) = match &err {
                SdkError::ServiceError(service) => {
                    let e = service.err();
                    let code = e.code().map(str::to_string);
                    // An error AWS sent without a message (or one the SDK could not parse) is named by
                    // its HTTP status, not the SDK's "unhandled error".
                    let message = e
                        .message()
                        .map(str::to_string)
                        .unwrap_or_else(|| match status {
                            Some(status) => format!("HTTP {status} without an error message"),
                            None => "an error without a message".into(),
                        });
                    let class = classify(code.as_deref(), &message, status);
                    (code, message, class)
                }
                SdkError::TimeoutError(_) => (None, "timed out".into(), ErrorClass::Transient),
                SdkError::DispatchFailure(failure) => (
                    None,
                    format!(
                        "could not reach AWS: {}",
                        failure
                            .as_connector_error()
                            .map(|e| root_cause(e))
                            .unwrap_or_else(|| "the request was not sent".into())
                    ),
                    ErrorClass::Transient,
                ),
                SdkError::ResponseError(_) => (
                    None,
                    format!(
                        "the response could not be read: {}",
                        aws_smithy_types::error::display::DisplayErrorContext(&err)
                    ),
                    ErrorClass::Transient,
                ),
                _ => (
                    None,
                    format!(
                        "{}",
                        aws_smithy_types::error::display::DisplayErrorContext(&err)
                    ),
                    ErrorClass::Terminal,
                ),
            };
            AwsError {
                resource: resource.to_string(),
                call: call.to_string(),
                code,
                message,
                class,
            }
        })
    }
}

/// The innermost cause of an error (the OS error under the connector's wrappers), in one short line.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

/// The HTTP status of a raw response, for classification.
pub trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_smithy_runtime_api::http::Response {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_throttling_missing_and_validation() {
        assert_eq!(
            classify(Some("ThrottlingException"), "Rate exceeded", Some(400)),
            ErrorClass::Transient
        );
        assert_eq!(
            classify(Some("NoSuchEntity"), "role not found", Some(404)),
            ErrorClass::NotFound
        );
        assert_eq!(
            classify(Some("ValidationException"), "bad", Some(400)),
            ErrorClass::Terminal
        );
        assert_eq!(classify(None, "", Some(503)), ErrorClass::Transient);
        assert_eq!(
            classify(
                Some("OperationAborted"),
                "A conflicting conditional operation is currently in progress against this resource.",
                Some(409)
            ),
            ErrorClass::Transient
        );
        assert_eq!(
            classify(
                Some("InvalidParameterValueException"),
                "The role defined for the function cannot be assumed by Lambda.",
                Some(400)
            ),
            ErrorClass::Transient
        );
    }

    #[test]
    fn recognises_a_role_not_yet_assumable() {
        assert!(role_not_assumable_yet(
            "AccessDeniedException",
            "Neither the global service principal states.amazonaws.com, nor the regional one is authorized to assume the provided role."
        ));
        assert!(role_not_assumable_yet(
            "AccessDeniedException",
            "states.amazonaws.com is not authorized to assume role x"
        ));
        assert!(!role_not_assumable_yet(
            "AccessDeniedException",
            "User is not authorized to perform: states:CreateStateMachine"
        ));
        assert!(!role_not_assumable_yet(
            "InvalidDefinition",
            "Invalid State Machine Definition"
        ));
    }
}
