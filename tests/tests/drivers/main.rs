//! Every driver against a local emulator (`TAP_TEST_EMULATOR=moto|ministack`): create → converged (empty
//! diff, observing writes nothing) → out-of-band drift found field by field → update corrects exactly
//! that → delete → gone → delete again is fine. One module per service, over `tap_tests::lifecycle`.
//!
//! Where an emulator has a documented gap, only that assertion is skipped on it, with a comment.

mod apigateway;
mod cloudwatch;
mod dynamodb;
mod ecr;
mod iam;
mod lambda;
mod permission;
mod s3;
mod sfn;
mod sns;
mod sqs;

use std::collections::BTreeSet;

use tap_controller::drivers::Changes;

/// The fields a diff names.
pub fn fields(changes: &Changes) -> BTreeSet<String> {
    changes.diffs.iter().map(|d| d.field.clone()).collect()
}

pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The diff of `field`, which must be there.
pub fn diff_of<'a>(changes: &'a Changes, field: &str) -> &'a tap_controller::drivers::FieldDiff {
    changes
        .diffs
        .iter()
        .find(|d| d.field == field)
        .unwrap_or_else(|| panic!("no diff of {field}: {:#?}", changes.diffs))
}
