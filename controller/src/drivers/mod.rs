//! One module per AWS service behind one trait. A driver reads a resource back into the same type as its
//! desired spec (normalised: policy JSON parsed, server-side defaults folded, ids mapped back to names), so
//! the engine can diff the two field by field; it creates, updates the drifted fields, and deletes.
//! Not-found on delete is success.

pub mod apigateway;
pub mod batch;
pub mod cloudwatch;
pub mod dynamodb;
pub mod ecr;
pub mod iam;
pub mod lambda;
pub mod logs;
pub mod permission;
pub mod s3;
pub mod sfn;
pub mod sns;
pub mod sqs;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::aws::{Aws, AwsError};
use crate::desired::arns::Arns;
use crate::desired::{Kind, ResourceId, Tags, OWNER_TAG};

/// A value that must never reach logs, status or events (the API key).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(pub String);

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// What a converged resource exposes to its dependents and to the pipeline's outputs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outputs {
    /// ARN (or, for resources without one, the most useful identifier).
    pub arn: Option<String>,
    /// Server-assigned id (REST API id, usage plan id, API key id).
    pub id: Option<String>,
    /// URL (queue URL, API endpoint, repository URI).
    pub url: Option<String>,
    /// Secret material (the API key value), delivered to a Kubernetes Secret only.
    pub secret: Option<SecretValue>,
}

/// A resource as AWS reports it, in the desired spec's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed<S> {
    pub spec: S,
    /// The resource's own tags, without AWS-reserved `aws:` keys.
    pub tags: Tags,
    /// For a resource that lives inside another one and has no tags of its own to prove ownership (a
    /// policy statement in a function, a stage of an API): the owner tag of that parent.
    pub parent_owner: Option<String>,
    /// Other resources under the same name that this pipeline does not own (API Gateway does not keep
    /// names unique): an untagged one is then not provably the one meant, so it is never adopted.
    pub namesakes: usize,
    pub outputs: Outputs,
}

impl<S> Observed<S> {
    pub fn new(spec: S, tags: Tags, outputs: Outputs) -> Self {
        Self {
            spec,
            tags,
            parent_owner: None,
            namesakes: 0,
            outputs,
        }
    }

    pub fn with_namesakes(mut self, namesakes: usize) -> Self {
        self.namesakes = namesakes;
        self
    }

    /// The server-assigned id the observation carries (REST API, stage, key, plan).
    pub fn id(&self, ctx: &Ctx<'_>) -> Result<String, AwsError> {
        self.outputs
            .id
            .clone()
            .ok_or_else(|| AwsError::terminal(ctx.id, "observe", "the observed resource has no id"))
    }

    /// The pipeline that owns the resource (`namespace/name`), if any: its parent's owner where the
    /// resource lives inside another (whoever owns an API owns its stages, whatever a stage's own tags
    /// say), else its own ownership tag.
    pub fn owner(&self) -> Option<&str> {
        self.parent_owner
            .as_ref()
            .or(self.tags.get(OWNER_TAG))
            .map(String::as_str)
    }
}

/// One field that differs between desired and observed.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldDiff {
    /// Dotted path, e.g. `memoryMb`, `environment.LOG_LEVEL`, `tags.team`.
    pub field: String,
    pub expected: Value,
    pub actual: Value,
}

impl FieldDiff {
    /// The top-level field this path is under (`environment.X` → `environment`).
    pub fn top(&self) -> &str {
        self.field.split('.').next().unwrap_or(&self.field)
    }
}

/// The diffs of one resource, with a quick test for which top-level fields changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    pub diffs: Vec<FieldDiff>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.diffs.is_empty()
    }

    /// Whether any diff sits under the top-level field `field` (serde name, e.g. `memoryMb`, `tags`).
    pub fn touches(&self, field: &str) -> bool {
        self.diffs.iter().any(|d| d.top() == field)
    }

    pub fn touches_any(&self, fields: &[&str]) -> bool {
        fields.iter().any(|f| self.touches(f))
    }

    pub fn top_fields(&self) -> BTreeSet<&str> {
        self.diffs.iter().map(FieldDiff::top).collect()
    }
}

/// Why a resource cannot be created or updated yet, though nothing failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitReason {
    /// A function's image is not in the stack's ECR repository yet: someone has to push it.
    Image {
        uri: String,
        repository: String,
        tag: String,
    },
    /// A resource this one depends on is not usable yet.
    Dependency { id: ResourceId, why: String },
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::Image {
                uri,
                repository,
                tag,
            } => write!(
                f,
                "push image {uri} (repository {repository}, tag {tag}) to ECR; the pipeline continues once it is there"
            ),
            WaitReason::Dependency { id, why } => write!(f, "waiting for {id} ({why})"),
        }
    }
}

