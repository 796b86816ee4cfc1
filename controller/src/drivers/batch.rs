//! A walk's batched reads: where one AWS call can read several of a stack's resources, the first driver
//! that needs one of them reads them all, and the others take their part of that answer instead of a call
//! of their own. Per kind:
//!
//! - **Alarms**: one `DescribeAlarms` with every alarm name of the stack (up to 100 per call) instead of
//!   one per alarm; each alarm's tags are still read on its own (`ListTagsForResource`: CloudWatch has no
//!   batch tag read), so ownership stays proven by the owner tag of that very alarm.
//! - **Log groups**: one `DescribeLogGroups` by the prefix the stack's function log groups share
//!   (`/aws/lambda/tap-<suffix>-`); tags are read per group, as for alarms.
//! - **ECR repositories**: one `DescribeRepositories` with every repository name of the stack (the call
//!   takes up to 100) instead of one per repository. ECR fails the whole call when one name does not
//!   exist, so on a stack still being built the batch is no answer and each repository reads on its own;
//!   policy and tags stay one read each per repository.
//! - **Lambda permissions**: the policy of a function (`GetPolicy`) is read once for all its permission
//!   statements, and the function's tags (its owner tag proves the statements ours) are the ones the
//!   function's own `GetFunction` read earlier in the same walk (a permission depends on its function).
//!
//! - **Tags**: one `GetResources` of the Resource Groups Tagging API, filtered on this pipeline's owner
//!   tag, lists the tags of every resource of the stack it covers (alarms, log groups, tables, the
//!   bucket, the topic, the queue, the state machine, the repositories) instead of one tag read each. A
//!   resource the answer does not list (untagged, someone else's, not covered by the API, or tagged too
//!   recently to show: the API is eventually consistent) reads its own tags, so the answer is only ever
//!   used to confirm tags that the resource carries, and a foreign namesake is never taken for ours. A
//!   stale answer cannot lead to a write: a walk that writes observes again without the batch (below).
//!
//! A converge walk skips nothing: every field of every resource is read at every walk, only in fewer
//! calls. (A teardown reads less of each resource: `Driver::observe_owner`.)
//!
//! **Freshness.** An answer is served only while this walk has not begun to write: the first write of a
//! turn ([`Batch::writing`], set before it asks for the stack's lock) ends it, and from then on every
//! read is a call of its own again. A turn that took a batched answer before the lock and then wants to
//! write was observed before the lock, so the engine observes it again (under the lock, without the
//! batch), unless no one else can have written since the walk began (see `engine::lock`). A failed batch call is not an answer: each driver then reads its own resource, so an error is
//! reported on the resource it concerns.
//!
//! **Teardown.** A teardown takes the stack's lock before it reads anything, so no other walk of
//! ours writes while it runs; its own deletes only ever remove what the listings hold. Its batch
//! ([`Batch::for_teardown`]) therefore keeps serving the *listings* (alarms, log groups, repositories,
//! REST APIs, a function's policy) after its first delete: an entry deleted since is gone when its
//! own read or delete is made (not-found is success), and a REST API's id is never reused. It never
//! serves *tags*: a teardown proves each resource ours by a tag read of its own, just before it
//! deletes it, so a namesake made under the same ARN since the listing is never taken for ours.
//!
//! **Account-wide listings.** Three reads list a whole account and region, every pipeline's resources
//! in one answer; the engine keeps one [`AccountListings`] per account and region, and the walks of all
//! its pipelines share their answers:
//!
//! - **Roles**: one `GetAccountAuthorizationDetails` (roles only) carries every role's trust policy,
//!   inline policy documents, attached policies and tags: the four reads a role costs on its own
//!   (`GetRole`, `ListRolePolicies`, `GetRolePolicy`, `ListAttachedRolePolicies`) in one call for all.
//!   Only `tap-` roles are kept.
//! - **REST APIs**: one `GetRestApis` (the API itself, its stage and its usage plan each look the API
//!   up by name when they have no outputs to go by: a teardown, a resync). Which one is ours is still
//!   decided by the owner tag each API carries.
//! - **Usage plans**: one `GetUsagePlans`, likewise.
//!
//! A walk takes an answer read at or after its *as-of* instant ([`Batch::for_stack`]): by default the
//! walk's start, so nothing it reads is older than the walk; the controller's periodic resync and a
//! timestamped reconcile request set it earlier (see `k8s::reconcile`). The first walk that needs a
//! listing no answer serves reads it, and every walk running then takes that answer too. An answer is
//! kept only while a walk that took it runs (the listings hold it weakly): a listing of hundreds of
//! roles does not outlive the resync wave that read it.
//!
//! An answer read **before this walk began** (another walk's, *borrowed*) only ever confirms: a turn
//! that used one and finds its resource missing, not ours, or different from the spec observes it
//! again without borrowed answers ([`observing`]), before it reports, remembers or writes anything. A
//! stale borrowed answer can therefore hide a change made after it was read, until the next walk, but
//! never cause a write, a held correction or a reported drift.
//!
//! The batch lives in a task-local value for the duration of a walk ([`scope`]); outside a walk (driver
//! tests) there is none and every driver reads on its own.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use aws_sdk_apigateway::types::{RestApi, UsagePlan};
use aws_sdk_cloudwatch::types::MetricAlarm;
use aws_sdk_cloudwatchlogs::types::LogGroup;
use aws_sdk_ecr::types::Repository;
use aws_sdk_iam::types::{EntityType, RoleDetail};
use aws_sdk_resourcegroupstagging::types::TagFilter;
use tokio::sync::OnceCell;

