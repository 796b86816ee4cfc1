//! The engine: desired stack + what the drivers observe → per-resource actions, executed over the
//! dependency graph (independent resources in parallel, bounded concurrency); teardown walks the graph
//! backwards. Both front ends (Kubernetes controller, CLI) call only this.

mod drift;
mod report;
mod walk;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aws_config::SdkConfig;
use serde::Serialize;

pub use drift::DriftMemory;
pub use report::{Action, Report, ResourceReport};

use crate::api::{DriftPolicy, StackOutputs, TransactionPipelineSpec, ValidationErrors};
use crate::aws::{Aws, AwsError, ErrorClass};
use crate::desired::{
    self, names, Kind, Resource, ResourceId, ResourceSpec, Stack, StackEnv, Tags, OWNER_TAG,
};
use crate::drivers::{self, Ctx, Driver, Outputs};

/// Apply changes, or only work out what would change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Apply,
    /// Read calls only.
    DryRun,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    #[error("connecting to AWS in {region}: {source}")]
    Connect { region: String, source: AwsError },
}

/// One engine serves every pipeline: it holds the SDK configuration and one set of clients per region.
pub struct Engine {
    sdk: SdkConfig,
    /// Maximum AWS resources worked on at once within one pipeline.
    pub concurrency: usize,
    /// Tags added to every resource (the controller's `--extra-tags`).
    pub extra_tags: Tags,
    clients: tokio::sync::Mutex<HashMap<String, Aws>>,
    observer: Option<crate::aws::Observer>,
}

/// Who owns the stack and what it should be.
pub struct Pipeline<'a> {
    /// `namespace/name`.
    pub owner: &'a str,
    pub spec: &'a TransactionPipelineSpec,
}

impl Engine {
    pub fn new(sdk: SdkConfig, concurrency: usize, extra_tags: Tags) -> Self {
        Self {
            sdk,
            concurrency: concurrency.max(1),
            extra_tags,
            clients: Default::default(),
            observer: None,
        }
    }

