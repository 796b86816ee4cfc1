//! Placeholder until this service's driver lands: every call fails with a terminal error.

use super::{Changes, Ctx, Driver, Observed, Outputs};
use crate::aws::AwsError;
use crate::desired::{AlarmSpec, Tags};

pub struct Alarms;

impl Driver for Alarms {
    type Spec = AlarmSpec;
    async fn observe(
        &self,
        _: &Ctx<'_>,
        name: &str,
        _: &AlarmSpec,
    ) -> Result<Option<Observed<AlarmSpec>>, AwsError> {
        Err(AwsError::terminal(
            name,
            "observe",
            "driver not implemented",
        ))
    }
    async fn create(
        &self,
        _: &Ctx<'_>,
        name: &str,
        _: &AlarmSpec,
        _: &Tags,
    ) -> Result<Outputs, AwsError> {
        Err(AwsError::terminal(name, "create", "driver not implemented"))
    }
    async fn update(
        &self,
        _: &Ctx<'_>,
        name: &str,
        _: &AlarmSpec,
        _: &Tags,
        _: &Observed<AlarmSpec>,
        _: &Changes,
    ) -> Result<Outputs, AwsError> {
        Err(AwsError::terminal(name, "update", "driver not implemented"))
    }
    async fn delete(
        &self,
        _: &Ctx<'_>,
        name: &str,
        _: &Observed<AlarmSpec>,
    ) -> Result<(), AwsError> {
        Err(AwsError::terminal(name, "delete", "driver not implemented"))
    }
}