/// Why a create or update did not happen: an AWS call failed, or a prerequisite is not there yet.
#[derive(Clone, Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error("{0}")]
    Wait(WaitReason),
}

/// What every driver call can see besides its own resource's spec.
pub struct Ctx<'a> {
    pub aws: &'a Aws,
    /// The resource the call is about; errors name it.
    pub id: &'a ResourceId,
    /// `namespace/name` of the pipeline the walk is for: among several same-named resources (API Gateway
    /// does not keep names unique), the one it owns is the one meant.
    pub owner: &'a str,
    /// Outputs of the resources this one depends on (converged earlier in the same walk).
    pub deps: &'a BTreeMap<ResourceId, Outputs>,
    /// Whether tags someone else added are left alone (`Merge`) or removed (`Exclusive`).
    pub tag_policy: crate::api::TagPolicy,
}

impl Ctx<'_> {
    /// The resource's AWS name.
    pub fn name(&self) -> &str {
        &self.id.name
    }

    /// ARNs and endpoints in the account, region and partition the clients act in.
    pub fn arns(&self) -> Arns {
        Arns {
            partition: self.aws.partition.clone(),
            region: self.aws.region.clone(),
            account_id: self.aws.account_id.clone(),
        }
    }

    /// The outputs of a dependency of the given kind and name, if it converged.
    pub fn dep(&self, kind: Kind, name: &str) -> Option<&Outputs> {
        self.deps.get(&ResourceId {
            kind,
            name: name.to_string(),
        })
    }
}

/// The one trait every AWS service module implements, for one kind of resource.
pub trait Driver: Sync {
    type Spec: Serialize + Clone + PartialEq + fmt::Debug + Send + Sync;

    /// Whether [`Driver::create`]'s first call is refused by AWS when a resource of that name exists
    /// (and changes nothing then). Only such a kind may be created without being observed first, on a
    /// stack that was never written (the engine's *fresh* walk): a create refused as "already exists"
    /// is then observed and proven ours or not like any other. Not for creates that succeed on an
    /// existing resource (SQS `CreateQueue`, SNS `CreateTopic`, `PutMetricAlarm`, S3 in us-east-1),
    /// or that make a second copy (API Gateway).
    const CREATE_REFUSES_EXISTING: bool = false;

    /// Reads the resource `ctx.id`; `Ok(None)` when it does not exist. Read calls only.
    fn observe(
        &self,
        ctx: &Ctx<'_>,
        desired: &Self::Spec,
    ) -> impl Future<Output = Result<Option<Observed<Self::Spec>>, AwsError>> + Send;

    /// Reads what [`Driver::delete`] needs and no more: whether the resource exists, the tags (or parent
    /// owner) that prove whose it is, and its ids. A teardown reads this instead of [`Driver::observe`]:
    /// its settings are about to go, so they are not read. Where a kind skips them, the observation
    /// carries the desired spec in their place, and its `delete` must cope with what that leaves out
    /// (something someone else added: AWS refuses the delete, and it lists afresh). The default reads
    /// everything, for kinds whose observe is that one read already.
    fn observe_owner(
        &self,
        ctx: &Ctx<'_>,
        desired: &Self::Spec,
    ) -> impl Future<Output = Result<Option<Observed<Self::Spec>>, AwsError>> + Send {
        self.observe(ctx, desired)
    }

    /// Creates the resource with its tags, and every sub-setting of the spec.
    fn create(
        &self,
        ctx: &Ctx<'_>,
        desired: &Self::Spec,
        tags: &Tags,
    ) -> impl Future<Output = Result<Outputs, DriverError>> + Send;

    /// Rewrites the drifted fields (`changes`, never empty), tags included; nothing else.
    fn update(
        &self,
        ctx: &Ctx<'_>,
        desired: &Self::Spec,
        tags: &Tags,
        observed: &Observed<Self::Spec>,
        changes: &Changes,
    ) -> impl Future<Output = Result<Outputs, DriverError>> + Send;