use crate::aws::{AwsError, Optional, ResultExt};
use crate::desired::{names, Kind, Stack, Tags, OWNER_TAG};

use super::user_tags;

use super::Ctx;

/// `DescribeAlarms` takes at most this many names.
const ALARM_NAMES_PER_CALL: usize = 100;
/// `DescribeRepositories` takes at most this many names.
const REPOSITORY_NAMES_PER_CALL: usize = 100;
/// `GetAccountAuthorizationDetails` answers at most this many entities per page.
const AUTHORIZATION_DETAILS_PER_PAGE: i32 = 1000;
/// `GetResources` answers at most this many resources per page.
const TAGGED_RESOURCES_PER_PAGE: i32 = 100;

type Shared<T> = OnceCell<Option<Arc<T>>>;

/// The batched reads of one walk of one stack.
#[derive(Default)]
pub struct Batch {
    alarm_names: Vec<String>,
    alarms: Shared<HashMap<String, MetricAlarm>>,
    log_group_prefix: Option<String>,
    log_groups: Shared<HashMap<String, LogGroup>>,
    repository_names: Vec<String>,
    repositories: Shared<HashMap<String, Repository>>,
    /// Function name → its policy document (`None`: it has none).
    policies: Mutex<HashMap<String, Arc<Shared<Option<String>>>>>,
    /// ARN → tags of every resource carrying this pipeline's owner tag, from the Tagging API.
    tags: Shared<HashMap<String, Tags>>,
    /// Function name → the tags its `GetFunction` read in this walk.
    function_tags: Mutex<HashMap<String, Tags>>,
    /// The account-wide listings this walk shares with the walks of other pipelines.
    account: Arc<AccountListings>,
    window: Window,
    /// The account-wide answer this walk uses, per listing, chosen at its first use.
    roles: OnceLock<Arc<Answer<HashMap<String, RoleDetail>>>>,
    rest_apis: OnceLock<Arc<Answer<Vec<RestApi>>>>,
    usage_plans: OnceLock<Arc<Answer<Vec<UsagePlan>>>>,
    writing: AtomicBool,
    /// A teardown's batch: listings outlive its writes, tags are never served (see the module doc).
    teardown: bool,
}

impl Batch {
    /// The batches a walk of `stack` can use: its own, and `account`'s answers read at or after `as_of`
    /// (at the latest, now).
    pub fn for_stack(stack: &Stack, account: Arc<AccountListings>, as_of: Instant) -> Self {
        Self {
            account,
            window: Window::since(as_of),
            ..Self::of(stack)
        }
    }

