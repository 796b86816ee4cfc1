//! The engine: desired stack + what the drivers observe → per-resource actions, executed over the
//! dependency graph (independent resources in parallel, bounded concurrency); teardown walks the graph
//! backwards. Both front ends (Kubernetes controller, CLI) call only this.

mod control;
mod drift;
mod lock;
mod report;
mod status;
mod step;
mod walk;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aws_config::SdkConfig;

pub use control::{Control, Intent};
pub use drift::DriftMemory;
pub use lock::{cli_holder, LockHolder, LockOptions, LOCKED};
pub use report::{Action, Report, ResourceReport};

use crate::api::{AwsAccess, DriftPolicy, StackOutputs, TransactionPipelineSpec, ValidationErrors};
use crate::aws::{self, Aws, AwsError, ClientOptions};
use crate::desired::{self, names, Kind, Stack, StackEnv, Tags};
use crate::drivers::{self, Outputs};
use step::Step;

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
    /// `as_role`: ` as <role ARN>` when the pipeline's calls assume one (its trust policy, external id).
    #[error("connecting to AWS in {region}{as_role}: {source}")]
    Connect {
        region: String,
        as_role: String,
        source: AwsError,
    },
}

/// Reading or removing a stack's lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Aws(#[from] AwsError),
}

/// One engine serves every pipeline: it holds the SDK configuration and one set of clients per region.
pub struct Engine {
    sdk: SdkConfig,
    /// Maximum AWS resources worked on at once within one pipeline.
    pub concurrency: usize,
    /// Tags added to every resource (the controller's `--extra-tags`).
    pub extra_tags: Tags,
    /// Clients by region and assumed role (none: the engine's own credentials), built once each, with
    /// the account-wide listings the walks through them share.
    clients: tokio::sync::Mutex<HashMap<(String, Option<AwsAccess>), Clients>>,
    options: ClientOptions,
    observer: Option<crate::aws::Observer>,
    error_observer: Option<crate::aws::ErrorObserver>,
    progress: Option<Arc<dyn Progress>>,
    lock: LockOptions,
}

/// One account and region's clients and the listings its walks share (see `drivers::batch`).
#[derive(Clone)]
struct Clients {
    aws: Aws,
    listings: Arc<drivers::batch::AccountListings>,
}