    /// Reports every AWS call to `observer` (service, operation): the metrics registry.
    pub fn with_call_observer(
        mut self,
        observer: impl Fn(&str, &str) + Send + Sync + 'static,
    ) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    pub fn default_region(&self) -> String {
        self.sdk
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "us-east-1".into())
    }

    /// The clients for a region (built once; the account id is read from STS once).
    pub async fn aws(&self, region: Option<&str>) -> Result<Aws, EngineError> {
        let region = region
            .map(str::to_string)
            .unwrap_or_else(|| self.default_region());
        let mut clients = self.clients.lock().await;
        if let Some(aws) = clients.get(&region) {
            return Ok(aws.clone());
        }
        let sdk = self
            .sdk
            .to_builder()
            .region(aws_config::Region::new(region.clone()))
            .build();
        let aws = Aws::connect(&sdk)
            .await
            .map_err(|source| EngineError::Connect {
                region: region.clone(),
                source,
            })?;
        if let Some(observer) = &self.observer {
            aws.calls.set_observer(observer.clone());
        }
        clients.insert(region, aws.clone());
        Ok(aws)
    }

    /// Validates the spec and builds the desired stack. No AWS call but STS (once per region).
    pub async fn desired(&self, pipeline: &Pipeline<'_>) -> Result<(Aws, Stack), EngineError> {
        crate::api::validate(pipeline.spec)?;
        let aws = self.aws(pipeline.spec.region.as_deref()).await?;
        let env = StackEnv {
            account_id: aws.account_id.clone(),
            region: aws.region.clone(),
            partition: aws.partition.clone(),
            owner: pipeline.owner.to_string(),
            extra_tags: self.extra_tags.clone(),
        };
        Ok((aws, desired::build_stack(pipeline.spec, &env)))
    }

    /// Converges the stack (or, with `Mode::DryRun` or `driftPolicy: Report`, only observes it).
    /// `memory` carries drift history between reconciles of the same pipeline.
    pub async fn reconcile(
        &self,
        pipeline: &Pipeline<'_>,
        mode: Mode,
        memory: &mut DriftMemory,
    ) -> Result<Report, EngineError> {
        let (aws, stack) = self.desired(pipeline).await?;
        let mode = if pipeline.spec.drift_policy == DriftPolicy::Report {
            Mode::DryRun
        } else {
            mode
        };
        let started = Instant::now();
        let before = aws.calls.snapshot();
        memory.begin_walk();
        let shared = Arc::new(Mutex::new(std::mem::take(memory)));
        let owner = pipeline.owner.to_string();
        let policy = pipeline.spec.drift_policy;
        let reports = walk::forward(&stack, self.concurrency, mode, |resource, deps| {
            let aws = aws.clone();
            let owner = owner.clone();
            let shared = shared.clone();
            async move {
                let step = Step {
                    aws: &aws,
                    resource: &resource,
                    deps: &deps,
                    owner: &owner,
                    mode,
                    policy,
                    memory: &shared,
                };
                step.converge().await
            }
        })
        .await;
        *memory = Arc::try_unwrap(shared)
            .map(|m| m.into_inner().expect("drift memory poisoned"))
            .unwrap_or_default();
        let drift = memory.entries(&stack);
        Ok(finish(&stack, reports, drift, started, &before, &aws))
    }

    /// Deletes every resource of the stack that this pipeline owns, dependents first.
    pub async fn teardown(
        &self,
        pipeline: &Pipeline<'_>,
        mode: Mode,
    ) -> Result<Report, EngineError> {
        let (aws, stack) = self.desired(pipeline).await?;
        let started = Instant::now();
        let before = aws.calls.snapshot();
        let owner = pipeline.owner.to_string();
        let reports = walk::backward(&stack, self.concurrency, |resource| {
            let aws = aws.clone();
            let owner = owner.clone();
            async move {
                let started = Instant::now();
                let deps = BTreeMap::new();
                let ctx = Ctx {
                    aws: &aws,
                    deps: &deps,
                };
                let (action, applied) = dispatch_teardown(&ctx, &resource, &owner, mode).await;
                ResourceReport {
                    id: resource.id.clone(),
                    action,
                    applied,
                    outputs: Outputs::default(),
                    elapsed: started.elapsed(),
                }
            }
        })
        .await;
        Ok(finish(&stack, reports, Vec::new(), started, &before, &aws))
    }
}

fn finish(
    stack: &Stack,
    reports: Vec<ResourceReport>,
    drift: Vec<crate::api::DriftEntry>,
    started: Instant,
    before: &BTreeMap<(String, String), u64>,
    aws: &Aws,
) -> Report {
    let mut calls = aws.calls.snapshot();
    for (key, count) in calls.iter_mut() {
        *count -= before.get(key).copied().unwrap_or(0);
    }
    calls.retain(|_, c| *c > 0);
    let (outputs, api_key) = stack_outputs(stack, &reports);
    Report {
        resources: reports,
        drift,
        outputs,
        api_key,
        elapsed: started.elapsed(),
        calls,
    }
}

/// The outputs a client of the stack needs, from what the walk saw.
fn stack_outputs(
    stack: &Stack,
    reports: &[ResourceReport],
) -> (StackOutputs, Option<drivers::SecretValue>) {
    let suffix = stack.suffix.as_str();
    let out = |kind: Kind, name: &str| {
        reports
            .iter()
            .find(|r| r.id.kind == kind && r.id.name == name)
            .map(|r| &r.outputs)
            .filter(|o| **o != Outputs::default())
    };
    let mut outputs = StackOutputs {
        bucket_name: out(Kind::Bucket, &names::bucket(suffix, &stack.env.account_id))
            .map(|_| names::bucket(suffix, &stack.env.account_id)),
        transactions_table: out(Kind::Table, &names::transactions_table(suffix))
            .map(|_| names::transactions_table(suffix)),
        status_table: out(Kind::Table, &names::status_table(suffix))
            .map(|_| names::status_table(suffix)),
        state_machine_arn: out(Kind::StateMachine, &names::state_machine(suffix))
            .and_then(|o| o.arn.clone()),
        topic_arn: out(Kind::Topic, &names::topic(suffix)).and_then(|o| o.arn.clone()),
        dlq_url: out(Kind::Queue, &names::dlq(suffix)).and_then(|o| o.url.clone()),
        api_endpoint: out(Kind::RestApi, &names::rest_api(suffix)).and_then(|o| o.url.clone()),
        ..Default::default()
    };
    let plan = out(Kind::UsagePlan, &names::usage_plan(suffix));
    outputs.api_key_id = plan.and_then(|o| o.extra.get("apiKeyId").cloned());
    for function in names::FUNCTIONS {
        if let Some(arn) =
            out(Kind::Function, &names::function(suffix, function)).and_then(|o| o.arn.clone())
        {
            outputs.function_arns.insert(names::camel(function), arn);
        }
        if let Some(uri) =
            out(Kind::Repository, &names::repository(suffix, function)).and_then(|o| o.url.clone())
        {
            outputs.repository_uris.insert(names::camel(function), uri);
        }
    }
    (outputs, plan.and_then(|o| o.secret.clone()))
}

