//! Placeholder until this service's driver lands: every call fails with a terminal error.

use super::{Changes, Ctx, Driver, Observed, Outputs};
use crate::aws::AwsError;
use crate::desired::{QueueSpec, Tags};

pub struct Queues;

impl Driver for Queues {
    type Spec = QueueSpec;
    async fn observe(
        &self,
        _: &Ctx<'_>,
        name: &str,
        _: &QueueSpec,
    ) -> Result<Option<Observed<QueueSpec>>, AwsError> {
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
        _: &QueueSpec,
        _: &Tags,
    ) -> Result<Outputs, AwsError> {
        Err(AwsError::terminal(name, "create", "driver not implemented"))
    }
    async fn update(
        &self,
        _: &Ctx<'_>,
        name: &str,
        _: &QueueSpec,
        _: &Tags,
        _: &Observed<QueueSpec>,
        _: &Changes,
    ) -> Result<Outputs, AwsError> {
        Err(AwsError::terminal(name, "update", "driver not implemented"))
    }
    async fn delete(
        &self,
        _: &Ctx<'_>,
        name: &str,
        _: &Observed<QueueSpec>,
    ) -> Result<(), AwsError> {
        Err(AwsError::terminal(name, "delete", "driver not implemented"))
    }
}