    fn of(stack: &Stack) -> Self {
        let names_of = |kind: Kind| {
            stack
                .resources
                .iter()
                .filter(|r| r.id.kind == kind)
                .map(|r| r.id.name.clone())
                .collect()
        };
        let alarm_names = names_of(Kind::Alarm);
        let repository_names = names_of(Kind::Repository);
        let prefix = names::function_log_group(&stack.suffix, "");
        let log_group_prefix = stack
            .resources
            .iter()
            .any(|r| r.id.kind == Kind::LogGroup && r.id.name.starts_with(&prefix))
            .then_some(prefix);
        Self {
            alarm_names,
            log_group_prefix,
            repository_names,
            ..Default::default()
        }
    }

    /// The batches a teardown of `stack` can use (see the module doc): account-wide listings of its own,
    /// read under its lock, shared with no other walk.
    pub fn for_teardown(stack: &Stack) -> Self {
        Self {
            teardown: true,
            ..Self::of(stack)
        }
    }

    /// The walk is about to write (it asks for the stack's lock): no batched answer from now on, but
    /// for a teardown's listings.
    pub fn writing(&self) {
        self.writing.store(true, Ordering::SeqCst);
    }

    fn serves_listings(&self) -> bool {
        self.teardown || !self.writing.load(Ordering::SeqCst)
    }

    fn serves_tags(&self) -> bool {
        !self.teardown && !self.writing.load(Ordering::SeqCst)
    }
}

/// Which account-wide answers serve a walk.
struct Window {
    /// Answers read at or after this instant serve the walk.
    as_of: Instant,
    /// When the walk began: an answer read before is borrowed (it only confirms).
    began: Instant,
}

impl Window {
    /// A walk beginning now that takes answers read since `as_of` (at the latest, now).
    fn since(as_of: Instant) -> Self {
        let began = Instant::now();
        Self {
            as_of: as_of.min(began),
            began,
        }
    }
}

impl Default for Window {
    fn default() -> Self {
        Self::since(Instant::now())
    }
}

/// The account-wide listings of one account and region (see the module doc), shared by every walk
/// there.
#[derive(Default)]
pub struct AccountListings {
    /// `tap-` roles by name.
    roles: Listing<HashMap<String, RoleDetail>>,
    rest_apis: Listing<Vec<RestApi>>,
    usage_plans: Listing<Vec<UsagePlan>>,
}

/// The newest answer of one account-wide listing, while a walk that took it runs.
struct Listing<T> {
    newest: Mutex<Weak<Answer<T>>>,
}

impl<T> Default for Listing<T> {
    fn default() -> Self {
        Self {
            newest: Mutex::new(Weak::new()),
        }
    }
}

/// One reading of a listing: when it was asked for, and (once read) the answer.
struct Answer<T> {
    asked: Instant,
    value: Shared<T>,
}

impl<T> Listing<T> {
    /// The newest answer if it was asked for at or after `as_of`, else a new one (read by whoever
    /// first awaits it).
    fn answer(&self, as_of: Instant) -> Arc<Answer<T>> {
        let mut newest = self.newest.lock().expect("listing lock");
        if let Some(answer) = newest.upgrade().filter(|a| a.asked >= as_of) {
            return answer;
        }
        let answer = Arc::new(Answer {
            asked: Instant::now(),
            value: Shared::default(),
        });
        *newest = Arc::downgrade(&answer);
        answer
    }
}

tokio::task_local! {
    static BATCH: Arc<Batch>;
    /// The turn being observed (see [`observing`]).
    static TURN: Turn;
}

/// What a turn's observation took from borrowed answers.
struct Turn {
    /// Whether it may take borrowed answers at all.
    borrows: bool,
    borrowed: AtomicBool,
}