/// Told of every resource as its turn in a walk starts and ends (the CLI's live output).
pub trait Progress: Send + Sync {
    fn started(&self, id: &desired::ResourceId);
    fn finished(&self, report: &ResourceReport);
    /// Someone else holds the stack's lock: the walk waits (up to the lock timeout).
    fn waiting_for_lock(&self, _holder: &LockHolder) {}
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
            options: ClientOptions::default(),
            observer: None,
            error_observer: None,
            progress: None,
            lock: LockOptions::default(),
        }
    }

    /// Who this writer is to the stack's lock, its lease, and how long to wait for another holder.
    pub fn with_lock(mut self, lock: LockOptions) -> Self {
        self.lock = lock;
        self
    }

    /// The stack's control table, for one walk.
    fn control(&self, aws: &Aws, stack: &Stack, owner: &str) -> Control {
        Control::new(
            aws.clone(),
            &stack.suffix,
            owner,
            control_tags(stack),
            self.lock.clone(),
        )
    }

    /// Someone else's live lock on the pipeline's stack, if any (a read).
    pub async fn lock_holder(
        &self,
        pipeline: &Pipeline<'_>,
    ) -> Result<Option<LockHolder>, LockError> {
        let (aws, stack) = self.desired(pipeline).await?;
        let control = self.control(&aws, &stack, &names::owner_tag(pipeline.owner));
        Ok(control.holder().await?)
    }

    /// Removes a crashed writer's lock, only if `id` is its id (`force-unlock`).
    pub async fn force_unlock(
        &self,
        pipeline: &Pipeline<'_>,
        id: &str,
    ) -> Result<LockHolder, LockError> {
        let (aws, stack) = self.desired(pipeline).await?;
        let control = self.control(&aws, &stack, &names::owner_tag(pipeline.owner));
        Ok(control.force_unlock(id).await?)
    }

    /// How the clients are built: rate limits per service, extra interceptors.
    pub fn with_client_options(mut self, options: ClientOptions) -> Self {
        self.options = options;
        self
    }

    /// Reports every failed attempt (service, operation, code) to `observer`: the metrics registry.
    pub fn with_error_observer(
        mut self,
        observer: impl Fn(&str, &str, &str) + Send + Sync + 'static,
    ) -> Self {
        self.error_observer = Some(Arc::new(observer));
        self
    }

    /// Tells `progress` of every resource's turn as it starts and ends.
    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = Some(progress);
        self
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

    /// The clients for a region with the engine's own credentials (see [`Engine::clients`]).
    pub async fn aws(&self, region: Option<&str>) -> Result<Aws, EngineError> {
        Ok(self.clients(region, None).await?.aws)
    }

    /// The clients a pipeline's calls go through: its region, and its `spec.aws` role when it has one.
    pub async fn aws_for(&self, spec: &TransactionPipelineSpec) -> Result<Aws, EngineError> {
        Ok(self.clients_for(spec).await?.aws)
    }

    async fn clients_for(&self, spec: &TransactionPipelineSpec) -> Result<Clients, EngineError> {
        self.clients(spec.region.as_deref(), spec.aws.as_ref())
            .await
    }

    /// The clients for a region, acting as `role` (assumed through STS, refreshed before it expires)
    /// or with the engine's own credentials; built once each, the account id read from STS once.
    async fn clients(
        &self,
        region: Option<&str>,
        role: Option<&AwsAccess>,
    ) -> Result<Clients, EngineError> {
        let region = region
            .map(str::to_string)
            .unwrap_or_else(|| self.default_region());
        let key = (region.clone(), role.cloned());
        let mut clients = self.clients.lock().await;
        if let Some(found) = clients.get(&key) {
            return Ok(found.clone());
        }
        let mut sdk = self
            .sdk
            .to_builder()
            .region(aws_config::Region::new(region.clone()))
            .build();
        if let Some(role) = role {
            if sdk.time_source().is_none() {
                // The provider dates its credentials' expiry; an SdkConfig built by hand has no clock.
                sdk = sdk
                    .to_builder()
                    .time_source(aws_smithy_async::time::SystemTimeSource::new())
                    .build();
            }
            let mut provider = aws_config::sts::AssumeRoleProvider::builder(&role.role_arn)
                .session_name("tap-controller")
                .configure(&sdk);
            if let Some(id) = &role.external_id {
                provider = provider.external_id(id);
            }
            // Boxed, like the connect below: these large futures run once per client set and would
            // otherwise sit inline in every walk's future (a stack overflow in debug builds).
            let provider = Box::pin(provider.build()).await;
            sdk = sdk
                .to_builder()
                .credentials_provider(
                    aws_credential_types::provider::SharedCredentialsProvider::new(provider),
                )
                .build();
        }
        let aws = Box::pin(Aws::connect_with(&sdk, &self.options))
            .await
            .map_err(|source| EngineError::Connect {
                region: region.clone(),
                as_role: role
                    .map(|r| format!(" as {}", r.role_arn))
                    .unwrap_or_default(),
                source,
            })?;
        if let Some(observer) = &self.observer {
            aws.calls.set_observer(observer.clone());
        }
        if let Some(observer) = &self.error_observer {
            aws.calls.set_error_observer(observer.clone());
        }
        let built = Clients {
            aws,
            listings: Arc::default(),
        };
        clients.insert(key, built.clone());
        Ok(built)
    }

    /// Validates the spec and builds the desired stack. No AWS call but STS (once per region).
    pub async fn desired(&self, pipeline: &Pipeline<'_>) -> Result<(Aws, Stack), EngineError> {
        let (clients, stack) = self.desired_with(pipeline).await?;
        Ok((clients.aws, stack))
    }

    async fn desired_with(&self, pipeline: &Pipeline<'_>) -> Result<(Clients, Stack), EngineError> {
        crate::api::validate(pipeline.spec)?;
        let clients = self.clients_for(pipeline.spec).await?;
        let aws = &clients.aws;
        let env = StackEnv {
            account_id: aws.account_id.clone(),
            region: aws.region.clone(),
            partition: aws.partition.clone(),
            owner: pipeline.owner.to_string(),
            extra_tags: self.extra_tags.clone(),
        };
        let stack = desired::build_stack(pipeline.spec, &env);
        Ok((clients, stack))
    }

    /// Converges the stack (or, with `Mode::DryRun` or `driftPolicy: Report`, only observes it).
    /// `memory` carries drift history between reconciles of the same pipeline.
    pub async fn reconcile(
        &self,
        pipeline: &Pipeline<'_>,
        mode: Mode,
        memory: &mut DriftMemory,
    ) -> Result<Report, EngineError> {
        Box::pin(self.reconcile_as_of(pipeline, mode, memory, Instant::now())).await
    }

    /// [`Engine::reconcile`], taking account-wide listings read at or after `as_of` (see
    /// `drivers::batch`): the stack as of that instant at the oldest, as far as they can only confirm.
    pub async fn reconcile_as_of(
        &self,
        pipeline: &Pipeline<'_>,
        mode: Mode,
        memory: &mut DriftMemory,
        as_of: Instant,
    ) -> Result<Report, EngineError> {
        let (clients, stack) = self.desired_with(pipeline).await?;
        let aws = clients.aws;
        let mode = if pipeline.spec.drift_policy == DriftPolicy::Report {
            Mode::DryRun
        } else {
            mode
        };
        let started = Instant::now();
        // The first walk of a pipeline in this process asks whether anyone ever wrote the stack (its
        // control table is made at the first write and removed by the last teardown): if not, what can
        // only be created is created without a read first (see `Driver::CREATE_REFUSES_EXISTING`).
        let fresh = Fresh::asked_if(mode == Mode::Apply && memory.is_new());
        memory.begin_walk();
        let shared = Arc::new(Mutex::new(std::mem::take(memory)));
        let owner = names::owner_tag(pipeline.owner);
        let control = self.control(&aws, &stack, &owner);
        let policy = pipeline.spec.drift_policy;
        let tag_policy = pipeline.spec.tag_policy;
        let adoption_policy = pipeline.spec.adoption_policy;
        let walk = walk::forward(&stack, self.concurrency, mode, |resource, deps| {
            let progress = self.progress.clone();
            let aws = aws.clone();
            let owner = owner.clone();
            let shared = shared.clone();
            let control = &control;
            let fresh = &fresh;
            async move {
                Step {
                    aws: &aws,
                    resource: &resource,
                    deps: &deps,
                    owner: &owner,
                    mode,
                    policy,
                    tag_policy,
                    adoption_policy,
                    memory: &shared,
                    control,
                    progress: progress.as_deref(),
                    fresh,
                }
                .converge()
                .await
            }
        });
        let batch = Arc::new(drivers::batch::Batch::for_stack(
            &stack,
            clients.listings,
            as_of,
        ));
        let (reports, calls) = aws::scope(drivers::batch::scope(
            batch,
            // A stack never written will be: its lock is taken while the first resources are read
            // (otherwise at the first write).
            under_lock(
                &control,
                mode,
                Locking::WhenFresh(&fresh),
                self.progress.as_deref(),
                walk,
            ),
        ))
        .await;
        let (reports, locked_by) = reports;
        *memory = Arc::try_unwrap(shared)
            .map(|m| m.into_inner().expect("drift memory poisoned"))
            .unwrap_or_default();
        let drift = memory.entries(&stack);
        let mut report = finish(&stack, reports, drift, started, calls);
        report.locked_by = locked_by;
        Ok(report)
    }

    /// Deletes every resource of the stack that this pipeline owns, dependents first.
    pub async fn teardown(
        &self,
        pipeline: &Pipeline<'_>,
        mode: Mode,
    ) -> Result<Report, EngineError> {
        let (aws, stack) = self.desired(pipeline).await?;
        let started = Instant::now();
        let owner = names::owner_tag(pipeline.owner);
        let control = self.control(&aws, &stack, &owner);
        let memory = Mutex::new(DriftMemory::default());
        let work = async {
            let reports = walk::backward(&stack, self.concurrency, |resource| {
                let progress = self.progress.clone();
                let aws = aws.clone();
                let owner = owner.clone();
                let memory = &memory;
                let control = &control;
                async move {
                    let deps = BTreeMap::new();
                    Step {
                        aws: &aws,
                        resource: &resource,
                        deps: &deps,
                        owner: &owner,
                        mode,
                        policy: DriftPolicy::Correct,
                        tag_policy: pipeline.spec.tag_policy,
                        // Teardown deletes only what is proven ours: it adopts nothing.
                        adoption_policy: crate::api::AdoptionPolicy::Never,
                        memory,
                        control,
                        progress: progress.as_deref(),
                        fresh: &NOT_ASKED,
                    }
                    .tear_down()
                    .await
                }
            })
            .await;
            // The control table goes last, once nothing else of the stack is left.
            let mut reports = reports;
            if mode == Mode::Apply && reports.iter().all(ResourceReport::is_done) {
                let started = Instant::now();
                let id = desired::ResourceId::new(Kind::Table, control.table());
                let (action, applied) = match control.remove().await {
                    Ok(true) => (Action::Delete, true),
                    Ok(false) => (Action::AlreadyGone, false),
                    Err(e) => (Action::Fail(e), false),
                };
                if applied || matches!(action, Action::Fail(_)) {
                    reports.push(ResourceReport {
                        id,
                        action,
                        applied,
                        outputs: Outputs::default(),
                        remembered: false,
                        elapsed: started.elapsed(),
                    });
                }
            }
            reports
        };
        let work = Box::pin(work);
        let (reports, calls) = aws::scope(async {
            // A teardown of a stack someone wrote deletes: its lock is taken before anything is read,
            // so that nothing is read twice. Without a control table, nothing was written under one.
            let locking = if mode == Mode::Apply && matches!(control.exists().await, Ok(true)) {
                Locking::Before
            } else {
                Locking::OnFirstWrite
            };
            // Listings that outlive the teardown's deletes only when read under its lock.
            let batch = match locking {
                Locking::Before => drivers::batch::Batch::for_teardown(&stack),
                // A teardown shares no account-wide answers: each it reads, it reads itself.
                _ => drivers::batch::Batch::for_stack(&stack, Arc::default(), Instant::now()),
            };
            let work = drivers::batch::scope(Arc::new(batch), work);
            under_lock(&control, mode, locking, self.progress.as_deref(), work).await
        })
        .await;
        let (reports, locked_by) = reports;
        let mut report = finish(&stack, reports, Vec::new(), started, calls);
        report.locked_by = locked_by;
        Ok(report)
    }
}