    /// Deletes the resource (already proven ours). Not-found is success.
    fn delete(
        &self,
        ctx: &Ctx<'_>,
        observed: &Observed<Self::Spec>,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
}

/// A service's tag and untag calls on one resource (`target`: its ARN, URL or name, as the API wants).
pub trait TagApi: Sync {
    fn tag(
        &self,
        ctx: &Ctx<'_>,
        target: &str,
        tags: Tags,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;

    fn untag(
        &self,
        ctx: &Ctx<'_>,
        target: &str,
        keys: Vec<String>,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
}

/// Brings a resource's tags from `observed` to `desired`: one tag call for what is missing or different,
/// one untag call for what is not desired (with `tagPolicy: Exclusive` only); no call for a side with
/// nothing to do.
pub async fn sync_tags(
    api: &impl TagApi,
    ctx: &Ctx<'_>,
    target: &str,
    desired: &Tags,
    observed: &Tags,
) -> Result<(), AwsError> {
    let (set, remove) = tag_delta(desired, observed);
    if !set.is_empty() {
        api.tag(ctx, target, set).await?;
    }
    if !remove.is_empty() && ctx.tag_policy == crate::api::TagPolicy::Exclusive {
        api.untag(ctx, target, remove).await?;
    }
    Ok(())
}

/// Field-by-field difference between a desired and an observed value, as JSON: objects are compared key
/// by key (so maps such as `environment` and `tags` report one entry per key); anything else is compared
/// whole; numbers compare by value (`100` equals `100.0`).
pub fn diff_values(expected: &Value, actual: &Value, path: &str, out: &mut Vec<FieldDiff>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let keys: BTreeSet<&String> = e.keys().chain(a.keys()).collect();
            for key in keys {
                diff_values(
                    e.get(key).unwrap_or(&Value::Null),
                    a.get(key).unwrap_or(&Value::Null),
                    &join(key),
                    out,
                );
            }
        }
        (Value::Number(e), Value::Number(a)) if e.as_f64() == a.as_f64() => {}
        (e, a) if e == a => {}
        (e, a) => out.push(FieldDiff {
            field: path.to_string(),
            expected: e.clone(),
            actual: a.clone(),
        }),
    }
}

/// Diffs a desired spec and tags against an observed spec and tags.
pub fn diff<S: Serialize>(
    desired: &S,
    desired_tags: &Tags,
    observed: &S,
    observed_tags: &Tags,
) -> Changes {
    let mut diffs = Vec::new();
    let to_json = |s: &S| serde_json::to_value(s).expect("specs serialize to JSON");
    diff_values(&to_json(desired), &to_json(observed), "", &mut diffs);
    let tags = |t: &Tags| serde_json::to_value(t).expect("tags serialize to JSON");
    diff_values(
        &tags(desired_tags),
        &tags(observed_tags),
        "tags",
        &mut diffs,
    );
    Changes { diffs }
}

/// Tags to set and tag keys to remove to go from `observed` to `desired`.
pub fn tag_delta(desired: &Tags, observed: &Tags) -> (Tags, Vec<String>) {
    let set = desired
        .iter()
        .filter(|(k, v)| observed.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let remove = observed
        .keys()
        .filter(|k| !desired.contains_key(*k))
        .cloned()
        .collect();
    (set, remove)
}

/// Drops AWS-reserved tags (`aws:…`), which no one can set or remove.
pub fn user_tags(tags: impl IntoIterator<Item = (String, String)>) -> Tags {
    tags.into_iter()
        .filter(|(k, _)| !k.starts_with("aws:"))
        .collect()
}

/// Maps the outcome of an SDK waiter to the driver's error type: a failure state is terminal (AWS says
/// the resource cannot get there), running out of time is transient (the next pass looks again). On
/// success, the answer of the poll that succeeded (`None` when an error answer was the success, as for a
/// "not exists" waiter).
pub fn waited<O, E>(
    result: Result<
        aws_smithy_runtime_api::client::waiters::FinalPoll<
            O,
            aws_smithy_runtime_api::client::result::SdkError<
                E,
                aws_smithy_runtime_api::http::Response,
            >,
        >,
        aws_smithy_runtime_api::client::waiters::error::WaiterError<O, E>,
    >,
    id: &ResourceId,
    call: &str,
    limit: Duration,
    failure: impl FnOnce(&O) -> String,
) -> Result<Option<O>, AwsError>
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata
        + std::error::Error
        + Send
        + Sync
        + 'static,
{
    use crate::aws::ResultExt;
    use aws_smithy_runtime_api::client::waiters::error::WaiterError;
    match result {
        Ok(success) => Ok(success.into_result().ok()),
        Err(WaiterError::ExceededMaxWait(_)) => Err(AwsError::transient(
            id,
            call,
            format!("not ready after {} s", limit.as_secs()),
        )),
        Err(WaiterError::FailureState(state)) => {
            let message = match state.final_poll().as_result() {
                Ok(output) => failure(output),
                Err(e) => format!("{e}"),
            };
            Err(AwsError::terminal(id, call, message))
        }
        Err(WaiterError::OperationFailed(failed)) => {
            Err::<Option<O>, _>(failed.into_error()).context(id, call)
        }
        Err(other) => Err(AwsError::terminal(id, call, format!("{other}"))),
    }
}

/// Polls `check` until it answers `Some`, backing off from 250 ms to 5 s, for at most `limit`; then a
/// transient error saying what was still awaited (the next pass looks again). For states the SDK has no
/// waiter for (DynamoDB index status).
pub async fn poll<T, F, Fut>(
    id: &ResourceId,
    call: &str,
    limit: Duration,
    mut check: F,
) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Result<T, String>, AwsError>>,
{
    use backon::Retryable;
    let pending = std::sync::Mutex::new(String::new());
    let attempt = || {
        let next = check();
        let pending = &pending;
        async move {
            match next.await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(state)) => {
                    *pending.lock().expect("poll state") = state;
                    Err(None)
                }
                Err(e) => Err(Some(e)),
            }
        }
    };
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(5))
        .with_total_delay(Some(limit))
        .without_max_times();
    match attempt.retry(backoff).when(|e| e.is_none()).await {
        Ok(value) => Ok(value),
        Err(Some(e)) => Err(e),
        Err(None) => Err(AwsError::transient(
            id,
            call,
            format!(
                "not ready after {} s: {}",
                limit.as_secs(),
                pending.lock().expect("poll state")
            ),
        )),
    }
}

