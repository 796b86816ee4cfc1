//! Whole-file validation: every record parsed with [`Transaction::parse`], `transaction_id`
//! unique within the file, errors by row and column (the first [`MAX_REPORTED_ERRORS`] kept, all
//! counted). Works on a byte slice or streams from any async reader (an S3 body).

use std::collections::HashMap;

use csv::ByteRecord;
use serde::Serialize;

use crate::record::Transaction;
use crate::schema::{Column, Header, HeaderError};

/// How many errors a report keeps (all are counted).
pub const MAX_REPORTED_ERRORS: usize = 100;

/// One problem, located by data row (1 = first record after the header; a quoted field may make a
/// row span several lines) and column (`None`: the whole row or file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RowError {
    pub row: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<&'static str>,
    pub message: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.column {
            Some(c) => write!(f, "row {}, {c}: {}", self.row, self.message),
            None => write!(f, "row {}: {}", self.row, self.message),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ValidationReport {
    /// Data rows read (excluding the header).
    pub row_count: u64,
    /// All errors found.
    pub error_count: u64,
    /// The first [`MAX_REPORTED_ERRORS`] errors.
    pub errors: Vec<RowError>,
}

impl ValidationReport {
    pub fn is_valid(&self) -> bool {
        self.error_count == 0
    }

    /// A one-line summary with the first few errors, for logs and error messages.
    pub fn summary(&self, first: usize) -> String {
        let shown: Vec<String> = self
            .errors
            .iter()
            .take(first)
            .map(ToString::to_string)
            .collect();
        format!(
            "{} error(s) in {} row(s): {}{}",
            self.error_count,
            self.row_count,
            shown.join("; "),
            if self.error_count as usize > shown.len() {
                "; ..."
            } else {
                ""
            }
        )
    }
}

/// Incremental validator: feed records one by one.
pub struct Validator {
    header: Header,
    first_seen: HashMap<String, u64>,
    row_count: u64,
    error_count: u64,
    errors: Vec<RowError>,
}

impl Validator {
    pub fn new(header: Header) -> Self {
        Validator {
            header,
            first_seen: HashMap::new(),
            row_count: 0,
            error_count: 0,
            errors: Vec::new(),
        }
    }

    fn push(&mut self, error: RowError) {
        self.error_count += 1;
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(error);
        }
    }

    /// Checks one data record.
    pub fn check(&mut self, record: &ByteRecord) {
        self.row_count += 1;
        let row = self.row_count;
        // Duplicates are checked on the raw id, so a row with other errors is still reported as one.
        let id = self
            .header
            .get(record, Column::TransactionId)
            .and_then(|raw| std::str::from_utf8(raw).ok())
            .map(str::trim)
            .filter(|id| !id.is_empty());
        if let Some(id) = id {
            if let Some(first) = self.first_seen.get(id) {
                let message = format!("duplicate transaction_id {id:?} (first in row {first})");
                self.push(RowError {
                    row,
                    column: Some("transaction_id"),
                    message,
                });
            } else {
                self.first_seen.insert(id.to_string(), row);
            }
        }
        if let Err(errors) = Transaction::parse(&self.header, record) {
            for e in errors {
                self.push(RowError {
                    row,
                    column: e.column.map(|c| c.name()),
                    message: e.message,
                });
            }
        }
    }

    pub fn finish(mut self) -> ValidationReport {
        if self.row_count == 0 {
            self.push(RowError {
                row: 0,
                column: None,
                message: "the file has a header but no data rows".into(),
            });
        }
        ValidationReport {
            row_count: self.row_count,
            error_count: self.error_count,
            errors: self.errors,
        }
    }
}

fn reader_builder() -> csv::ReaderBuilder {
    let mut b = csv::ReaderBuilder::new();
    b.has_headers(false).flexible(true);
    b
}

