//! The reconciler's error: what went wrong, with the AWS error kept as its source, and the category that
//! becomes the Event reason, the metric label and the retry decision.

use kube::runtime::finalizer;

use crate::api::ValidationErrors;
use crate::aws::{AwsError, ErrorClass};

/// How an error is handled: the `kind` label of `tap_reconcile_errors_total`, the reason of the Warning
/// Event, and whether to retry soon (backoff) or at the next resync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCategory {
    /// The spec breaks a rule: nothing to retry until it changes.
    InvalidSpec,
    /// Throttling, 5xx, eventual consistency: retried with backoff.
    AwsTransient,
    /// Validation, access denied, limits: waits for the resync (or a spec change).
    AwsTerminal,
    /// Another owner holds a name, or an older pipeline the suffix.
    Conflict,
    /// The Kubernetes API failed: retried with backoff.
    Kube,
}

impl ErrorCategory {
    pub const ALL: [ErrorCategory; 5] = [
        ErrorCategory::InvalidSpec,
        ErrorCategory::AwsTransient,
        ErrorCategory::AwsTerminal,
        ErrorCategory::Conflict,
        ErrorCategory::Kube,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCategory::InvalidSpec => "invalid_spec",
            ErrorCategory::AwsTransient => "aws_transient",
            ErrorCategory::AwsTerminal => "aws_terminal",
            ErrorCategory::Conflict => "conflict",
            ErrorCategory::Kube => "kube",
        }
    }

    /// The reason of the Warning Event that reports it.
    pub fn reason(self) -> &'static str {
        match self {
            ErrorCategory::InvalidSpec => "InvalidSpec",
            ErrorCategory::AwsTransient | ErrorCategory::AwsTerminal => "AwsError",
            ErrorCategory::Conflict => "Conflict",
            ErrorCategory::Kube => "KubernetesError",
        }
    }

    pub fn is_transient(self) -> bool {
        matches!(self, ErrorCategory::AwsTransient | ErrorCategory::Kube)
    }

    pub fn of_aws(error: &AwsError) -> Self {
        if error.class == ErrorClass::Terminal {
            ErrorCategory::AwsTerminal
        } else {
            ErrorCategory::AwsTransient
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    InvalidSpec(#[from] ValidationErrors),
    /// The clients for the pipeline's region could not be built (STS failed, or assuming its role).
    #[error("connecting to AWS in {region}{as_role}: {source}")]
    Connect {
        region: String,
        as_role: String,
        #[source]
        source: AwsError,
    },
    /// Resources failed; `source` is the first failure.
    #[error("{failed} AWS resource(s) failed, first: {source}")]
    Aws {
        failed: usize,
        #[source]
        source: AwsError,
    },
    #[error("{0}")]
    Conflict(String),
    /// The stack could not be torn down completely; `source` is the first failure, when one failed.
    #[error("{message}")]
    Teardown {
        message: String,
        category: ErrorCategory,
        #[source]
        source: Option<AwsError>,
    },
    #[error(transparent)]
    Finalizer(Box<finalizer::Error<Error>>),
}

impl Error {
    /// The error this one stands for, unwrapping the finalizer helper's wrapper.
    fn inner(&self) -> &Error {
        match self {
            Error::Finalizer(f) => match f.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.inner(),
                _ => self,
            },
            e => e,
        }
    }

    pub fn category(&self) -> ErrorCategory {
        match self.inner() {
            Error::InvalidSpec(_) => ErrorCategory::InvalidSpec,
            Error::Connect { source, .. } | Error::Aws { source, .. } => {
                ErrorCategory::of_aws(source)
            }
            Error::Teardown { category, .. } => *category,
            Error::Conflict(_) => ErrorCategory::Conflict,
            Error::Kube(_) | Error::Finalizer(_) => ErrorCategory::Kube,
        }
    }

    /// Whether retrying soon can help (backoff) rather than waiting for the resync period.
    pub fn is_transient(&self) -> bool {
        self.category().is_transient()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_aws_error_stays_the_source_and_decides_the_category() {
        let throttled = AwsError {
            resource: "Function tap-dev1-csv-validator".into(),
            call: "lambda:GetFunction".into(),
            code: Some("TooManyRequestsException".into()),
            message: "Rate exceeded".into(),
            class: ErrorClass::Transient,
        };
        let error = Error::Aws {
            failed: 2,
            source: throttled.clone(),
        };
        assert_eq!(error.category(), ErrorCategory::AwsTransient);
        assert_eq!(error.category().reason(), "AwsError");
        let source = std::error::Error::source(&error)
            .and_then(|s| s.downcast_ref::<AwsError>())
            .expect("the AWS error is the source");
        assert_eq!(source.code.as_deref(), Some("TooManyRequestsException"));
        let wrapped = Error::Finalizer(Box::new(finalizer::Error::ApplyFailed(error)));
        assert!(wrapped.is_transient(), "unwrapped through the finalizer");
    }
}
