//! The upload CSV schema: a header row naming the columns (any order, case and surrounding
//! whitespace ignored, UTF-8 BOM tolerated), then one transaction per record.

use csv::ByteRecord;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Column {
    TransactionId,
    AccountId,
    Amount,
    Currency,
    Timestamp,
    Merchant,
    Description,
}

impl Column {
    pub const ALL: [Column; 7] = [
        Column::TransactionId,
        Column::AccountId,
        Column::Amount,
        Column::Currency,
        Column::Timestamp,
        Column::Merchant,
        Column::Description,
    ];
    pub const REQUIRED: [Column; 5] = [
        Column::TransactionId,
        Column::AccountId,
        Column::Amount,
        Column::Currency,
        Column::Timestamp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Column::TransactionId => "transaction_id",
            Column::AccountId => "account_id",
            Column::Amount => "amount",
            Column::Currency => "currency",
            Column::Timestamp => "timestamp",
            Column::Merchant => "merchant",
            Column::Description => "description",
        }
    }

    pub fn required(self) -> bool {
        Column::REQUIRED.contains(&self)
    }

    /// Longest value accepted, in characters.
    pub fn max_chars(self) -> usize {
        match self {
            Column::TransactionId | Column::AccountId => 128,
            Column::Amount | Column::Timestamp => 64,
            Column::Currency => 3,
            Column::Merchant => 256,
            Column::Description => 1024,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    pub fn from_name(name: &str) -> Option<Column> {
        Column::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Where each column is in a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    positions: [Option<usize>; 7],
    len: usize,
}

/// The header row is unusable; every problem found is listed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid CSV header: {}", problems.join("; "))]
pub struct HeaderError {
    pub problems: Vec<String>,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl Header {
    /// Parses the header row. `None` means the file had no rows at all.
    pub fn parse(record: Option<&ByteRecord>) -> Result<Header, HeaderError> {
        let Some(record) = record else {
            return Err(HeaderError {
                problems: vec!["the file is empty: expected a header row".into()],
            });
        };
        let mut positions = [None; 7];
        let mut problems = Vec::new();
        for (i, raw) in record.iter().enumerate() {
            let raw = if i == 0 {
                raw.strip_prefix(BOM).unwrap_or(raw)
            } else {
                raw
            };
            let Ok(text) = std::str::from_utf8(raw) else {
                problems.push(format!("header column {} is not valid UTF-8", i + 1));
                continue;
            };
            let name = text.trim().to_ascii_lowercase();
            if name.is_empty() {
                problems.push(format!("header column {} is empty", i + 1));
                continue;
            }
            match Column::from_name(&name) {
                Some(col) if positions[col.index()].is_some() => {
                    problems.push(format!("column {name} appears more than once"))
                }
                Some(col) => positions[col.index()] = Some(i),
                None => problems.push(format!(
                    "unknown column {:?} (expected {})",
                    truncate(text.trim(), 40),
                    Column::ALL.map(Column::name).join(", ")
                )),
            }
        }
        let missing: Vec<&str> = Column::REQUIRED
            .into_iter()
            .filter(|c| positions[c.index()].is_none())
            .map(Column::name)
            .collect();
        if !missing.is_empty() {
            problems.insert(
                0,
                format!("missing required column(s): {}", missing.join(", ")),
            );
        }
        if problems.is_empty() {
            Ok(Header {
                positions,
                len: record.len(),
            })
        } else {
            Err(HeaderError { problems })
        }
    }

    /// Number of columns in the header.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The raw bytes of `column` in `record` (`None` when the column is absent from the file or the
    /// record is too short).
    pub fn get<'r>(&self, record: &'r ByteRecord, column: Column) -> Option<&'r [u8]> {
        self.positions[column.index()].and_then(|i| record.get(i))
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(fields: &[&str]) -> ByteRecord {
        ByteRecord::from(fields.to_vec())
    }

    #[test]
    fn any_order_case_and_bom() {
        let h = Header::parse(Some(&rec(&[
            "\u{feff}Currency",
            " amount ",
            "TIMESTAMP",
            "transaction_id",
            "account_id",
        ])))
        .unwrap();
        let r = rec(&["USD", "1.00", "2024-01-01T00:00:00Z", "t1", "a1"]);
        assert_eq!(h.get(&r, Column::Currency), Some(&b"USD"[..]));
        assert_eq!(h.get(&r, Column::TransactionId), Some(&b"t1"[..]));
        assert_eq!(h.get(&r, Column::Merchant), None);
    }

    #[test]
    fn missing_duplicate_unknown_columns_reported_together() {
        let err = Header::parse(Some(&rec(&[
            "transaction_id",
            "amount",
            "amount",
            "colour",
            "currency",
        ])))
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("missing required column(s): account_id, timestamp"),
            "{text}"
        );
        assert!(text.contains("amount appears more than once"), "{text}");
        assert!(text.contains("unknown column \"colour\""), "{text}");
    }

    #[test]
    fn empty_file() {
        assert!(Header::parse(None)
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }
}