/// Runs a turn's observation, taking borrowed answers only if `borrows`; says whether it took any.
/// Such an observation only confirms: anything but "ours, as specified" is observed again with
/// `borrows: false` (see the module doc).
pub async fn observing<F: Future>(borrows: bool, work: F) -> (F::Output, bool) {
    let turn = Turn {
        borrows,
        borrowed: AtomicBool::new(false),
    };
    TURN.scope(turn, async {
        let out = work.await;
        let borrowed = TURN.with(|t| t.borrowed.load(Ordering::SeqCst));
        (out, borrowed)
    })
    .await
}

/// The account-wide `answer` this walk uses for one listing (its `slot`), read by `fetch` if no one
/// has yet; `None` when it failed, or when it was read before the walk began and the current turn
/// takes no borrowed answers.
async fn account_wide<T, F, Fut>(
    batch: &Batch,
    slot: &OnceLock<Arc<Answer<T>>>,
    listing: &Listing<T>,
    fetch: F,
) -> Option<Arc<T>>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, AwsError>>,
{
    let answer = slot
        .get_or_init(|| listing.answer(batch.window.as_of))
        .clone();
    if answer.asked < batch.window.began {
        // Outside a turn's observation (a create's own lookup) nothing is borrowed.
        let borrows = TURN
            .try_with(|t| {
                if t.borrows {
                    t.borrowed.store(true, Ordering::SeqCst);
                }
                t.borrows
            })
            .unwrap_or(false);
        if !borrows {
            return None;
        }
    }
    shared(&answer.value, fetch).await
}

/// Runs a walk with `batch` as its batched reads.
pub async fn scope<F: Future>(batch: Arc<Batch>, work: F) -> F::Output {
    BATCH.scope(batch, work).await
}

/// Tells this walk's batch, if any, that the walk is about to write.
pub fn writing() {
    let _ = BATCH.try_with(|b| b.writing());
}

/// The walk's batch, while `serves` says it may answer.
fn serving(serves: fn(&Batch) -> bool) -> Option<Arc<Batch>> {
    BATCH.try_with(|b| b.clone()).ok().filter(|b| serves(b))
}

/// The walk's batch, while it may serve listings.
fn listings() -> Option<Arc<Batch>> {
    serving(Batch::serves_listings)
}

/// The walk's batch, while it may serve tags.
fn tagging() -> Option<Arc<Batch>> {
    serving(Batch::serves_tags)
}

/// The answer of a batch call, or `None` when it failed (each driver then reads on its own).
async fn shared<T, F, Fut>(cell: &Shared<T>, fetch: F) -> Option<Arc<T>>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, AwsError>>,
{
    cell.get_or_init(|| async {
        match fetch().await {
            Ok(value) => Some(Arc::new(value)),
            Err(e) => {
                tracing::debug!(error = %e, "batched read failed: each resource reads on its own");
                None
            }
        }
    })
    .await
    .clone()
}

/// A batch answer's items keyed by their names (an item without one cannot be asked for).
fn by_name<T>(
    items: impl IntoIterator<Item = T>,
    name: impl Fn(&T) -> Option<&str>,
) -> impl Iterator<Item = (String, T)> {
    items
        .into_iter()
        .filter_map(move |item| Some((name(&item)?.to_string(), item)))
}

/// Alarm `ctx.name()` from the stack's one `DescribeAlarms`: `Some(None)` when it does not exist,
/// `None` when there is no batched answer.
pub async fn alarm(ctx: &Ctx<'_>) -> Option<Option<MetricAlarm>> {
    let batch = listings()?;
    if !batch.alarm_names.iter().any(|n| n == ctx.name()) {
        return None;
    }
    let all = shared(&batch.alarms, || async {
        let mut found = HashMap::new();
        for names in batch.alarm_names.chunks(ALARM_NAMES_PER_CALL) {
            let alarms: Vec<MetricAlarm> = ctx
                .aws
                .cloudwatch
                .describe_alarms()
                .set_alarm_names(Some(names.to_vec()))
                .max_records(ALARM_NAMES_PER_CALL as i32)
                .into_paginator()
                .send()
                .try_collect()
                .await
                .context(ctx.id, "cloudwatch:DescribeAlarms")?
                .into_iter()
                .flat_map(|page| page.metric_alarms.unwrap_or_default())
                .collect();
            found.extend(by_name(alarms, MetricAlarm::alarm_name));
        }
        Ok(found)
    })
    .await?;
    Some(all.get(ctx.name()).cloned())
}

