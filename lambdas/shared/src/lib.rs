//! Code shared by the three tap Lambda functions (`csv-validator`, `data-transformer`,
//! `notification-sender`): the CSV schema, record parsing and validation, normalisation into
//! DynamoDB items, access to the `processing-status` table, and configuration from the environment.
//!
//! Handlers are plain async functions over SDK clients and a config struct; the Lambda runtime only
//! wires them up in each function's `main`.

pub mod aws;
pub mod config;
pub mod error;
pub mod record;
pub mod schema;
pub mod status;
pub mod testing;
pub mod validate;

pub use config::{NotifierConfig, TransformerConfig, ValidatorConfig};
pub use error::{aws_error, Error, Result};
pub use record::{parse_amount, parse_currency, parse_timestamp, Transaction};
pub use schema::{Column, Header, HeaderError};
pub use status::{Status, StatusRecord, StatusUpdate};
pub use validate::{validate_async, validate_bytes, RowError, ValidationReport, Validator};

/// Prefix of the S3 keys holding validated uploads: `validated/<upload-id>.csv`.
pub const VALIDATED_PREFIX: &str = "validated/";

/// The S3 key of a validated upload.
pub fn validated_key(upload_id: &str) -> String {
    format!("{VALIDATED_PREFIX}{upload_id}.csv")
}

/// The upload id of a key `validated/<upload-id>.csv` (or of any key: its file stem).
pub fn upload_id_from_key(key: &str) -> String {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.strip_suffix(".csv").unwrap_or(name).to_string()
}

/// Now, as the RFC 3339 UTC timestamp written to the status table.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        assert_eq!(validated_key("abc"), "validated/abc.csv");
        assert_eq!(upload_id_from_key("validated/abc.csv"), "abc");
        assert_eq!(upload_id_from_key("validated/nested/x.csv"), "x");
        assert_eq!(upload_id_from_key("plain"), "plain");
    }
}
