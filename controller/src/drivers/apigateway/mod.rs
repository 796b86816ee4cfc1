//! API Gateway: the REST API (`POST /upload` → Lambda proxy, request validator and model), its stage, the
//! API key and the usage plan. API Gateway does not keep names unique, so each kind is found by name and
//! then by ownership tag: of several same-named ones, the one this pipeline owns is meant.
//!
//! The API key's value is only ever put in `Outputs.secret`; it never reaches an error or a log line.

mod api_key;
mod rest_api;
mod stage;
mod usage_plan;

pub use api_key::ApiKeys;
pub use rest_api::RestApis;
pub use stage::Stages;
pub use usage_plan::UsagePlans;

use std::collections::HashMap;

use aws_sdk_apigateway::types::{Op, PatchOperation, RestApi, UsagePlan};

use crate::aws::{AwsError, ResultExt};
use crate::desired::{Kind, Tags, OWNER_TAG};

use super::{Ctx, TagApi};

fn patch(op: Op, path: &str, value: Option<String>) -> PatchOperation {
    PatchOperation::builder()
        .op(op)
        .path(path)
        .set_value(value)
        .build()
}

fn replace(path: &str, value: impl ToString) -> PatchOperation {
    patch(Op::Replace, path, Some(value.to_string()))
}

/// Of the same-named candidates, the one meant: the oldest `owner` owns, else the oldest owned by any
/// pipeline, else the oldest (`observe` reports it and the engine's ownership check decides: a foreign
/// one is a Conflict). When `owner` owns several (a create repeated after its answer was lost), the others
/// are `copies`, to be deleted.
pub(super) struct Picked<T> {
    pub meant: Option<T>,
    pub copies: Vec<T>,
    /// How many same-named candidates there were besides `meant` and `copies` (another owner's, or
    /// untagged): an untagged `meant` is then not the only one that could be meant, so not adoptable.
    pub namesakes: usize,
}

fn pick<T>(
    mut candidates: Vec<T>,
    owner: &str,
    tags: impl Fn(&T) -> Option<&HashMap<String, String>>,
    created: impl Fn(&T) -> Option<(i64, u32)>,
) -> Picked<T> {
    let owned_by = |c: &T| tags(c).and_then(|t| t.get(OWNER_TAG)).cloned();
    candidates.sort_by_key(|c| {
        let rank = match owned_by(c) {
            Some(o) if o == owner => 0,
            Some(_) => 1,
            None => 2,
        };
        (rank, created(c))
    });
    let total = candidates.len();
    let mut rest = candidates.into_iter();
    let meant = rest.next();
    let copies: Vec<T> = match &meant {
        Some(m) if owned_by(m).as_deref() == Some(owner) => rest
            .filter(|c| owned_by(c).as_deref() == Some(owner))
            .collect(),
        _ => Vec::new(),
    };
    Picked {
        namesakes: total.saturating_sub(1 + copies.len()),
        meant,
        copies,
    }
}

/// A create call API Gateway does not make idempotent (`CreateRestApi`, `CreateApiKey`,
/// `CreateUsagePlan`, `CreateDeployment`) runs without the SDK's retries: a retry after an answer lost
/// in transit would make a second one. After a failure whose outcome is unknown, the driver looks for
/// what the call may have made before anything is repeated; copies that still appear are deleted.
fn once() -> aws_sdk_apigateway::config::Builder {
    aws_sdk_apigateway::config::Builder::default()
        .retry_config(aws_config::retry::RetryConfig::disabled())
}

/// API Gateway answers at most this many REST APIs or usage plans per page.
const ITEMS_PER_PAGE: i32 = 500;

/// Every REST API of the account (names are not unique): one `GetRestApis` listing.
pub(crate) async fn list_rest_apis(ctx: &Ctx<'_>) -> Result<Vec<RestApi>, AwsError> {
    ctx.aws
        .apigateway
        .get_rest_apis()
        .limit(ITEMS_PER_PAGE)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .context(ctx.id, "apigateway:GetRestApis")
}

/// Every usage plan of the account: one `GetUsagePlans` listing.
pub(crate) async fn list_usage_plans(ctx: &Ctx<'_>) -> Result<Vec<UsagePlan>, AwsError> {
    ctx.aws
        .apigateway
        .get_usage_plans()
        .limit(ITEMS_PER_PAGE)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .context(ctx.id, "apigateway:GetUsagePlans")
}

/// The REST API named `name` that `ctx.owner` owns (or, failing that, a same-named other one), and the
/// other copies it owns.
async fn find_rest_apis(ctx: &Ctx<'_>, name: &str) -> Result<Picked<RestApi>, AwsError> {
    let named = super::batch::rest_apis(ctx)
        .await?
        .iter()
        .filter(|a| a.name() == Some(name))
        .cloned()
        .collect();
    Ok(pick(named, ctx.owner, RestApi::tags, |a| {
        a.created_date().map(|d| (d.secs(), d.subsec_nanos()))
    }))
}

