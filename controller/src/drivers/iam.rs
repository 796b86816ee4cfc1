//! Placeholder until this service's driver lands: every call fails with a terminal error.

use super::{Changes, Ctx, Driver, Observed, Outputs};
use crate::aws::AwsError;
use crate::desired::{RoleSpec, Tags};

pub struct Roles;

impl Driver for Roles {
    type Spec = RoleSpec;
    async fn observe(
        &self,
        _: &Ctx<'_>,
        name: &str,
        _: &RoleSpec,
    ) -> Result<Option<Observed<RoleSpec>>, AwsError> {
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
        _: &RoleSpec,
        _: &Tags,
    ) -> Result<Outputs, AwsError> {
        Err(AwsError::terminal(name, "create", "driver not implemented"))
    }
    async fn update(
        &self,
        _: &Ctx<'_>,
        name: &str,
        _: &RoleSpec,
        _: &Tags,
        _: &Observed<RoleSpec>,
        _: &Changes,
    ) -> Result<Outputs, AwsError> {
        Err(AwsError::terminal(name, "update", "driver not implemented"))
    }
    async fn delete(
        &self,
        _: &Ctx<'_>,
        name: &str,
        _: &Observed<RoleSpec>,
    ) -> Result<(), AwsError> {
        Err(AwsError::terminal(name, "delete", "driver not implemented"))
    }
}
