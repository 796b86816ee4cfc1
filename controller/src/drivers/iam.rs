//! IAM roles: trust policy, inline policies, attached managed policies and tags.
//!
//! IAM returns policy documents URL-encoded and may re-order keys or collapse one-element arrays, so every
//! document read back goes through [`parse_policy`] before it is compared.

use std::collections::BTreeMap;

use aws_sdk_iam::types::{Role, RoleDetail};
use serde_json::Value;

use crate::aws::{AwsError, Optional, ResultExt};
use crate::desired::policies::parse_policy;
use crate::desired::{RoleSpec, Tags};

use super::{sync_tags, user_tags, Changes, Ctx, Driver, DriverError, Observed, Outputs, TagApi};

pub struct Roles;

fn iam_tags(
    ctx: &Ctx<'_>,
    call: &str,
    tags: &Tags,
) -> Result<Vec<aws_sdk_iam::types::Tag>, AwsError> {
    tags.iter()
        .map(|(k, v)| {
            aws_sdk_iam::types::Tag::builder()
                .key(k)
                .value(v)
                .build()
                .map_err(|e| AwsError::terminal(ctx.id, call, format!("invalid tag {k}: {e}")))
        })
        .collect()
}

impl Roles {
    fn outputs(ctx: &Ctx<'_>) -> Outputs {
        Outputs {
            arn: Some(ctx.arns().role(ctx.name())),
            ..Default::default()
        }
    }

    async fn inline_names(ctx: &Ctx<'_>) -> Result<Vec<String>, AwsError> {
        ctx.aws
            .iam
            .list_role_policies()
            .role_name(ctx.name())
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .context(ctx.id, "iam:ListRolePolicies")
    }

    /// Attached managed policy ARNs, sorted.
    async fn attached(ctx: &Ctx<'_>) -> Result<Vec<String>, AwsError> {
        let policies = ctx
            .aws
            .iam
            .list_attached_role_policies()
            .role_name(ctx.name())
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .context(ctx.id, "iam:ListAttachedRolePolicies")?;
        let mut arns: Vec<String> = policies
            .iter()
            .filter_map(|p| p.policy_arn().map(str::to_string))
            .collect();
        arns.sort();
        arns.dedup();
        Ok(arns)
    }

    async fn role(ctx: &Ctx<'_>) -> Result<Option<Role>, AwsError> {
        Ok(ctx
            .aws
            .iam
            .get_role()
            .role_name(ctx.name())
            .send()
            .await
            .context(ctx.id, "iam:GetRole")
            .optional()?
            .and_then(|out| out.role))
    }

    /// `GetRole` carries the tags: no `ListRoleTags`.
    fn tags(role: &Role) -> Tags {
        Self::user_tags(role.tags())
    }

    fn user_tags(tags: &[aws_sdk_iam::types::Tag]) -> Tags {
        user_tags(
            tags.iter()
                .map(|t| (t.key().to_string(), t.value().to_string())),
        )
    }

    fn trust_policy(document: Option<&str>) -> Value {
        document.map(parse_policy).unwrap_or(Value::Null)
    }

    fn observed(ctx: &Ctx<'_>, spec: RoleSpec, tags: Tags) -> Observed<RoleSpec> {
        Observed::new(spec, tags, Self::outputs(ctx))
    }

    /// A role as the account's authorization details list it: everything `observe` reads, in one entry.
    fn from_details(ctx: &Ctx<'_>, role: &RoleDetail) -> Observed<RoleSpec> {
        let inline_policies = role
            .role_policy_list()
            .iter()
            .filter_map(|p| {
                Some((
                    p.policy_name()?.to_string(),
                    parse_policy(p.policy_document()?),
                ))
            })
            .collect();
        let mut managed_policy_arns: Vec<String> = role
            .attached_managed_policies()
            .iter()
            .filter_map(|p| p.policy_arn().map(str::to_string))
            .collect();
        managed_policy_arns.sort();
        managed_policy_arns.dedup();
        let spec = RoleSpec {
            assume_role_policy: Self::trust_policy(role.assume_role_policy_document()),
            inline_policies,
            managed_policy_arns,
        };
        Self::observed(ctx, spec, Self::user_tags(role.tags()))
    }