/// Validates a whole CSV held in memory.
pub fn validate_bytes(data: &[u8]) -> Result<ValidationReport, HeaderError> {
    let mut reader = reader_builder().from_reader(data);
    let mut record = ByteRecord::new();
    let has_header = reader
        .read_byte_record(&mut record)
        .map_err(csv_header_error)?;
    let header = Header::parse(has_header.then_some(&record))?;
    let mut validator = Validator::new(header);
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => validator.check(&record),
            Ok(false) => break,
            // Reading from memory cannot fail with I/O; csv reports nothing else with `flexible`.
            Err(e) => {
                let row = validator.row_count + 1;
                validator.push(RowError {
                    row,
                    column: None,
                    message: format!("unreadable CSV: {e}"),
                });
                break;
            }
        }
    }
    Ok(validator.finish())
}

fn csv_header_error(e: csv::Error) -> HeaderError {
    HeaderError {
        problems: vec![format!("unreadable CSV header: {e}")],
    }
}

/// Why streaming validation stopped before producing a report.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("reading the object failed: {0}")]
    Read(String),
}

/// Validates a CSV read from an async reader (e.g. an S3 body), record by record.
pub async fn validate_async<R>(reader: R) -> Result<ValidationReport, StreamError>
where
    R: tokio::io::AsyncRead + Unpin + Send,
{
    let mut reader = csv_async::AsyncReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .create_reader(reader);
    let mut record = csv_async::ByteRecord::new();
    let has_header = reader
        .read_byte_record(&mut record)
        .await
        .map_err(|e| StreamError::Read(e.to_string()))?;
    let header = Header::parse(has_header.then(|| to_csv_record(&record)).as_ref())?;
    let mut validator = Validator::new(header);
    while reader
        .read_byte_record(&mut record)
        .await
        .map_err(|e| StreamError::Read(e.to_string()))?
    {
        validator.check(&to_csv_record(&record));
    }
    Ok(validator.finish())
}

