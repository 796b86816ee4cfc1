//! Property tests of parsing and validation: generated files (any column order, header case, BOM,
//! CRLF, fields with commas, quotes and newlines) are accepted and normalised exactly; corruptions
//! are caught at the right row and column; arbitrary bytes never panic.

use proptest::prelude::*;
use tap_lambda_shared::{
    parse_amount, parse_currency, validate_bytes, Column, Header, Transaction,
};

/// (code, minor digits) covering 0, 2 and 3 digits.
const CURRENCIES: [(&str, u32); 6] = [
    ("USD", 2),
    ("EUR", 2),
    ("JPY", 0),
    ("BHD", 3),
    ("KWD", 3),
    ("KRW", 0),
];

#[derive(Clone, Debug)]
struct Row {
    id: String,
    account: String,
    minor: i64,
    currency: usize,
    lower_currency: bool,
    epoch: i64,
    offset_minutes: i32,
    merchant: Option<String>,
    description: Option<String>,
}

fn amount_text(minor: i64, digits: u32) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    if digits == 0 {
        return format!("{sign}{abs}");
    }
    let scale = 10u64.pow(digits);
    format!(
        "{sign}{}.{:0width$}",
        abs / scale,
        abs % scale,
        width = digits as usize
    )
}

fn timestamp_text(epoch: i64, offset_minutes: i32) -> String {
    let offset = chrono::FixedOffset::east_opt(offset_minutes * 60).unwrap();
    chrono::DateTime::from_timestamp(epoch, 0)
        .unwrap()
        .with_timezone(&offset)
        .to_rfc3339()
}

fn row() -> impl Strategy<Value = Row> {
    (
        "[a-zA-Z0-9 ,\"'./-]{0,12}",
        "[a-zA-Z0-9][a-zA-Z0-9,\" ]{0,11}",
        any::<i64>(),
        0..CURRENCIES.len(),
        any::<bool>(),
        0i64..4_102_444_800,
        -720i32..=840,
        proptest::option::of("\\PC{0,20}|[a-z ,\"\r\n]{0,20}"),
        proptest::option::of("[\\PC\r\n\t,\"]{0,40}"),
    )
        .prop_map(
            |(
                id,
                account,
                minor,
                currency,
                lower_currency,
                epoch,
                offset_minutes,
                merchant,
                description,
            )| Row {
                id,
                account,
                minor,
                currency,
                lower_currency,
                epoch,
                offset_minutes,
                merchant,
                description,
            },
        )
}

#[derive(Clone, Debug)]
struct File {
    rows: Vec<Row>,
    order: Vec<Column>,
    upper_header: Vec<bool>,
    bom: bool,
    crlf: bool,
}

fn file() -> impl Strategy<Value = File> {
    (
        proptest::collection::vec(row(), 1..25),
        Just(Column::ALL.to_vec()).prop_shuffle(),
        proptest::collection::vec(any::<bool>(), 7),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(rows, order, upper_header, bom, crlf)| File {
            rows,
            order,
            upper_header,
            bom,
            crlf,
        })
}

impl Row {
    /// Unique id: the generated prefix (commas, quotes, spaces...) plus the row index.
    fn unique_id(&self, index: usize) -> String {
        format!("{}#{index}", self.id)
    }

    fn field(&self, index: usize, column: Column) -> String {
        let (code, digits) = CURRENCIES[self.currency];
        match column {
            Column::TransactionId => self.unique_id(index),
            Column::AccountId => self.account.clone(),
            Column::Amount => amount_text(self.minor, digits),
            Column::Currency if self.lower_currency => code.to_ascii_lowercase(),
            Column::Currency => code.to_string(),
            Column::Timestamp => timestamp_text(self.epoch, self.offset_minutes),
            Column::Merchant => self.merchant.clone().unwrap_or_default(),
            Column::Description => self.description.clone().unwrap_or_default(),
        }
    }
}

fn render(file: &File) -> Vec<u8> {
    let terminator = if file.crlf {
        csv::Terminator::CRLF
    } else {
        csv::Terminator::Any(b'\n')
    };
    let mut writer = csv::WriterBuilder::new()
        .terminator(terminator)
        .from_writer(Vec::new());
    let header: Vec<String> = file
        .order
        .iter()
        .zip(&file.upper_header)
        .map(|(c, upper)| {
            if *upper {
                c.name().to_ascii_uppercase()
            } else {
                c.name().to_string()
            }
        })
        .collect();
    writer.write_record(&header).unwrap();
    for (i, row) in file.rows.iter().enumerate() {
        writer
            .write_record(file.order.iter().map(|c| row.field(i, *c)))
            .unwrap();
    }
    let mut bytes = if file.bom {
        b"\xEF\xBB\xBF".to_vec()
    } else {
        Vec::new()
    };
    bytes.extend(writer.into_inner().unwrap());
    bytes
}

