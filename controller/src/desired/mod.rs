//! The desired model: from a spec, the complete list of AWS resources of one stack with their names,
//! tags, policies, state machine definition, alarms, and the edges between them. Pure: no I/O.

pub mod arns;
mod build;
pub mod names;
pub mod policies;
mod specs;

use std::collections::BTreeMap;
use std::fmt;

pub use build::{build_stack, state_machine_definition, StackEnv};
pub use specs::*;

/// Tag naming the owning pipeline (`namespace/name`): the proof of ownership.
pub const OWNER_TAG: &str = "tap.dev/pipeline";
/// Tag carrying the environment suffix.
pub const SUFFIX_TAG: &str = "tap.dev/suffix";

pub type Tags = BTreeMap<String, String>;

/// The kinds of AWS resource one stack is made of; one driver each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Kind {
    Bucket,
    Table,
    Repository,
    LogGroup,
    Queue,
    Topic,
    Role,
    Function,
    StateMachine,
    RestApi,
    UsagePlan,
    Alarm,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Bucket => "Bucket",
            Kind::Table => "Table",
            Kind::Repository => "Repository",
            Kind::LogGroup => "LogGroup",
            Kind::Queue => "Queue",
            Kind::Topic => "Topic",
            Kind::Role => "Role",
            Kind::Function => "Function",
            Kind::StateMachine => "StateMachine",
            Kind::RestApi => "RestApi",
            Kind::UsagePlan => "UsagePlan",
            Kind::Alarm => "Alarm",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A resource's identity in the graph: its kind and its AWS name (unique per kind within a stack).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId {
    pub kind: Kind,
    pub name: String,
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

// Built once per reconcile, a few dozen at a time: boxing the large variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum ResourceSpec {
    Bucket(BucketSpec),
    Table(TableSpec),
    Repository(RepositorySpec),
    LogGroup(LogGroupSpec),
    Queue(QueueSpec),
    Topic(TopicSpec),
    Role(RoleSpec),
    Function(FunctionSpec),
    StateMachine(StateMachineSpec),
    RestApi(RestApiSpec),
    UsagePlan(UsagePlanSpec),
    Alarm(AlarmSpec),
}

impl ResourceSpec {
    pub fn kind(&self) -> Kind {
        match self {
            ResourceSpec::Bucket(_) => Kind::Bucket,
            ResourceSpec::Table(_) => Kind::Table,
            ResourceSpec::Repository(_) => Kind::Repository,
            ResourceSpec::LogGroup(_) => Kind::LogGroup,
            ResourceSpec::Queue(_) => Kind::Queue,
            ResourceSpec::Topic(_) => Kind::Topic,
            ResourceSpec::Role(_) => Kind::Role,
            ResourceSpec::Function(_) => Kind::Function,
            ResourceSpec::StateMachine(_) => Kind::StateMachine,
            ResourceSpec::RestApi(_) => Kind::RestApi,
            ResourceSpec::UsagePlan(_) => Kind::UsagePlan,
            ResourceSpec::Alarm(_) => Kind::Alarm,
        }
    }
}

/// One AWS resource of the stack.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub id: ResourceId,
    /// Must exist (and be converged) before this one is created or updated; deleted after this one.
    pub depends_on: Vec<ResourceId>,
    /// Every tag, ownership tags included.
    pub tags: Tags,
    pub spec: ResourceSpec,
}

impl Resource {
    pub fn name(&self) -> &str {
        &self.id.name
    }
}

/// The whole desired stack of one pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Stack {
    pub env: StackEnv,
    pub suffix: String,
    pub resources: Vec<Resource>,
}

impl Stack {
    pub fn get(&self, id: &ResourceId) -> Option<&Resource> {
        self.resources.iter().find(|r| &r.id == id)
    }
}

#[cfg(test)]
mod tests;