/// Runs a walk with the lock kept alive while it is held and released after; in a dry run, reads who
/// holds it instead. Someone else's lock, if it refused the walk's writes or a write is in progress.
async fn under_lock<T>(
    control: &Control,
    mode: Mode,
    locking: Locking<'_>,
    progress: Option<&dyn Progress>,
    walk: impl std::future::Future<Output = T>,
) -> (T, Option<LockHolder>) {
    // On the heap: a walk's future is large, and a caller's stack (a test thread's 2 MiB) need not hold it.
    let walk = Box::pin(walk);
    if mode == Mode::DryRun {
        let (out, holder) = futures::join!(walk, control.holder());
        return (out, holder.ok().flatten());
    }
    // A failure here is the first write's to report (a refusal is kept for every write of the walk).
    let lock = Box::pin(async {
        let _ = control.writer(progress).await;
    });
    let locked_walk = async {
        match locking {
            Locking::OnFirstWrite => walk.await,
            Locking::WhenFresh(fresh) => {
                let lock = async {
                    if fresh.get(control).await {
                        lock.await;
                    }
                };
                futures::join!(lock, walk).1
            }
            Locking::Before => {
                lock.await;
                walk.await
            }
        }
    };
    let out = tokio::select! {
        out = locked_walk => out,
        _ = control.keep_alive() => unreachable!("the heartbeat runs until the walk ends"),
    };
    if let Err(e) = control.release().await {
        // It expires after its lease.
        tracing::warn!(error = %e, "could not release the stack's lock");
    }
    (out, control.refused_by().await)
}