/// Repository `ctx.name()` from the stack's one `DescribeRepositories`, or `None` when there is no
/// batched answer (one of the stack's repositories does not exist yet, or the call failed).
pub async fn repository(ctx: &Ctx<'_>) -> Option<Repository> {
    let batch = listings()?;
    if !batch.repository_names.iter().any(|n| n == ctx.name()) {
        return None;
    }
    let all = shared(&batch.repositories, || async {
        let mut found = HashMap::new();
        for names in batch.repository_names.chunks(REPOSITORY_NAMES_PER_CALL) {
            let described = ctx
                .aws
                .ecr
                .describe_repositories()
                .set_repository_names(Some(names.to_vec()))
                .send()
                .await
                .context(ctx.id, "ecr:DescribeRepositories")?;
            found.extend(by_name(
                described.repositories.unwrap_or_default(),
                Repository::repository_name,
            ));
        }
        Ok(found)
    })
    .await?;
    all.get(ctx.name()).cloned()
}

/// Log group `ctx.name()` from the stack's one `DescribeLogGroups` by prefix: `Some(None)` when it does
/// not exist, `None` when there is no batched answer (or the group is not under the prefix).
pub async fn log_group(ctx: &Ctx<'_>) -> Option<Option<LogGroup>> {
    let batch = listings()?;
    let prefix = batch.log_group_prefix.as_deref()?;
    if !ctx.name().starts_with(prefix) {
        return None;
    }
    let all = shared(&batch.log_groups, || async {
        let groups: Vec<LogGroup> = ctx
            .aws
            .logs
            .describe_log_groups()
            .log_group_name_prefix(prefix)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .context(ctx.id, "logs:DescribeLogGroups")?;
        Ok(by_name(groups, LogGroup::log_group_name).collect::<HashMap<_, _>>())
    })
    .await?;
    Some(all.get(ctx.name()).cloned())
}

/// Every REST API of the account: the account-wide `GetRestApis` answer, or one read for this turn
/// alone when no answer serves it.
pub async fn rest_apis(ctx: &Ctx<'_>) -> Result<Arc<Vec<RestApi>>, AwsError> {
    let read = || super::apigateway::list_rest_apis(ctx);
    listed_or_read(|batch| (&batch.rest_apis, &batch.account.rest_apis), read).await
}

/// Every usage plan of the account, likewise from `GetUsagePlans`.
pub async fn usage_plans(ctx: &Ctx<'_>) -> Result<Arc<Vec<UsagePlan>>, AwsError> {
    let read = || super::apigateway::list_usage_plans(ctx);
    listed_or_read(
        |batch| (&batch.usage_plans, &batch.account.usage_plans),
        read,
    )
    .await
}

/// The walk's answer of the listing `which` picks (see [`account_wide`]), or `read`'s own when none
/// serves.
async fn listed_or_read<T, F, Fut>(
    which: impl Fn(&Batch) -> (&OnceLock<Arc<Answer<T>>>, &Listing<T>),
    read: F,
) -> Result<Arc<T>, AwsError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, AwsError>>,
{
    if let Some(batch) = listings() {
        let (slot, listing) = which(&batch);
        if let Some(listed) = account_wide(&batch, slot, listing, &read).await {
            return Ok(listed);
        }
    }
    Ok(Arc::new(read().await?))
}