/// Everything one resource's convergence needs.
struct Step<'a> {
    aws: &'a Aws,
    resource: &'a Resource,
    deps: &'a BTreeMap<ResourceId, Outputs>,
    owner: &'a str,
    mode: Mode,
    policy: DriftPolicy,
    memory: &'a Mutex<DriftMemory>,
}

macro_rules! with_driver {
    ($spec:expr, |$driver:ident, $s:ident| $body:expr) => {
        match $spec {
            ResourceSpec::Bucket($s) => {
                let $driver = drivers::s3::Buckets;
                $body
            }
            ResourceSpec::Table($s) => {
                let $driver = drivers::dynamodb::Tables;
                $body
            }
            ResourceSpec::Repository($s) => {
                let $driver = drivers::ecr::Repositories;
                $body
            }
            ResourceSpec::LogGroup($s) => {
                let $driver = drivers::logs::LogGroups;
                $body
            }
            ResourceSpec::Queue($s) => {
                let $driver = drivers::sqs::Queues;
                $body
            }
            ResourceSpec::Topic($s) => {
                let $driver = drivers::sns::Topics;
                $body
            }
            ResourceSpec::Role($s) => {
                let $driver = drivers::iam::Roles;
                $body
            }
            ResourceSpec::Function($s) => {
                let $driver = drivers::lambda::Functions;
                $body
            }
            ResourceSpec::StateMachine($s) => {
                let $driver = drivers::sfn::StateMachines;
                $body
            }
            ResourceSpec::RestApi($s) => {
                let $driver = drivers::apigateway::RestApis;
                $body
            }
            ResourceSpec::UsagePlan($s) => {
                let $driver = drivers::apigateway::UsagePlans;
                $body
            }
            ResourceSpec::Alarm($s) => {
                let $driver = drivers::cloudwatch::Alarms;
                $body
            }
        }
    };
}