/// When a writing walk takes the stack's lock.
#[derive(Clone, Copy)]
enum Locking<'a> {
    /// At its first write: a walk that finds nothing to change writes nothing.
    OnFirstWrite,
    /// While it starts reading, if the stack was never written: it will write. (Otherwise at its
    /// first write.)
    WhenFresh(&'a Fresh),
    /// Before it reads anything: it will write, and what it read before the lock would be read again.
    Before,
}

/// Whether the stack was never written (it has no control table: made at the first write, removed by
/// the last teardown). Asked on a pipeline's first walk in this process only, and once, by the first
/// turn or lock that needs the answer, while the other turns read: it is not a step before the walk.
pub(super) struct Fresh {
    asked: bool,
    answer: tokio::sync::OnceCell<bool>,
}

/// A walk that does not ask (a resync, a teardown): never fresh.
static NOT_ASKED: Fresh = Fresh {
    asked: false,
    answer: tokio::sync::OnceCell::const_new(),
};

impl Fresh {
    fn asked_if(asked: bool) -> Self {
        Self {
            asked,
            answer: tokio::sync::OnceCell::new(),
        }
    }

    /// Never written; `false` when not asked, or when the control table cannot be read.
    pub(super) async fn get(&self, control: &Control) -> bool {
        self.asked
            && *self
                .answer
                // On the heap: this future is part of every turn's, and a test thread's stack is 2 MiB.
                .get_or_init(|| async { matches!(Box::pin(control.exists()).await, Ok(false)) })
                .await
    }
}