    async fn put_inline(ctx: &Ctx<'_>, policy_name: &str, policy: &Value) -> Result<(), AwsError> {
        ctx.aws
            .iam
            .put_role_policy()
            .role_name(ctx.name())
            .policy_name(policy_name)
            .policy_document(policy.to_string())
            .send()
            .await
            .context(ctx.id, "iam:PutRolePolicy")?;
        Ok(())
    }

    async fn delete_inline(ctx: &Ctx<'_>, policy_name: &str) -> Result<(), AwsError> {
        ctx.aws
            .iam
            .delete_role_policy()
            .role_name(ctx.name())
            .policy_name(policy_name)
            .send()
            .await
            .context(ctx.id, "iam:DeleteRolePolicy")
            .optional()?;
        Ok(())
    }

    /// Detaches `attached` and deletes `inline`, at once.
    async fn remove_policies(
        ctx: &Ctx<'_>,
        attached: &[String],
        inline: &[String],
    ) -> Result<(), AwsError> {
        let detach =
            futures::future::try_join_all(attached.iter().map(|arn| Self::detach(ctx, arn)));
        let delete =
            futures::future::try_join_all(inline.iter().map(|name| Self::delete_inline(ctx, name)));
        futures::try_join!(detach, delete)?;
        Ok(())
    }

    async fn delete_role(ctx: &Ctx<'_>) -> Result<(), AwsError> {
        ctx.aws
            .iam
            .delete_role()
            .role_name(ctx.name())
            .send()
            .await
            .context(ctx.id, "iam:DeleteRole")
            .optional()?;
        Ok(())
    }

    async fn attach(ctx: &Ctx<'_>, policy_arn: &str) -> Result<(), AwsError> {
        ctx.aws
            .iam
            .attach_role_policy()
            .role_name(ctx.name())
            .policy_arn(policy_arn)
            .send()
            .await
            .context(ctx.id, "iam:AttachRolePolicy")?;
        Ok(())
    }

    async fn detach(ctx: &Ctx<'_>, policy_arn: &str) -> Result<(), AwsError> {
        ctx.aws
            .iam
            .detach_role_policy()
            .role_name(ctx.name())
            .policy_arn(policy_arn)
            .send()
            .await
            .context(ctx.id, "iam:DetachRolePolicy")
            .optional()?;
        Ok(())
    }
}

impl TagApi for Roles {
    async fn tag(&self, ctx: &Ctx<'_>, role: &str, tags: Tags) -> Result<(), AwsError> {
        ctx.aws
            .iam
            .tag_role()
            .role_name(role)
            .set_tags(Some(iam_tags(ctx, "iam:TagRole", &tags)?))
            .send()
            .await
            .context(ctx.id, "iam:TagRole")?;
        Ok(())
    }

    async fn untag(&self, ctx: &Ctx<'_>, role: &str, keys: Vec<String>) -> Result<(), AwsError> {
        ctx.aws
            .iam
            .untag_role()
            .role_name(role)
            .set_tag_keys(Some(keys))
            .send()
            .await
            .context(ctx.id, "iam:UntagRole")?;
        Ok(())
    }
}

impl Driver for Roles {
    type Spec = RoleSpec;

    /// `CreateRole` answers `EntityAlreadyExists`.
    const CREATE_REFUSES_EXISTING: bool = true;

    async fn observe(
        &self,
        ctx: &Ctx<'_>,
        _desired: &RoleSpec,
    ) -> Result<Option<Observed<RoleSpec>>, AwsError> {
        if let Some(listed) = super::batch::role(ctx).await {
            return Ok(listed.map(|role| Self::from_details(ctx, &role)));
        }
        let Some(role) = Self::role(ctx).await? else {
            return Ok(None);
        };
        let assume_role_policy = Self::trust_policy(role.assume_role_policy_document());
        // The inline policies (each read at once) and the attached ones are independent reads.
        let inline = async {
            let names = Self::inline_names(ctx).await?;
            let policies =
                futures::future::try_join_all(names.into_iter().map(|policy_name| async move {
                    let policy = ctx
                        .aws
                        .iam
                        .get_role_policy()
                        .role_name(ctx.name())
                        .policy_name(&policy_name)
                        .send()
                        .await
                        .context(ctx.id, "iam:GetRolePolicy")
                        .optional()?;
                    // Deleted between the list and the get: it is not there.
                    Ok::<_, AwsError>(
                        policy.map(|p| (policy_name, parse_policy(p.policy_document()))),
                    )
                }))
                .await?;
            Ok::<BTreeMap<_, _>, AwsError>(policies.into_iter().flatten().collect())
        };
        let (inline_policies, managed_policy_arns) = tokio::try_join!(inline, Self::attached(ctx))?;
        let spec = RoleSpec {
            assume_role_policy,
            inline_policies,
            managed_policy_arns,
        };
        Ok(Some(Self::observed(ctx, spec, Self::tags(&role))))
    }