impl Step<'_> {
    async fn converge(&self) -> ResourceReport {
        let started = Instant::now();
        let (action, applied, outputs) = with_driver!(&self.resource.spec, |driver, spec| self
            .converge_with(&driver, spec)
            .await);
        ResourceReport {
            id: self.resource.id.clone(),
            action,
            applied,
            outputs,
            elapsed: started.elapsed(),
        }
    }

    async fn converge_with<D: Driver>(
        &self,
        driver: &D,
        spec: &D::Spec,
    ) -> (Action, bool, Outputs) {
        let ctx = Ctx {
            aws: self.aws,
            deps: self.deps,
        };
        let name = self.resource.name();
        let tags = &self.resource.tags;
        let id = &self.resource.id;
        let observed = match driver.observe(&ctx, name, spec).await {
            Ok(observed) => observed,
            Err(e) => return (failure(e), false, Outputs::default()),
        };
        let desired_json = desired_json(spec, tags);
        let now = chrono::Utc::now();
        let Some(observed) = observed else {
            let recreate = self
                .memory
                .lock()
                .expect("drift memory poisoned")
                .note_missing(id, now, self.writes());
            if !self.writes() {
                return (Action::Create, false, Outputs::default());
            }
            return match driver.create(&ctx, name, spec, tags).await {
                Ok(outputs) => {
                    self.memory.lock().expect("drift memory poisoned").applied(
                        id,
                        desired_json,
                        recreate,
                    );
                    (Action::Create, true, outputs)
                }
                Err(e) => (failure(e), false, Outputs::default()),
            };
        };
        if observed.tags.get(OWNER_TAG).map(String::as_str) != Some(self.owner) {
            let holder = observed
                .tags
                .get(OWNER_TAG)
                .map(|o| format!("owned by {o}"))
                .unwrap_or_else(|| "not tagged by tap-controller".into());
            return (
                Action::Conflict(format!("{id} exists but is {holder}: left untouched (ownership is proven by the {OWNER_TAG} tag)")),
                false,
                observed.outputs,
            );
        }
        let changes = drivers::diff(spec, tags, &observed);
        if changes.is_empty() {
            self.memory
                .lock()
                .expect("drift memory poisoned")
                .applied(id, desired_json, false);
            return (Action::NoChange, false, observed.outputs);
        }
        let decision = self.memory.lock().expect("drift memory poisoned").classify(
            id,
            &desired_json,
            &changes.diffs,
            now,
            self.writes(),
        );
        if !self.writes() || decision.hold {
            return (Action::Hold(changes.diffs), false, observed.outputs);
        }
        match driver
            .update(&ctx, name, spec, tags, &observed, &changes)
            .await
        {
            Ok(outputs) => {
                self.memory
                    .lock()
                    .expect("drift memory poisoned")
                    .corrected(id, desired_json, &changes.diffs, now);
                let outputs = if outputs == Outputs::default() {
                    observed.outputs
                } else {
                    outputs
                };
                (Action::Update(changes.diffs), true, outputs)
            }
            Err(e) => (failure(e), false, observed.outputs),
        }
    }

    fn writes(&self) -> bool {
        self.mode == Mode::Apply && self.policy == DriftPolicy::Correct
    }
}

fn failure(e: AwsError) -> Action {
    match e.class {
        ErrorClass::Waiting => Action::Wait(e.message),
        class => Action::Fail {
            message: e.to_string(),
            class,
        },
    }
}

/// The desired spec and tags as JSON, in the shape `drivers::diff` compares.
fn desired_json<S: Serialize>(spec: &S, tags: &Tags) -> serde_json::Value {
    let mut value = serde_json::to_value(spec).expect("specs serialize to JSON");
    if let serde_json::Value::Object(map) = &mut value {
        map.insert(
            "tags".into(),
            serde_json::to_value(tags).expect("tags serialize"),
        );
    }
    value
}

async fn dispatch_teardown(
    ctx: &Ctx<'_>,
    resource: &Resource,
    owner: &str,
    mode: Mode,
) -> (Action, bool) {
    with_driver!(&resource.spec, |driver, spec| teardown_with(
        &driver, ctx, resource, spec, owner, mode
    )
    .await)
}

async fn teardown_with<D: Driver>(
    driver: &D,
    ctx: &Ctx<'_>,
    resource: &Resource,
    spec: &D::Spec,
    owner: &str,
    mode: Mode,
) -> (Action, bool) {
    let name = resource.name();
    let observed = match driver.observe(ctx, name, spec).await {
        Ok(Some(observed)) => observed,
        Ok(None) => return (Action::AlreadyGone, false),
        Err(e) if e.is_not_found() => return (Action::AlreadyGone, false),
        Err(e) => return (failure(e), false),
    };
    if observed.tags.get(OWNER_TAG).map(String::as_str) != Some(owner) {
        return (
            Action::Conflict(format!(
                "{} is not owned by {owner}: not deleted",
                resource.id
            )),
            false,
        );
    }
    if mode == Mode::DryRun {
        return (Action::Delete, false);
    }
    match driver.delete(ctx, name, &observed).await {
        Ok(()) => (Action::Delete, true),
        Err(e) if e.is_not_found() => (Action::AlreadyGone, false),
        Err(e) => (failure(e), false),
    }
}
