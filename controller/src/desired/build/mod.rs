//! Spec → desired stack, one family of resources per module, in dependency order.

mod api;
mod compute;
mod monitoring;
mod state_machine;
mod storage;

use super::arns::Arns;
use super::{Kind, Resource, ResourceId, ResourceSpec, Stack, Tags, OWNER_TAG, SUFFIX_TAG};
use crate::api::{FunctionSettings, TransactionPipelineSpec};

pub use state_machine::state_machine_definition;

/// Where and for whom the stack is built: what the spec alone does not say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackEnv {
    pub account_id: String,
    pub region: String,
    pub partition: String,
    /// `namespace/name` of the owning pipeline (the ownership tag's value).
    pub owner: String,
    /// Tags the controller adds to every resource (its `--extra-tags`).
    pub extra_tags: Tags,
}

impl StackEnv {
    pub fn arns(&self) -> Arns {
        Arns {
            partition: self.partition.clone(),
            region: self.region.clone(),
            account_id: self.account_id.clone(),
        }
    }
}

/// What every family's builder reads, and the list it appends to.
struct Builder<'a> {
    spec: &'a TransactionPipelineSpec,
    suffix: &'a str,
    arns: Arns,
    tags: Tags,
    resources: Vec<Resource>,
}

impl Builder<'_> {
    fn add(&mut self, id: ResourceId, depends_on: Vec<ResourceId>, spec: ResourceSpec) {
        debug_assert_eq!(id.kind, spec.kind());
        let tags = if id.kind.is_tagged() {
            self.tags.clone()
        } else {
            Tags::new()
        };
        self.resources.push(Resource {
            id,
            depends_on,
            tags,
            spec,
        });
    }

    fn function_settings(&self, function: &str) -> &FunctionSettings {
        let f = &self.spec.functions;
        match function {
            "csv-validator" => &f.csv_validator,
            "data-transformer" => &f.data_transformer,
            "notification-sender" => &f.notification_sender,
            other => unreachable!("unknown function {other}"),
        }
    }
}

fn id(kind: Kind, name: impl Into<String>) -> ResourceId {
    ResourceId::new(kind, name)
}

/// Builds the complete desired stack of a (validated) spec.
pub fn build_stack(spec: &TransactionPipelineSpec, env: &StackEnv) -> Stack {
    let suffix = spec.environment_suffix.as_str();
    let mut tags: Tags = env.extra_tags.clone();
    tags.extend(spec.tags.clone());
    tags.insert(OWNER_TAG.into(), super::names::owner_tag(&env.owner));
    tags.insert(SUFFIX_TAG.into(), suffix.into());
    let mut b = Builder {
        spec,
        suffix,
        arns: env.arns(),
        tags,
        resources: Vec::new(),
    };
    storage::messaging(&mut b);
    storage::tables(&mut b);
    compute::leaves(&mut b);
    compute::functions(&mut b);
    state_machine::state_machine(&mut b);
    storage::bucket(&mut b);
    api::rest_api(&mut b);
    monitoring::alarms(&mut b);
    Stack {
        env: env.clone(),
        suffix: suffix.to_string(),
        resources: b.resources,
    }
}
