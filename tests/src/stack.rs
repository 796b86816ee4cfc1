//! A desired stack built against a running emulator: the set-up every driver and stack test shares.

use anyhow::Context;
use tap_controller::api::TransactionPipelineSpec;
use tap_controller::aws::Aws;
use tap_controller::desired::{
    build_stack, names, AlarmSpec, ApiKeySpec, BucketSpec, FunctionSpec, Kind, LogGroupSpec,
    PermissionSpec, QueueSpec, RepositorySpec, Resource, ResourceSpec, RestApiSpec, RoleSpec,
    Stack, StackEnv, StageSpec, StateMachineSpec, TableSpec, TopicSpec, UsagePlanSpec,
};
use tap_controller::drivers::Driver;

use crate::emulator::{fake_image_manifest, Emulator};
use crate::lifecycle::Subject;

/// The pipeline that owns the test stacks.
pub const OWNER: &str = "default/payments-dev";

/// The example spec the driver tests build from.
pub const EXAMPLE: &str = r#"
environmentSuffix: dev1
tags: {team: payments}
functions:
  csvValidator: {image: {tag: v1}, memoryMb: 512, timeoutSeconds: 30}
  dataTransformer: {image: {tag: v1}}
  notificationSender: {image: {tag: v1}}
notifications: {emails: [ops@example.com]}
"#;

/// The stack of `spec` (YAML) in account 123456789012, us-east-1, without an emulator.
pub fn offline_stack(spec: &str) -> Stack {
    let spec: TransactionPipelineSpec = serde_saphyr::from_str(spec).expect("the spec parses");
    build_stack(
        &spec,
        &StackEnv {
            account_id: "123456789012".into(),
            region: "us-east-1".into(),
            partition: "aws".into(),
            owner: OWNER.into(),
            extra_tags: Default::default(),
        },
    )
}

/// A spec type that sits in one variant of [`ResourceSpec`].
pub trait StackSpec: Sized {
    fn of(spec: &ResourceSpec) -> Option<&Self>;
}

macro_rules! stack_specs {
    ($($variant:ident => $spec:ty),* $(,)?) => {
        $(impl StackSpec for $spec {
            fn of(spec: &ResourceSpec) -> Option<&Self> {
                match spec {
                    ResourceSpec::$variant(s) => Some(s),
                    _ => None,
                }
            }
        })*
    };
}

stack_specs!(
    Bucket => BucketSpec,
    Table => TableSpec,
    Repository => RepositorySpec,
    LogGroup => LogGroupSpec,
    Queue => QueueSpec,
    Topic => TopicSpec,
    Role => RoleSpec,
    Function => FunctionSpec,
    Permission => PermissionSpec,
    StateMachine => StateMachineSpec,
    RestApi => RestApiSpec,
    Stage => StageSpec,
    ApiKey => ApiKeySpec,
    UsagePlan => UsagePlanSpec,
    Alarm => AlarmSpec,
);

/// An emulator, clients on it, and the desired stack of a spec owned by [`OWNER`].
pub struct TestStack {
    pub emu: Emulator,
    pub aws: Aws,
    pub stack: Stack,
}

impl TestStack {
    /// Starts the emulator `TAP_TEST_EMULATOR` names and builds the stack of `spec` (YAML) against it.
    pub async fn start(spec: &str) -> anyhow::Result<Self> {
        let emu = Emulator::start().await?;
        let aws = Aws::connect(&emu.sdk_config()).await?;
        let spec: TransactionPipelineSpec = serde_saphyr::from_str(spec)?;
        let stack = build_stack(
            &spec,
            &StackEnv {
                account_id: aws.account_id.clone(),
                region: aws.region.clone(),
                partition: aws.partition.clone(),
                owner: OWNER.into(),
                extra_tags: Default::default(),
            },
        );
        Ok(Self { emu, aws, stack })
    }

    /// The stack of [`EXAMPLE`].
    pub async fn example() -> anyhow::Result<Self> {
        Self::start(EXAMPLE).await
    }

    /// The resource of `kind` whose name ends with `suffix` (`""`: the first of its kind).
    pub fn resource(&self, kind: Kind, suffix: &str) -> anyhow::Result<&Resource> {
        self.stack
            .resources
            .iter()
            .find(|r| r.id.kind == kind && r.id.name.ends_with(suffix))
            .with_context(|| format!("no {kind} named …{suffix} in the stack"))
    }

    /// Driver `D` on the resource of `kind` named `…suffix`, with its desired spec and tags.
    pub fn subject<D>(&self, driver: D, kind: Kind, suffix: &str) -> anyhow::Result<Subject<'_, D>>
    where
        D: Driver,
        D::Spec: StackSpec,
    {
        let resource = self.resource(kind, suffix)?;
        let desired = D::Spec::of(&resource.spec)
            .with_context(|| format!("{} has a spec of another kind", resource.id))?
            .clone();
        Ok(Subject::new(
            driver,
            &self.aws,
            resource.id.clone(),
            desired,
            resource.tags.clone(),
        ))
    }

    /// Pushes a placeholder image tagged `tag` to each of the stack's repositories (what `docker push`
    /// does in a real deployment; neither emulator runs the image).
    pub async fn push_images(&self, tag: &str) -> anyhow::Result<()> {
        push_images(&self.aws, &self.stack.suffix, tag).await
    }
}

/// Pushes a placeholder image tagged `tag` to each function's repository of stack `suffix`.
pub async fn push_images(aws: &Aws, suffix: &str, tag: &str) -> anyhow::Result<()> {
    for function in names::FUNCTIONS {
        aws.ecr
            .put_image()
            .repository_name(names::repository(suffix, function))
            .image_tag(tag)
            .image_manifest(fake_image_manifest(tag))
            .send()
            .await
            .with_context(|| format!("pushing {function}:{tag}"))?;
    }
    Ok(())
}
