//! Placeholder until this service's driver lands: every call fails with a terminal error.

use super::{Changes, Ctx, Driver, Observed, Outputs};
use crate::aws::AwsError;
use crate::desired::{FunctionSpec, Tags};

pub struct Functions;

impl Driver for Functions {
    type Spec = FunctionSpec;
    async fn observe(
        &self,
        _: &Ctx<'_>,
        name: &str,
        _: &FunctionSpec,
    ) -> Result<Option<Observed<FunctionSpec>>, AwsError> {
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
        _: &FunctionSpec,
        _: &Tags,
    ) -> Result<Outputs, AwsError> {
        Err(AwsError::terminal(name, "create", "driver not implemented"))
    }
    async fn update(
        &self,
        _: &Ctx<'_>,
        name: &str,
        _: &FunctionSpec,
        _: &Tags,
        _: &Observed<FunctionSpec>,
        _: &Changes,
    ) -> Result<Outputs, AwsError> {
        Err(AwsError::terminal(name, "update", "driver not implemented"))
    }
    async fn delete(
        &self,
        _: &Ctx<'_>,
        name: &str,
        _: &Observed<FunctionSpec>,
    ) -> Result<(), AwsError> {
        Err(AwsError::terminal(name, "delete", "driver not implemented"))
    }
}
