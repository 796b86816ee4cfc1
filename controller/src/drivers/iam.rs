//! IAM roles: trust policy, inline policies, attached managed policies and tags.
//!
//! IAM returns policy documents URL-encoded and may re-order keys or collapse one-element arrays, so every
//! document read back goes through [`parse_policy`] before it is compared.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::aws::{AwsError, ResultExt};
use crate::desired::{RoleSpec, Tags};

use super::{parse_policy, tag_delta, user_tags, Changes, Ctx, Driver, Observed, Outputs};

pub struct Roles;

fn resource(name: &str) -> String {
    format!("Role {name}")
}

/// The policy document as sent to IAM (compact JSON).
fn document(policy: &Value) -> String {
    policy.to_string()
}

fn iam_tags(name: &str, call: &str, tags: &Tags) -> Result<Vec<aws_sdk_iam::types::Tag>, AwsError> {
    tags.iter()
        .map(|(k, v)| {
            aws_sdk_iam::types::Tag::builder()
                .key(k)
                .value(v)
                .build()
                .map_err(|e| {
                    AwsError::terminal(resource(name), call, format!("invalid tag {k}: {e}"))
                })
        })
        .collect()
}

impl Roles {
    fn arn(ctx: &Ctx<'_>, name: &str) -> String {
        format!(
            "arn:{}:iam::{}:role/{name}",
            ctx.aws.partition, ctx.aws.account_id
        )
    }

