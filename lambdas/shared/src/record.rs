//! One transaction record: parsing, validation and normalisation of its fields, and its DynamoDB
//! item. Validation and transformation share [`Transaction::parse`], so what the validator accepts
//! is exactly what the transformer can write.

use std::collections::HashMap;
use std::str::FromStr;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, SecondsFormat, Utc};
use csv::ByteRecord;
use iso_currency::Currency;
use rust_decimal::Decimal;

use crate::schema::{truncate, Column, Header};

/// A problem with one field (or, with `column: None`, the whole record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub column: Option<Column>,
    pub message: String,
}

/// A valid, normalised transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    pub transaction_id: String,
    pub account_id: String,
    /// Exact decimal with exactly the currency's minor-unit digits, e.g. `"12.50"`, `"-3"`, `"1.000"`.
    pub amount: String,
    /// The amount in minor units (cents, fils, yen, ...).
    pub amount_minor: i128,
    /// ISO 4217 code, upper case.
    pub currency: String,
    /// UTC, RFC 3339 with `Z`.
    pub timestamp: String,
    pub merchant: Option<String>,
    pub description: Option<String>,
}

/// Parses an ISO 4217 currency code (any case) that has a minor unit; returns it and its digits.
pub fn parse_currency(text: &str) -> Result<(Currency, u32), String> {
    let upper = text.trim().to_ascii_uppercase();
    if upper.len() != 3 || !upper.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "{:?} is not an ISO 4217 currency code (three letters)",
            truncate(text, 20)
        ));
    }
    let currency = Currency::from_code(&upper)
        .ok_or_else(|| format!("{upper} is not an ISO 4217 currency code"))?;
    let exponent = currency.exponent().ok_or_else(|| {
        format!("{upper} has no minor unit (not a currency for transaction amounts)")
    })?;
    Ok((currency, u32::from(exponent)))
}

/// Parses an amount written as `[-]digits[.digits]` with at most `digits` decimal places.
/// Returns the amount rescaled to exactly `digits` places and its value in minor units.
pub fn parse_amount(text: &str, digits: u32, code: &str) -> Result<(Decimal, i128), String> {
    let t = text.trim();
    let unsigned = t.strip_prefix('-').unwrap_or(t);
    let (int_part, frac_part) = match unsigned.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (unsigned, None),
    };
    let well_formed = !int_part.is_empty()
        && int_part.bytes().all(|b| b.is_ascii_digit())
        && frac_part.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
    if !well_formed {
        return Err(format!(
            "{:?} is not a decimal number (expected e.g. 12.34 or -5)",
            truncate(t, 40)
        ));
    }
    let frac_len = frac_part.map_or(0, str::len) as u32;
    if frac_len > digits {
        return Err(format!(
            "{t} has {frac_len} decimal places but {code} allows at most {digits}"
        ));
    }
    let significant = int_part.trim_start_matches('0').len() as u32;
    // Decimal holds 28 digits exactly; keep the minor-unit value within that too.
    if significant + digits > 28 {
        return Err(format!(
            "{} is too large (at most {} digits before the decimal point for {code})",
            truncate(t, 40),
            28 - digits
        ));
    }
    let mut value =
        Decimal::from_str(t).map_err(|e| format!("{t} is not a decimal number: {e}"))?;
    if value.is_zero() {
        value = Decimal::ZERO;
    }
    value.rescale(digits);
    Ok((value, value.mantissa()))
}