    /// `GetRole` alone: the policies the delete removes are the ones this stack puts on the role; one
    /// someone else added makes IAM refuse the delete (`DeleteConflict`), and then they are listed.
    async fn observe_owner(
        &self,
        ctx: &Ctx<'_>,
        desired: &RoleSpec,
    ) -> Result<Option<Observed<RoleSpec>>, AwsError> {
        let Some(role) = Self::role(ctx).await? else {
            return Ok(None);
        };
        Ok(Some(Self::observed(
            ctx,
            desired.clone(),
            Self::tags(&role),
        )))
    }

    async fn create(
        &self,
        ctx: &Ctx<'_>,
        desired: &RoleSpec,
        tags: &Tags,
    ) -> Result<Outputs, DriverError> {
        ctx.aws
            .iam
            .create_role()
            .role_name(ctx.name())
            .assume_role_policy_document(desired.assume_role_policy.to_string())
            .set_tags(Some(iam_tags(ctx, "iam:CreateRole", tags)?))
            .send()
            .await
            .context(ctx.id, "iam:CreateRole")?;
        for (policy_name, policy) in &desired.inline_policies {
            Self::put_inline(ctx, policy_name, policy).await?;
        }
        for policy_arn in &desired.managed_policy_arns {
            Self::attach(ctx, policy_arn).await?;
        }
        Ok(Self::outputs(ctx))
    }

    async fn update(
        &self,
        ctx: &Ctx<'_>,
        desired: &RoleSpec,
        tags: &Tags,
        observed: &Observed<RoleSpec>,
        changes: &Changes,
    ) -> Result<Outputs, DriverError> {
        if changes.touches("assumeRolePolicy") {
            ctx.aws
                .iam
                .update_assume_role_policy()
                .role_name(ctx.name())
                .policy_document(desired.assume_role_policy.to_string())
                .send()
                .await
                .context(ctx.id, "iam:UpdateAssumeRolePolicy")?;
        }
        for (policy_name, policy) in &desired.inline_policies {
            if observed.spec.inline_policies.get(policy_name) != Some(policy) {
                Self::put_inline(ctx, policy_name, policy).await?;
            }
        }
        for policy_name in observed.spec.inline_policies.keys() {
            if !desired.inline_policies.contains_key(policy_name) {
                Self::delete_inline(ctx, policy_name).await?;
            }
        }
        for policy_arn in &desired.managed_policy_arns {
            if !observed.spec.managed_policy_arns.contains(policy_arn) {
                Self::attach(ctx, policy_arn).await?;
            }
        }
        for policy_arn in &observed.spec.managed_policy_arns {
            if !desired.managed_policy_arns.contains(policy_arn) {
                Self::detach(ctx, policy_arn).await?;
            }
        }
        if changes.touches("tags") {
            sync_tags(self, ctx, ctx.name(), tags, &observed.tags).await?;
        }
        Ok(Self::outputs(ctx))
    }

    async fn delete(&self, ctx: &Ctx<'_>, observed: &Observed<RoleSpec>) -> Result<(), AwsError> {
        // The policies the observe read go first, all at once. One attached since makes IAM refuse the
        // role (DeleteConflict): then they are listed afresh, removed, and the role deleted again.
        let attached = &observed.spec.managed_policy_arns;
        let inline: Vec<String> = observed.spec.inline_policies.keys().cloned().collect();
        Self::remove_policies(ctx, attached, &inline).await?;
        match Self::delete_role(ctx).await {
            Err(e) if e.code.as_deref() == Some("DeleteConflict") => {
                let Some(attached) = Self::attached(ctx).await.optional()? else {
                    return Ok(());
                };
                let Some(inline) = Self::inline_names(ctx).await.optional()? else {
                    return Ok(());
                };
                Self::remove_policies(ctx, &attached, &inline).await?;
                Self::delete_role(ctx).await
            }
            other => other,
        }
    }
}
