//! The Secret `<pipeline>-api-key` holding the API key's value (key `apiKey`), owned by the pipeline.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};

use super::FIELD_MANAGER;
use crate::api::TransactionPipeline;
use crate::drivers::SecretValue;

/// Key of the API key's value in the Secret.
pub const API_KEY: &str = "apiKey";

pub fn secret_name(pipeline: &str) -> String {
    format!("{pipeline}-api-key")
}

fn owner_reference(pipeline: &TransactionPipeline) -> Option<OwnerReference> {
    let mut owner = pipeline.controller_owner_ref(&())?;
    // Blocking the owner's deletion would need `update` on transactionpipelines/finalizers.
    owner.block_owner_deletion = None;
    Some(owner)
}

/// The Secret as this controller applies it.
pub fn desired(pipeline: &TransactionPipeline, value: &SecretValue) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&pipeline.name_any())),
            namespace: pipeline.namespace(),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "tap-controller".to_string(),
                ),
                ("tap.dev/pipeline".to_string(), pipeline.name_any()),
            ])),
            owner_references: owner_reference(pipeline).map(|o| vec![o]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            API_KEY.to_string(),
            ByteString(value.0.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

/// Makes sure the Secret holds `value`: reads it (one GET: a Secret deleted or edited by hand is noticed
/// at the next reconcile) and applies it server-side only when it is missing, holds another value or lost
/// its ownerReference. Returns whether it was written.
pub async fn ensure(
    client: &Client,
    pipeline: &TransactionPipeline,
    value: &SecretValue,
) -> Result<bool, kube::Error> {
    let namespace = pipeline.namespace().unwrap_or_else(|| "default".into());
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let name = secret_name(&pipeline.name_any());
    let want = desired(pipeline, value);
    if let Some(current) = api.get_opt(&name).await? {
        let same_value = current
            .data
            .as_ref()
            .and_then(|d| d.get(API_KEY))
            .is_some_and(|v| v.0 == value.0.as_bytes());
        let owned = current
            .metadata
            .owner_references
            .as_ref()
            .is_some_and(|refs| {
                refs.iter().any(|r| {
                    Some(&r.uid) == pipeline.meta().uid.as_ref() && r.controller == Some(true)
                })
            });
        if same_value && owned {
            return Ok(false);
        }
    }
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&want),
    )
    .await?;
    Ok(true)
}