/// The control table carries the stack's ownership tags.
fn control_tags(stack: &Stack) -> Tags {
    stack
        .resources
        .iter()
        .find(|r| r.id.kind.is_tagged())
        .map(|r| r.tags.clone())
        .unwrap_or_default()
}

fn finish(
    stack: &Stack,
    reports: Vec<ResourceReport>,
    drift: Vec<crate::api::DriftEntry>,
    started: Instant,
    calls: BTreeMap<(String, String), u64>,
) -> Report {
    let (outputs, api_key) = stack_outputs(stack, &reports);
    Report {
        resources: reports,
        drift,
        outputs,
        api_key,
        elapsed: started.elapsed(),
        calls,
        locked_by: None,
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
        account_id: Some(stack.env.account_id.clone()),
        region: Some(stack.env.region.clone()),
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
        api_endpoint: reports
            .iter()
            .find(|r| r.id.kind == Kind::Stage)
            .and_then(|r| r.outputs.url.as_ref())
            .zip(stack.resources.iter().find_map(|r| match &r.spec {
                desired::ResourceSpec::RestApi(api) => Some(&api.resource_path),
                _ => None,
            }))
            .map(|(stage, path)| format!("{stage}{path}")),
        ..Default::default()
    };
    let key = out(Kind::ApiKey, &names::api_key(suffix));
    outputs.api_key_id = key.and_then(|o| o.id.clone());
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
    (outputs, key.and_then(|o| o.secret.clone()))
}
