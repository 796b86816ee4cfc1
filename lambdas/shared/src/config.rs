//! Configuration from the environment variables the controller sets. Each function reads only the
//! variables it uses; a missing one is a start-up error naming it.

use crate::error::{Error, Result};

/// Default for `MAX_UPLOAD_BYTES`: 6 MB, the Lambda synchronous payload limit.
pub const DEFAULT_MAX_UPLOAD_BYTES: usize = 6 * 1024 * 1024;

fn required(lookup: &dyn Fn(&str) -> Option<String>, name: &'static str) -> Result<String> {
    match lookup(name) {
        Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        _ => Err(Error::MissingEnv(name)),
    }
}

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// `csv-validator`: `BUCKET_NAME`, `STATUS_TABLE`, `STATE_MACHINE_ARN`, optional `MAX_UPLOAD_BYTES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatorConfig {
    pub bucket_name: String,
    pub status_table: String,
    pub state_machine_arn: String,
    pub max_upload_bytes: usize,
}

impl ValidatorConfig {
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(&env_lookup)
    }

    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let max_upload_bytes = match lookup("MAX_UPLOAD_BYTES") {
            None => DEFAULT_MAX_UPLOAD_BYTES,
            Some(v) if v.trim().is_empty() => DEFAULT_MAX_UPLOAD_BYTES,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(Error::InvalidEnv {
                        name: "MAX_UPLOAD_BYTES",
                        reason: format!("{v:?} is not a positive number of bytes"),
                    })
                }
            },
        };
        Ok(Self {
            bucket_name: required(lookup, "BUCKET_NAME")?,
            status_table: required(lookup, "STATUS_TABLE")?,
            state_machine_arn: required(lookup, "STATE_MACHINE_ARN")?,
            max_upload_bytes,
        })
    }
}

/// `data-transformer`: `TRANSACTIONS_TABLE`, `STATUS_TABLE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransformerConfig {
    pub transactions_table: String,
    pub status_table: String,
}

impl TransformerConfig {
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(&env_lookup)
    }

    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        Ok(Self {
            transactions_table: required(lookup, "TRANSACTIONS_TABLE")?,
            status_table: required(lookup, "STATUS_TABLE")?,
        })
    }
}

/// `notification-sender`: `TOPIC_ARN`, `STATUS_TABLE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifierConfig {
    pub topic_arn: String,
    pub status_table: String,
}

impl NotifierConfig {
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(&env_lookup)
    }

    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        Ok(Self {
            topic_arn: required(lookup, "TOPIC_ARN")?,
            status_table: required(lookup, "STATUS_TABLE")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn missing_variable_is_named() {
        let err =
            ValidatorConfig::from_lookup(&lookup(&[("BUCKET_NAME", "b"), ("STATUS_TABLE", "s")]))
                .unwrap_err();
        assert!(matches!(err, Error::MissingEnv("STATE_MACHINE_ARN")));
        assert!(err.to_string().contains("STATE_MACHINE_ARN"));
        let err = TransformerConfig::from_lookup(&lookup(&[("STATUS_TABLE", "s")])).unwrap_err();
        assert!(err.to_string().contains("TRANSACTIONS_TABLE"));
        let err = NotifierConfig::from_lookup(&lookup(&[("TOPIC_ARN", " ")])).unwrap_err();
        assert!(err.to_string().contains("TOPIC_ARN"));
    }

    #[test]
    fn max_upload_bytes_default_and_override() {
        let base = [
            ("BUCKET_NAME", "b"),
            ("STATUS_TABLE", "s"),
            ("STATE_MACHINE_ARN", "arn"),
        ];
        let c = ValidatorConfig::from_lookup(&lookup(&base)).unwrap();
        assert_eq!(c.max_upload_bytes, DEFAULT_MAX_UPLOAD_BYTES);
        let mut with = base.to_vec();
        with.push(("MAX_UPLOAD_BYTES", "1024"));
        assert_eq!(
            ValidatorConfig::from_lookup(&lookup(&with))
                .unwrap()
                .max_upload_bytes,
            1024
        );
        with.pop();
        with.push(("MAX_UPLOAD_BYTES", "lots"));
        let err = ValidatorConfig::from_lookup(&lookup(&with)).unwrap_err();
        assert!(err.to_string().contains("MAX_UPLOAD_BYTES"));
    }
}