/// Role `ctx.name()` from the account's one `GetAccountAuthorizationDetails` (roles only), with its
/// trust policy, inline policy documents, attached policies and tags: `Some(None)` when the account
/// has no such role, `None` when there is no batched answer. A tag answer: never served to a teardown.
pub async fn role(ctx: &Ctx<'_>) -> Option<Option<RoleDetail>> {
    let batch = tagging()?;
    let all = account_wide(&batch, &batch.roles, &batch.account.roles, || async {
        let mut pages = ctx
            .aws
            .iam
            .get_account_authorization_details()
            .filter(EntityType::Role)
            .max_items(AUTHORIZATION_DETAILS_PER_PAGE)
            .into_paginator()
            .send();
        let ours = names::prefix("");
        let mut roles = HashMap::new();
        // Each page is filtered as it arrives: the account's other roles are never all held at once.
        while let Some(page) = pages.next().await {
            let page = page.context(ctx.id, "iam:GetAccountAuthorizationDetails")?;
            roles.extend(
                page.role_detail_list
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|role| {
                        let name = role.role_name()?.to_string();
                        name.starts_with(&ours).then_some((name, role))
                    }),
            );
        }
        Ok(roles)
    })
    .await?;
    Some(all.get(ctx.name()).cloned())
}

/// Log group ARNs are written with and without a trailing `:*`; the Tagging API lists them without.
fn tagged_arn_key(arn: &str) -> &str {
    arn.strip_suffix(":*").unwrap_or(arn)
}

