//! Placeholder until this service's driver lands: every call fails with a terminal error.

use super::{Changes, Ctx, Driver, Observed, Outputs};
use crate::aws::AwsError;
use crate::desired::{StateMachineSpec, Tags};

pub struct StateMachines;

impl Driver for StateMachines {
    type Spec = StateMachineSpec;
    async fn observe(
        &self,
        _: &Ctx<'_>,
        name: &str,
        _: &StateMachineSpec,
    ) -> Result<Option<Observed<StateMachineSpec>>, AwsError> {
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
        _: &StateMachineSpec,
        _: &Tags,
    ) -> Result<Outputs, AwsError> {
        Err(AwsError::terminal(name, "create", "driver not implemented"))
    }
    async fn update(
        &self,
        _: &Ctx<'_>,
        name: &str,
        _: &StateMachineSpec,
        _: &Tags,
        _: &Observed<StateMachineSpec>,
        _: &Changes,
    ) -> Result<Outputs, AwsError> {
        Err(AwsError::terminal(name, "update", "driver not implemented"))
    }
    async fn delete(
        &self,
        _: &Ctx<'_>,
        name: &str,
        _: &Observed<StateMachineSpec>,
    ) -> Result<(), AwsError> {
        Err(AwsError::terminal(name, "delete", "driver not implemented"))
    }
}