fn records(bytes: &[u8]) -> (Header, Vec<csv::ByteRecord>) {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut all: Vec<csv::ByteRecord> = reader.byte_records().map(Result::unwrap).collect();
    let header = Header::parse(Some(&all.remove(0))).unwrap();
    (header, all)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn generated_files_are_valid_and_normalised_exactly(file in file()) {
        let bytes = render(&file);
        let report = validate_bytes(&bytes).unwrap();
        prop_assert!(report.is_valid(), "{}", report.summary(5));
        prop_assert_eq!(report.row_count, file.rows.len() as u64);

        let (header, records) = records(&bytes);
        for (i, (row, record)) in file.rows.iter().zip(&records).enumerate() {
            let tx = Transaction::parse(&header, record).unwrap();
            let (code, digits) = CURRENCIES[row.currency];
            let id = row.unique_id(i);
            prop_assert_eq!(tx.transaction_id.as_str(), id.trim());
            prop_assert_eq!(tx.amount_minor, i128::from(row.minor));
            prop_assert_eq!(&tx.amount, &amount_text(row.minor, digits));
            prop_assert_eq!(&tx.currency, code);
            let utc = chrono::DateTime::from_timestamp(row.epoch, 0).unwrap();
            prop_assert_eq!(&tx.timestamp, &utc.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
            let trimmed = |v: &Option<String>| v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
            prop_assert_eq!(&tx.merchant, &trimmed(&row.merchant));
            prop_assert_eq!(&tx.description, &trimmed(&row.description));
        }
    }

    #[test]
    fn a_duplicated_row_is_reported_once_at_its_row(file in file(), pick in any::<prop::sample::Index>()) {
        let bytes = render(&file);
        let (_, records) = records(&bytes);
        let dup = pick.index(records.len());
        let mut writer = csv::Writer::from_writer(bytes.clone());
        writer.write_byte_record(&records[dup]).unwrap();
        let bytes = writer.into_inner().unwrap();
        let report = validate_bytes(&bytes).unwrap();
        prop_assert_eq!(report.error_count, 1);
        prop_assert_eq!(report.errors[0].row, records.len() as u64 + 1);
        prop_assert_eq!(report.errors[0].column, Some("transaction_id"));
        let expected = format!("first in row {}", dup + 1);
        prop_assert!(report.errors[0].message.contains(&expected));
    }

    #[test]
    fn too_many_minor_digits_are_rejected(int in 0u64..1_000_000, extra in 1u32..6, currency in 0..CURRENCIES.len(), frac in 1u64..u64::MAX) {
        let (code, digits) = CURRENCIES[currency];
        let places = (digits + extra) as usize;
        let frac = format!("{:0places$}", frac % 10u64.pow(places as u32), places = places);
        let text = format!("{int}.{frac}");
        prop_assert!(parse_amount(&text, digits, code).is_err(), "{} accepted for {}", text, code);
    }

    #[test]
    fn huge_numbers_are_rejected_not_panicking(digits in "[1-9][0-9]{29,200}", frac in "[0-9]{0,3}") {
        let text = if frac.is_empty() { digits } else { format!("{digits}.{frac}") };
        prop_assert!(parse_amount(&text, 2, "USD").is_err());
    }

    #[test]
    fn arbitrary_amount_text_never_panics(text in "\\PC{0,40}", digits in 0u32..4) {
        if let Ok((value, minor)) = parse_amount(&text, digits, "XXX") {
            prop_assert_eq!(value.scale(), digits);
            prop_assert_eq!(value.mantissa(), minor);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = validate_bytes(&bytes);
        let mut with_header = b"transaction_id,account_id,amount,currency,timestamp\n".to_vec();
        with_header.extend(&bytes);
        let report = validate_bytes(&with_header).unwrap();
        prop_assert!(report.errors.len() as u64 <= report.error_count);
        prop_assert!(report.errors.len() <= 100);
    }

    #[test]
    fn currency_codes_are_case_insensitive(currency in 0..CURRENCIES.len(), mask in any::<[bool; 3]>()) {
        let (code, digits) = CURRENCIES[currency];
        let mixed: String = code.chars().zip(mask).map(|(c, lower)| if lower { c.to_ascii_lowercase() } else { c }).collect();
        let (parsed, d) = parse_currency(&mixed).unwrap();
        prop_assert_eq!(parsed.code(), code);
        prop_assert_eq!(d, digits);
    }
}

#[test]
fn documented_examples() {
    assert!(parse_amount("1.234", parse_currency("USD").unwrap().1, "USD").is_err());
    assert!(parse_amount("1.234", parse_currency("BHD").unwrap().1, "BHD").is_ok());
    assert!(parse_amount("1.5", parse_currency("JPY").unwrap().1, "JPY").is_err());
}
