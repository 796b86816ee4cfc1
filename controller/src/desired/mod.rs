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
    Permission,
    StateMachine,
    RestApi,
    Stage,
    ApiKey,
    UsagePlan,
    Alarm,
}

impl Kind {
    pub const ALL: [Kind; 15] = [
        Kind::Bucket,
        Kind::Table,
        Kind::Repository,
        Kind::LogGroup,
        Kind::Queue,
        Kind::Topic,
        Kind::Role,
        Kind::Function,
        Kind::Permission,
        Kind::StateMachine,
        Kind::RestApi,
        Kind::Stage,
        Kind::ApiKey,
        Kind::UsagePlan,
        Kind::Alarm,
    ];

    /// Whether the create call of this kind cannot carry tags (`CreateBucket`): an intent is recorded
    /// before it, so a create interrupted before its tags is still recognised as ours.
    pub fn creates_untagged(self) -> bool {
        self == Kind::Bucket
    }

    /// Whether resources of this kind carry tags of their own (a permission is a policy statement inside
    /// its function, owned through it).
    pub fn is_tagged(self) -> bool {
        self != Kind::Permission
    }

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
            Kind::Permission => "Permission",
            Kind::StateMachine => "StateMachine",
            Kind::RestApi => "RestApi",
            Kind::Stage => "Stage",
            Kind::ApiKey => "ApiKey",
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

impl ResourceId {
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
        }
    }
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
    Permission(PermissionSpec),
    StateMachine(StateMachineSpec),
    RestApi(RestApiSpec),
    Stage(StageSpec),
    ApiKey(ApiKeySpec),
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
            ResourceSpec::Permission(_) => Kind::Permission,
            ResourceSpec::StateMachine(_) => Kind::StateMachine,
            ResourceSpec::RestApi(_) => Kind::RestApi,
            ResourceSpec::Stage(_) => Kind::Stage,
            ResourceSpec::ApiKey(_) => Kind::ApiKey,
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