/// The REST API named `name` meant (see [`find_rest_apis`]).
async fn find_rest_api(ctx: &Ctx<'_>, name: &str) -> Result<Option<RestApi>, AwsError> {
    Ok(find_rest_apis(ctx, name).await?.meant)
}

/// The id of REST API `name`: from the dependency's outputs, else looked up (teardown and dry runs walk
/// without them).
async fn rest_api_id(ctx: &Ctx<'_>, name: &str) -> Result<Option<String>, AwsError> {
    if let Some(id) = ctx.dep(Kind::RestApi, name).and_then(|o| o.id.clone()) {
        return Ok(Some(id));
    }
    Ok(find_rest_api(ctx, name)
        .await?
        .and_then(|a| a.id().map(str::to_string)))
}

/// The id of REST API `name`, which must exist (a stage or plan is made after it).
async fn require_rest_api_id(ctx: &Ctx<'_>, name: &str) -> Result<String, AwsError> {
    rest_api_id(ctx, name).await?.ok_or_else(|| {
        AwsError::transient(
            ctx.id,
            "apigateway:GetRestApis",
            format!("REST API {name} does not exist yet"),
        )
    })
}

/// Tags of any API Gateway resource, by ARN.
struct Tagging;

impl TagApi for Tagging {
    async fn tag(&self, ctx: &Ctx<'_>, arn: &str, tags: Tags) -> Result<(), AwsError> {
        ctx.aws
            .apigateway
            .tag_resource()
            .resource_arn(arn)
            .set_tags(Some(tags.into_iter().collect()))
            .send()
            .await
            .context(ctx.id, "apigateway:TagResource")?;
        Ok(())
    }

    async fn untag(&self, ctx: &Ctx<'_>, arn: &str, keys: Vec<String>) -> Result<(), AwsError> {
        ctx.aws
            .apigateway
            .untag_resource()
            .resource_arn(arn)
            .set_tag_keys(Some(keys))
            .send()
            .await
            .context(ctx.id, "apigateway:UntagResource")?;
        Ok(())
    }
}

/// `method settings` keys come back as `*/*`, `/*/*`, `~1*/*`…: compare them in one form.
fn settings_key(key: &str) -> String {
    key.replace("~1", "/").trim_start_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_settings_keys_normalise() {
        assert_eq!(settings_key("*/*"), "*/*");
        assert_eq!(settings_key("/*/*"), "*/*");
        assert_eq!(settings_key("~1*/*"), "*/*");
        assert_eq!(settings_key("~1upload/POST"), "upload/POST");
        assert_eq!(settings_key("/upload/POST"), "upload/POST");
    }

    type Candidate = (&'static str, Option<HashMap<String, String>>, i64);

    #[test]
    fn the_owned_candidate_wins_then_any_owned_then_the_oldest() {
        let tagged = |owner: Option<&str>| {
            owner.map(|o| HashMap::from([(OWNER_TAG.to_string(), o.to_string())]))
        };
        let candidates = vec![
            ("foreign-old", None, 1),
            ("other-pipeline", tagged(Some("ns/other")), 2),
            ("ours", tagged(Some("ns/me")), 3),
        ];
        let pick_for = |owner: &str, list: Vec<Candidate>| {
            pick(list, owner, |c| c.1.as_ref(), |c| Some((c.2, 0)))
                .meant
                .map(|c| c.0)
        };
        assert_eq!(pick_for("ns/me", candidates.clone()), Some("ours"));
        assert_eq!(
            pick_for("ns/third", candidates.clone()),
            Some("other-pipeline")
        );
        assert_eq!(
            pick_for("ns/me", vec![("b", None, 5), ("a", None, 4)]),
            Some("a")
        );
        let Picked {
            meant,
            copies,
            namesakes,
        } = pick(
            vec![
                ("newer", tagged(Some("ns/me")), 9),
                ("foreign", None, 1),
                ("older", tagged(Some("ns/me")), 3),
            ],
            "ns/me",
            |c| c.1.as_ref(),
            |c| Some((c.2, 0)),
        );
        assert_eq!(meant.map(|c| c.0), Some("older"), "the oldest copy stays");
        assert_eq!(
            copies.iter().map(|c| c.0).collect::<Vec<_>>(),
            ["newer"],
            "only our own copies are extra, never the foreign one"
        );
        assert_eq!(namesakes, 1, "the foreign one is a namesake");
        let untagged = pick(
            vec![("b", None, 5), ("a", None, 4)],
            "ns/me",
            |c| c.1.as_ref(),
            |c| Some((c.2, 0)),
        );
        assert_eq!(
            (untagged.meant.map(|c| c.0), untagged.namesakes),
            (Some("a"), 1),
            "two untagged namesakes: neither is the only one"
        );
    }
}