/// The tags of resource `arn`: from the stack's one `GetResources` by owner tag when that answer lists
/// it, else `read_own()`, the resource's own tag read.
pub async fn tags_or<F, Fut>(ctx: &Ctx<'_>, arn: &str, read_own: F) -> Result<Tags, AwsError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Tags, AwsError>>,
{
    match listed_tags(ctx, arn).await {
        Some(tags) => Ok(tags),
        None => read_own().await,
    }
}

/// The tags of resource `arn` from the stack's one `GetResources` by owner tag, or `None` when that
/// answer does not list it or there is none.
async fn listed_tags(ctx: &Ctx<'_>, arn: &str) -> Option<Tags> {
    let batch = tagging()?;
    let all = shared(&batch.tags, || async {
        let pages: Vec<_> = ctx
            .aws
            .tagging
            .get_resources()
            .tag_filters(
                TagFilter::builder()
                    .key(OWNER_TAG)
                    .values(ctx.owner)
                    .build(),
            )
            .resources_per_page(TAGGED_RESOURCES_PER_PAGE)
            .into_paginator()
            .send()
            .try_collect()
            .await
            .context(ctx.id, "tagging:GetResources")?;
        Ok(pages
            .into_iter()
            .flat_map(|page| page.resource_tag_mapping_list.unwrap_or_default())
            .filter_map(|mapping| {
                let arn = tagged_arn_key(mapping.resource_arn()?).to_string();
                let tags = user_tags(
                    mapping
                        .tags
                        .unwrap_or_default()
                        .into_iter()
                        .map(|t| (t.key, t.value)),
                );
                Some((arn, tags))
            })
            .collect::<HashMap<_, _>>())
    })
    .await?;
    all.get(tagged_arn_key(arn)).cloned()
}

/// The policy document of `function` (`Ok(None)`: it has none), read once per walk for all its
/// permission statements while the batch serves; otherwise one `GetPolicy` of its own.
pub async fn function_policy(ctx: &Ctx<'_>, function: &str) -> Result<Option<String>, AwsError> {
    let get = || async {
        Ok(ctx
            .aws
            .lambda
            .get_policy()
            .function_name(function)
            .send()
            .await
            .context(ctx.id, "lambda:GetPolicy")
            .optional()?
            .and_then(|p| p.policy))
    };
    let Some(batch) = listings() else {
        return get().await;
    };
    let cell = batch
        .policies
        .lock()
        .expect("batch policies")
        .entry(function.to_string())
        .or_default()
        .clone();
    match shared(&cell, get).await {
        Some(policy) => Ok((*policy).clone()),
        None => get().await,
    }
}

/// Records the tags `GetFunction` read for `function` in this walk.
pub fn note_function_tags(function: &str, tags: &BTreeMap<String, String>) {
    if let Some(batch) = tagging() {
        batch
            .function_tags
            .lock()
            .expect("batch function tags")
            .insert(function.to_string(), tags.clone());
    }
}

/// The tags this walk's `GetFunction` read for `function`, while the batch serves.
pub fn function_tags(function: &str) -> Option<Tags> {
    tagging()?
        .function_tags
        .lock()
        .expect("batch function tags")
        .get(function)
        .cloned()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[tokio::test]
    async fn a_walk_stops_at_its_first_write_a_teardown_keeps_listings_never_tags() {
        scope(Arc::new(Batch::default()), async {
            assert!(listings().is_some() && tagging().is_some());
            writing();
            assert!(
                listings().is_none() && tagging().is_none(),
                "after its first write a converge walk reads on its own"
            );
        })
        .await;
        let teardown = Batch {
            teardown: true,
            ..Batch::default()
        };
        scope(Arc::new(teardown), async {
            assert!(listings().is_some());
            assert!(
                tagging().is_none(),
                "a teardown reads each resource's tags itself"
            );
            writing();
            assert!(
                listings().is_some(),
                "a teardown's listings outlive its deletes"
            );
            assert!(tagging().is_none());
        })
        .await;
        assert!(listings().is_none(), "outside a walk there is no batch");
    }

    /// A walk of one pipeline, sharing `account`'s listings, that takes answers read at or after
    /// `as_of`.
    fn walk(account: &Arc<AccountListings>, as_of: Instant) -> Batch {
        Batch {
            account: account.clone(),
            window: Window::since(as_of),
            ..Batch::default()
        }
    }

    /// Reads the REST API listing as `batch`'s walk would, counting the calls in `reads`.
    async fn rest_apis_of(batch: &Batch, reads: &AtomicUsize, answer: &str) -> Option<Vec<String>> {
        let listed = account_wide(
            batch,
            &batch.rest_apis,
            &batch.account.rest_apis,
            || async {
                reads.fetch_add(1, Ordering::SeqCst);
                Ok(vec![RestApi::builder().name(answer).build()])
            },
        )
        .await?;
        Some(
            listed
                .iter()
                .filter_map(|a| a.name().map(str::to_string))
                .collect(),
        )
    }

    #[tokio::test]
    async fn walks_share_an_account_wide_answer_read_since_their_as_of_and_borrowed_ones_only_confirm(
    ) {
        let account = Arc::new(AccountListings::default());
        let reads = AtomicUsize::new(0);
        let start = Instant::now();

        let first = walk(&account, start);
        let read = rest_apis_of(&first, &reads, "first").await;
        assert_eq!(
            read,
            Some(vec!["first".to_string()]),
            "a walk's own answer, outside any turn"
        );
        assert_eq!(reads.load(Ordering::SeqCst), 1);

        // A walk that began later and accepts answers since `start` borrows the first walk's answer,
        // but only inside a turn that takes borrowed answers, and says so.
        let later = walk(&account, start);
        let (borrowed_read, borrowed) =
            observing(true, rest_apis_of(&later, &reads, "second")).await;
        assert_eq!(borrowed_read, Some(vec!["first".to_string()]));
        assert!(borrowed, "an answer read before the walk began is borrowed");
        let (again, borrowed) = observing(false, rest_apis_of(&later, &reads, "second")).await;
        assert_eq!(
            again, None,
            "a turn that takes no borrowed answer reads on its own"
        );
        assert!(!borrowed);
        assert_eq!(rest_apis_of(&later, &reads, "second").await, None);
        assert_eq!(reads.load(Ordering::SeqCst), 1, "nothing was read again");

        // A walk asking for answers read since now reads its own, and later walks share that one.
        let fresh = walk(&account, Instant::now());
        let (own, borrowed) = observing(true, rest_apis_of(&fresh, &reads, "third")).await;
        assert_eq!(own, Some(vec!["third".to_string()]));
        assert!(!borrowed, "an answer read during the walk is its own");
        assert_eq!(reads.load(Ordering::SeqCst), 2);

        // Answers live only while a walk holds them: once every walk is done, none is kept.
        drop((first, later, fresh));
        let after = walk(&account, start);
        assert_eq!(
            rest_apis_of(&after, &reads, "fourth").await,
            Some(vec!["fourth".to_string()])
        );
        assert_eq!(reads.load(Ordering::SeqCst), 3);
    }
}