/// Parses an RFC 3339 timestamp and renders it in UTC (`...Z`).
pub fn parse_timestamp(text: &str) -> Result<String, String> {
    let t = text.trim();
    let parsed = DateTime::parse_from_rfc3339(t).map_err(|e| {
        format!(
            "{:?} is not an RFC 3339 timestamp ({e}); expected e.g. 2024-05-01T12:30:00Z",
            truncate(t, 40)
        )
    })?;
    Ok(parsed
        .with_timezone(&Utc)
        .to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

fn text_field(
    header: &Header,
    record: &ByteRecord,
    column: Column,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let raw = header.get(record, column)?;
    let Ok(text) = std::str::from_utf8(raw) else {
        errors.push(FieldError {
            column: Some(column),
            message: "value is not valid UTF-8".into(),
        });
        return None;
    };
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if text.chars().count() > column.max_chars() {
        errors.push(FieldError {
            column: Some(column),
            message: format!("value is longer than {} characters", column.max_chars()),
        });
        return None;
    }
    if matches!(column, Column::TransactionId | Column::AccountId)
        && text.chars().any(char::is_control)
    {
        errors.push(FieldError {
            column: Some(column),
            message: "value contains control characters".into(),
        });
        return None;
    }
    Some(text.to_string())
}

impl Transaction {
    /// Parses, validates and normalises one data record. Returns every problem of the record.
    pub fn parse(header: &Header, record: &ByteRecord) -> Result<Transaction, Vec<FieldError>> {
        let mut errors = Vec::new();
        if record.len() != header.len() {
            errors.push(FieldError {
                column: None,
                message: format!(
                    "record has {} fields but the header has {}",
                    record.len(),
                    header.len()
                ),
            });
        }
        let mut fields: HashMap<Column, String> = HashMap::new();
        for column in Column::ALL {
            match text_field(header, record, column, &mut errors) {
                Some(v) => {
                    fields.insert(column, v);
                }
                None if column.required() && !errors.iter().any(|e| e.column == Some(column)) => {
                    errors.push(FieldError {
                        column: Some(column),
                        message: "required value is missing".into(),
                    })
                }
                None => {}
            }
        }
        let currency = fields
            .get(&Column::Currency)
            .and_then(|c| match parse_currency(c) {
                Ok(v) => Some(v),
                Err(message) => {
                    errors.push(FieldError {
                        column: Some(Column::Currency),
                        message,
                    });
                    None
                }
            });
        let amount = match (fields.get(&Column::Amount), currency) {
            (Some(a), Some((cur, digits))) => match parse_amount(a, digits, cur.code()) {
                Ok(v) => Some(v),
                Err(message) => {
                    errors.push(FieldError {
                        column: Some(Column::Amount),
                        message,
                    });
                    None
                }
            },
            (Some(a), None) => {
                // Check the form even when the currency is unknown, with the largest minor unit in use.
                if let Err(message) = parse_amount(a, 4, "any currency") {
                    errors.push(FieldError {
                        column: Some(Column::Amount),
                        message,
                    });
                }
                None
            }
            _ => None,
        };
        let timestamp = fields
            .get(&Column::Timestamp)
            .and_then(|t| match parse_timestamp(t) {
                Ok(v) => Some(v),
                Err(message) => {
                    errors.push(FieldError {
                        column: Some(Column::Timestamp),
                        message,
                    });
                    None
                }
            });
        if !errors.is_empty() {
            return Err(errors);
        }
        let (value, minor) = amount.expect("amount checked");
        let (currency, _) = currency.expect("currency checked");
        Ok(Transaction {
            transaction_id: fields.remove(&Column::TransactionId).expect("checked"),
            account_id: fields.remove(&Column::AccountId).expect("checked"),
            amount: value.to_string(),
            amount_minor: minor,
            currency: currency.code().to_string(),
            timestamp: timestamp.expect("checked"),
            merchant: fields.remove(&Column::Merchant),
            description: fields.remove(&Column::Description),
        })
    }

    /// The item written to the `transactions` table.
    pub fn to_item(&self, upload_id: &str) -> HashMap<String, AttributeValue> {
        let mut item = HashMap::with_capacity(9);
        item.insert(
            "transaction_id".into(),
            AttributeValue::S(self.transaction_id.clone()),
        );
        item.insert(
            "account_id".into(),
            AttributeValue::S(self.account_id.clone()),
        );
        item.insert("amount".into(), AttributeValue::S(self.amount.clone()));
        item.insert(
            "amount_minor".into(),
            AttributeValue::N(self.amount_minor.to_string()),
        );
        item.insert("currency".into(), AttributeValue::S(self.currency.clone()));
        item.insert(
            "timestamp".into(),
            AttributeValue::S(self.timestamp.clone()),
        );
        if let Some(m) = &self.merchant {
            item.insert("merchant".into(), AttributeValue::S(m.clone()));
        }
        if let Some(d) = &self.description {
            item.insert("description".into(), AttributeValue::S(d.clone()));
        }
        item.insert("upload_id".into(), AttributeValue::S(upload_id.to_string()));
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_digits_per_currency() {
        assert!(parse_amount("1.234", 2, "USD")
            .unwrap_err()
            .contains("at most 2"));
        let (_, digits) = parse_currency("BHD").unwrap();
        assert_eq!(digits, 3);
        assert_eq!(parse_amount("1.234", digits, "BHD").unwrap().1, 1234);
        let (_, jpy) = parse_currency("jpy").unwrap();
        assert_eq!(jpy, 0);
        assert!(parse_amount("1.5", jpy, "JPY").is_err());
        assert_eq!(parse_amount("150", jpy, "JPY").unwrap().1, 150);
    }

    #[test]
    fn amount_normalised_exactly() {
        let (v, m) = parse_amount("10.5", 2, "USD").unwrap();
        assert_eq!((v.to_string(), m), ("10.50".to_string(), 1050));
        let (v, m) = parse_amount("-0.01", 2, "USD").unwrap();
        assert_eq!((v.to_string(), m), ("-0.01".to_string(), -1));
        let (v, m) = parse_amount("-0", 2, "USD").unwrap();
        assert_eq!((v.to_string(), m), ("0.00".to_string(), 0));
        let (v, m) = parse_amount("0007", 2, "USD").unwrap();
        assert_eq!((v.to_string(), m), ("7.00".to_string(), 700));
        // 0.1 + 0.2 stays exact: no floats anywhere.
        assert_eq!(parse_amount("0.30", 2, "USD").unwrap().1, 30);
        let (v, m) = parse_amount("12345678901234567890123456.78", 2, "USD").unwrap();
        assert_eq!(v.to_string(), "12345678901234567890123456.78");
        assert_eq!(m, 1234567890123456789012345678);
    }

    #[test]
    fn malformed_and_huge_amounts() {
        for bad in [
            "", "abc", "1,5", "1e5", "+1", "1.", ".5", "--1", "1_000", "0x10", "NaN", "inf",
            "1.2.3", " ",
        ] {
            assert!(parse_amount(bad, 2, "USD").is_err(), "{bad:?} accepted");
        }
        assert!(parse_amount("123456789012345678901234567", 2, "USD")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_amount(&"9".repeat(400), 2, "USD").is_err());
    }

    #[test]
    fn currencies() {
        assert_eq!(parse_currency("usd").unwrap().0.code(), "USD");
        assert!(parse_currency("XYZ").is_err());
        assert!(parse_currency("US").is_err());
        assert!(parse_currency("USDX").is_err());
        assert!(parse_currency("€").is_err());
        assert!(parse_currency("XAU").unwrap_err().contains("no minor unit"));
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            parse_timestamp("2024-05-01T14:30:00+02:00").unwrap(),
            "2024-05-01T12:30:00Z"
        );
        assert_eq!(
            parse_timestamp("2024-05-01T12:30:00.250Z").unwrap(),
            "2024-05-01T12:30:00.250Z"
        );
        for bad in [
            "2024-05-01",
            "2024-05-01T12:30:00",
            "yesterday",
            "2024-13-01T00:00:00Z",
            "1714566600",
        ] {
            assert!(parse_timestamp(bad).is_err(), "{bad:?} accepted");
        }
    }
}