/// How long a new role may take to become assumable before a driver hands back a transient error.
pub const ROLE_PROPAGATION: Duration = Duration::from_secs(30);

/// Runs `call`, retrying while the role it passes is not assumable yet (IAM propagation), for at most
/// `window`; if it still is not, the error stays transient (the engine comes back later) and says so.
pub async fn while_role_propagates<T, F, Fut>(window: Duration, call: F) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AwsError>>,
{
    use backon::Retryable;
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay((window / 60).max(Duration::from_millis(10)))
        .with_max_delay(window / 4)
        .with_max_times(16)
        .with_total_delay(Some(window))
        .with_jitter();
    call.retry(backoff)
        .when(AwsError::is_role_propagation)
        .await
        .map_err(|mut e| {
            if e.is_role_propagation() {
                e.message = format!(
                    "{} (still not assumable after {} s of retries; the role may be new)",
                    e.message,
                    window.as_secs()
                );
            }
            e
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_reports_each_map_key_and_ignores_number_form() {
        let mut out = Vec::new();
        diff_values(
            &json!({"memoryMb": 512, "rate": 100, "environment": {"A": "1", "B": "2"}}),
            &json!({"memoryMb": 256, "rate": 100.0, "environment": {"A": "1", "C": "3"}}),
            "",
            &mut out,
        );
        let fields: Vec<&str> = out.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["environment.B", "environment.C", "memoryMb"]);
        assert_eq!(out[2].expected, json!(512));
        assert_eq!(out[2].actual, json!(256));
    }

    fn not_assumable() -> AwsError {
        AwsError {
            resource: "StateMachine x".into(),
            call: "states:CreateStateMachine".into(),
            code: Some("AccessDeniedException".into()),
            message: "is not authorized to assume the provided role".into(),
            class: crate::aws::ErrorClass::Transient,
        }
    }

    #[tokio::test]
    async fn role_propagation_is_retried_within_a_bounded_window() {
        let window = Duration::from_millis(600);
        let mut attempts = 0;
        let started = std::time::Instant::now();
        let result: Result<(), AwsError> = while_role_propagates(window, || {
            attempts += 1;
            async { Err(not_assumable()) }
        })
        .await;
        let e = result.expect_err("never assumable");
        assert!(e.is_transient());
        assert!(e.message.contains("still not assumable"), "{}", e.message);
        assert!(attempts > 1, "retried");
        assert!(
            started.elapsed() <= window * 2,
            "bounded: {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn other_errors_are_not_retried_while_waiting_for_a_role() {
        let mut attempts = 0;
        let result: Result<(), AwsError> = while_role_propagates(ROLE_PROPAGATION, || {
            attempts += 1;
            async {
                Err(AwsError::terminal(
                    "StateMachine x",
                    "states:CreateStateMachine",
                    "bad",
                ))
            }
        })
        .await;
        assert!(!result.expect_err("fails").is_transient());
        assert_eq!(attempts, 1);
    }

    #[test]
    fn tag_delta_sets_changed_and_removes_foreign() {
        let desired: Tags = [("a".into(), "1".into()), ("b".into(), "2".into())].into();
        let observed: Tags = [
            ("a".into(), "1".into()),
            ("b".into(), "x".into()),
            ("c".into(), "3".into()),
        ]
        .into();
        let (set, remove) = tag_delta(&desired, &observed);
        assert_eq!(set, [("b".to_string(), "2".to_string())].into());
        assert_eq!(remove, vec!["c".to_string()]);
    }
}