    async fn list_tags(ctx: &Ctx<'_>, name: &str) -> Result<Tags, AwsError> {
        let mut tags = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = ctx
                .aws
                .iam
                .list_role_tags()
                .role_name(name)
                .set_marker(marker.take())
                .send()
                .await
                .context(resource(name), "iam:ListRoleTags")?;
            tags.extend(
                page.tags()
                    .iter()
                    .map(|t| (t.key().to_string(), t.value().to_string())),
            );
            match page.marker() {
                Some(next) if page.is_truncated() => marker = Some(next.to_string()),
                _ => break,
            }
        }
        Ok(user_tags(tags))
    }

    async fn list_inline_names(ctx: &Ctx<'_>, name: &str) -> Result<Vec<String>, AwsError> {
        let mut names = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = ctx
                .aws
                .iam
                .list_role_policies()
                .role_name(name)
                .set_marker(marker.take())
                .send()
                .await
                .context(resource(name), "iam:ListRolePolicies")?;
            names.extend(page.policy_names().iter().cloned());
            match page.marker() {
                Some(next) if page.is_truncated() => marker = Some(next.to_string()),
                _ => break,
            }
        }
        Ok(names)
    }

    /// Attached managed policy ARNs, sorted.
    async fn list_attached(ctx: &Ctx<'_>, name: &str) -> Result<Vec<String>, AwsError> {
        let mut arns = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = ctx
                .aws
                .iam
                .list_attached_role_policies()
                .role_name(name)
                .set_marker(marker.take())
                .send()
                .await
                .context(resource(name), "iam:ListAttachedRolePolicies")?;
            arns.extend(
                page.attached_policies()
                    .iter()
                    .filter_map(|p| p.policy_arn().map(str::to_string)),
            );
            match page.marker() {
                Some(next) if page.is_truncated() => marker = Some(next.to_string()),
                _ => break,
            }
        }
        arns.sort();
        arns.dedup();
        Ok(arns)
    }

    async fn put_inline(
        ctx: &Ctx<'_>,
        name: &str,
        policy_name: &str,
        policy: &Value,
    ) -> Result<(), AwsError> {
        ctx.aws
            .iam
            .put_role_policy()
            .role_name(name)
            .policy_name(policy_name)
            .policy_document(document(policy))
            .send()
            .await
            .context(resource(name), "iam:PutRolePolicy")?;
        Ok(())
    }

    async fn delete_inline(ctx: &Ctx<'_>, name: &str, policy_name: &str) -> Result<(), AwsError> {
        match ctx
            .aws
            .iam
            .delete_role_policy()
            .role_name(name)
            .policy_name(policy_name)
            .send()
            .await
            .context(resource(name), "iam:DeleteRolePolicy")
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }

    async fn attach(ctx: &Ctx<'_>, name: &str, policy_arn: &str) -> Result<(), AwsError> {
        ctx.aws
            .iam
            .attach_role_policy()
            .role_name(name)
            .policy_arn(policy_arn)
            .send()
            .await
            .context(resource(name), "iam:AttachRolePolicy")?;
        Ok(())
    }

    async fn detach(ctx: &Ctx<'_>, name: &str, policy_arn: &str) -> Result<(), AwsError> {
        match ctx
            .aws
            .iam
            .detach_role_policy()
            .role_name(name)
            .policy_arn(policy_arn)
            .send()
            .await
            .context(resource(name), "iam:DetachRolePolicy")
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

impl Driver for Roles {
    type Spec = RoleSpec;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        _desired: &RoleSpec,
    ) -> Result<Option<Observed<RoleSpec>>, AwsError> {
        let role = match ctx
            .aws
            .iam
            .get_role()
            .role_name(name)
            .send()
            .await
            .context(resource(name), "iam:GetRole")
        {
            Ok(out) => out,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(role) = role.role() else {
            return Ok(None);
        };
        let assume_role_policy = role
            .assume_role_policy_document()
            .map(parse_policy)
            .unwrap_or(Value::Null);
        let arn = if role.arn().is_empty() {
            Self::arn(ctx, name)
        } else {
            role.arn().to_string()
        };

        let mut inline_policies = BTreeMap::new();
        for policy_name in Self::list_inline_names(ctx, name).await? {
            let policy = match ctx
                .aws
                .iam
                .get_role_policy()
                .role_name(name)
                .policy_name(&policy_name)
                .send()
                .await
                .context(resource(name), "iam:GetRolePolicy")
            {
                Ok(out) => out,
                // Deleted between the list and the get: it is not there.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            inline_policies.insert(policy_name, parse_policy(policy.policy_document()));
        }
        let managed_policy_arns = Self::list_attached(ctx, name).await?;
        let tags = Self::list_tags(ctx, name).await?;

        Ok(Some(Observed {
            spec: RoleSpec {
                assume_role_policy,
                inline_policies,
                managed_policy_arns,
            },
            tags,
            outputs: Outputs {
                arn: Some(arn),
                ..Default::default()
            },
        }))
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &RoleSpec,
        tags: &Tags,
    ) -> Result<Outputs, AwsError> {
        let created = ctx
            .aws
            .iam
            .create_role()
            .role_name(name)
            .assume_role_policy_document(document(&desired.assume_role_policy))
            .set_tags(Some(iam_tags(name, "iam:CreateRole", tags)?))
            .send()
            .await
            .context(resource(name), "iam:CreateRole")?;
        for (policy_name, policy) in &desired.inline_policies {
            Self::put_inline(ctx, name, policy_name, policy).await?;
        }
        for policy_arn in &desired.managed_policy_arns {
            Self::attach(ctx, name, policy_arn).await?;
        }
        let arn = created
            .role()
            .map(|r| r.arn().to_string())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| Self::arn(ctx, name));
        Ok(Outputs {
            arn: Some(arn),
            ..Default::default()
        })
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &RoleSpec,
        tags: &Tags,
        observed: &Observed<RoleSpec>,
        changes: &Changes,
    ) -> Result<Outputs, AwsError> {
        if changes.touches("assumeRolePolicy") {
            ctx.aws
                .iam
                .update_assume_role_policy()
                .role_name(name)
                .policy_document(document(&desired.assume_role_policy))
                .send()
                .await
                .context(resource(name), "iam:UpdateAssumeRolePolicy")?;
        }
        if changes.touches("inlinePolicies") {
            for (policy_name, policy) in &desired.inline_policies {
                if observed.spec.inline_policies.get(policy_name) != Some(policy) {
                    Self::put_inline(ctx, name, policy_name, policy).await?;
                }
            }
            for policy_name in observed.spec.inline_policies.keys() {
                if !desired.inline_policies.contains_key(policy_name) {
                    Self::delete_inline(ctx, name, policy_name).await?;
                }
            }
        }
        if changes.touches("managedPolicyArns") {
            for policy_arn in &desired.managed_policy_arns {
                if !observed.spec.managed_policy_arns.contains(policy_arn) {
                    Self::attach(ctx, name, policy_arn).await?;
                }
            }
            for policy_arn in &observed.spec.managed_policy_arns {
                if !desired.managed_policy_arns.contains(policy_arn) {
                    Self::detach(ctx, name, policy_arn).await?;
                }
            }
        }
        if changes.touches("tags") {
            let (set, remove) = tag_delta(tags, &observed.tags);
            if !set.is_empty() {
                ctx.aws
                    .iam
                    .tag_role()
                    .role_name(name)
                    .set_tags(Some(iam_tags(name, "iam:TagRole", &set)?))
                    .send()
                    .await
                    .context(resource(name), "iam:TagRole")?;
            }
            if !remove.is_empty() {
                ctx.aws
                    .iam
                    .untag_role()
                    .role_name(name)
                    .set_tag_keys(Some(remove))
                    .send()
                    .await
                    .context(resource(name), "iam:UntagRole")?;
            }
        }
        let mut outputs = observed.outputs.clone();
        outputs.arn.get_or_insert_with(|| Self::arn(ctx, name));
        Ok(outputs)
    }

    async fn delete(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        _observed: &Observed<RoleSpec>,
    ) -> Result<(), AwsError> {
        // Listed afresh rather than taken from `observed`: anything attached since must go too, or IAM
        // refuses to delete the role.
        let attached = match Self::list_attached(ctx, name).await {
            Err(e) if e.is_not_found() => return Ok(()),
            other => other?,
        };
        for policy_arn in &attached {
            Self::detach(ctx, name, policy_arn).await?;
        }
        let inline = match Self::list_inline_names(ctx, name).await {
            Err(e) if e.is_not_found() => return Ok(()),
            other => other?,
        };
        for policy_name in &inline {
            Self::delete_inline(ctx, name, policy_name).await?;
        }
        match ctx
            .aws
            .iam
            .delete_role()
            .role_name(name)
            .send()
            .await
            .context(resource(name), "iam:DeleteRole")
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }
}