/// csv_async and csv have separate (identical) record types; copy fields across.
pub fn to_csv_record(record: &csv_async::ByteRecord) -> ByteRecord {
    let mut out = ByteRecord::with_capacity(record.as_slice().len(), record.len());
    for field in record.iter() {
        out.push_field(field);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "transaction_id,account_id,amount,currency,timestamp\n";

    fn validate(s: &str) -> ValidationReport {
        validate_bytes(s.as_bytes()).expect("header ok")
    }

    #[test]
    fn valid_file() {
        let r = validate(&format!(
            "{HEADER}t1,a1,10.00,USD,2024-01-01T00:00:00Z\nt2,a1,5,jpy,2024-01-01T00:00:00+09:00\n"
        ));
        assert!(r.is_valid(), "{r:?}");
        assert_eq!(r.row_count, 2);
    }

    #[test]
    fn duplicate_ids_reported_with_first_row() {
        let r = validate(&format!(
            "{HEADER}t1,a1,1,USD,2024-01-01T00:00:00Z\nt2,a1,1,USD,2024-01-01T00:00:00Z\nt1,a2,2,USD,2024-01-01T00:00:00Z\n"
        ));
        assert_eq!(r.error_count, 1);
        assert_eq!(r.errors[0].row, 3);
        assert_eq!(r.errors[0].column, Some("transaction_id"));
        assert!(r.errors[0].message.contains("first in row 1"));
    }

    #[test]
    fn errors_by_row_and_column() {
        let r = validate(&format!(
            "{HEADER}t1,a1,1.234,USD,2024-01-01T00:00:00Z\nt2,,1.5,JPY,not-a-time\nt3,a1,1.234,BHD,2024-01-01T00:00:00Z\n"
        ));
        let got: Vec<(u64, Option<&str>)> = r.errors.iter().map(|e| (e.row, e.column)).collect();
        assert_eq!(
            got,
            vec![
                (1, Some("amount")),
                (2, Some("account_id")),
                (2, Some("amount")),
                (2, Some("timestamp"))
            ]
        );
    }

    #[test]
    fn quoted_commas_newlines_crlf_and_bom() {
        let data = "\u{feff}transaction_id,account_id,amount,currency,timestamp,description\r\n\
                    t1,a1,1.00,EUR,2024-01-01T00:00:00Z,\"Coffee, large\r\nwith \"\"milk\"\"\"\r\n\
                    t2,a1,2.00,EUR,2024-01-01T00:00:00Z,plain\r\n";
        let r = validate(data);
        assert!(r.is_valid(), "{r:?}");
        assert_eq!(r.row_count, 2);
        let r = validate_bytes(format!("{HEADER}t1,a1,x,USD,2024-01-01T00:00:00Z\r\n\"t\n2\",a1,y,USD,2024-01-01T00:00:00Z\r\n").as_bytes()).unwrap();
        // A newline inside a quoted field does not start a new row; the id itself is rejected.
        let got: Vec<(u64, Option<&str>)> = r.errors.iter().map(|e| (e.row, e.column)).collect();
        assert_eq!(
            got,
            vec![
                (1, Some("amount")),
                (2, Some("transaction_id")),
                (2, Some("amount"))
            ]
        );
    }

    #[test]
    fn duplicate_reported_even_when_the_row_has_other_errors() {
        let r = validate(&format!(
            "{HEADER}t1,a1,1,USD,2024-01-01T00:00:00Z\nt1,,1.5,JPY,2024-01-01T00:00:00Z\n"
        ));
        let got: Vec<(u64, Option<&str>)> = r.errors.iter().map(|e| (e.row, e.column)).collect();
        assert_eq!(
            got,
            vec![
                (2, Some("transaction_id")),
                (2, Some("account_id")),
                (2, Some("amount"))
            ]
        );
    }

    #[test]
    fn short_and_long_records() {
        let r = validate(&format!(
            "{HEADER}t1,a1,1.00,USD\nt2,a1,1.00,USD,2024-01-01T00:00:00Z,extra\n"
        ));
        assert_eq!(r.error_count, 3, "{r:?}");
        assert!(r
            .errors
            .iter()
            .any(|e| e.row == 1 && e.column == Some("timestamp")));
        assert!(r
            .errors
            .iter()
            .any(|e| e.row == 2 && e.message.contains("6 fields")));
    }

    #[test]
    fn at_most_100_errors_kept_all_counted() {
        let mut s = HEADER.to_string();
        for i in 0..250 {
            s.push_str(&format!("t{i},a,bad,USD,2024-01-01T00:00:00Z\n"));
        }
        let r = validate(&s);
        assert_eq!(r.error_count, 250);
        assert_eq!(r.errors.len(), MAX_REPORTED_ERRORS);
        assert!(r.summary(3).starts_with("250 error(s) in 250 row(s)"));
    }

    #[test]
    fn header_only_is_invalid() {
        let r = validate(HEADER);
        assert!(!r.is_valid());
        assert!(r.errors[0].message.contains("no data rows"));
    }

    #[test]
    fn bad_headers() {
        assert!(validate_bytes(b"").is_err());
        assert!(validate_bytes(b"transaction_id,amount\n1,2\n")
            .unwrap_err()
            .to_string()
            .contains("account_id"));
    }

    #[test]
    fn non_utf8_field_is_located() {
        let mut data = HEADER.as_bytes().to_vec();
        data.extend_from_slice(b"t1,a\xff1,1.00,USD,2024-01-01T00:00:00Z\n");
        let r = validate_bytes(&data).unwrap();
        assert_eq!(r.errors[0].column, Some("account_id"));
        assert!(r.errors[0].message.contains("UTF-8"));
    }

    #[tokio::test]
    async fn async_matches_sync() {
        let data = format!("{HEADER}t1,a1,1.234,USD,2024-01-01T00:00:00Z\nt1,a1,1,USD,2024-01-01T00:00:00Z\n\"q,1\",a,1,USD,2024-01-01T00:00:00Z\n");
        let sync = validate_bytes(data.as_bytes()).unwrap();
        let stream = validate_async(data.as_bytes()).await.unwrap();
        assert_eq!(sync, stream);
        assert_eq!(sync.row_count, 3);
    }
}
