//! Compute: per function a log group, a repository and a role (the leaves), then the functions
//! themselves and csv-validator's permission for S3.

use std::collections::BTreeMap;

use super::{id, Builder};
use crate::desired::arns::Arns;
use crate::desired::policies::{self, normalise_policy};
use crate::desired::{
    names, EcrImage, FunctionSpec, Kind, LogGroupSpec, PermissionSpec, RepositorySpec,
    ResourceSpec, RoleSpec,
};

pub(super) fn leaves(b: &mut Builder<'_>) {
    let suffix = b.suffix;
    let arns = b.arns.clone();
    let retention = LogGroupSpec {
        retention_days: b.spec.log_retention_days,
    };
    for function in names::FUNCTIONS {
        b.add(
            id(Kind::LogGroup, names::function_log_group(suffix, function)),
            vec![],
            ResourceSpec::LogGroup(retention.clone()),
        );
        b.add(
            id(Kind::Repository, names::repository(suffix, function)),
            vec![],
            ResourceSpec::Repository(RepositorySpec {
                scan_on_push: true,
                tag_mutability: "IMMUTABLE".into(),
                policy: normalise_policy(policies::repository_policy(&arns, suffix)),
            }),
        );
        b.add(
            id(Kind::Role, names::function_role(suffix, function)),
            vec![],
            ResourceSpec::Role(role(
                "lambda.amazonaws.com",
                &arns.account_id,
                policies::function_policy(&arns, suffix, function),
            )),
        );
    }
    b.add(
        id(Kind::LogGroup, names::state_machine_log_group(suffix)),
        vec![],
        ResourceSpec::LogGroup(retention),
    );
    b.add(
        id(Kind::Role, names::state_machine_role(suffix)),
        vec![],
        ResourceSpec::Role(role(
            "states.amazonaws.com",
            &arns.account_id,
            policies::state_machine_policy(&arns, suffix),
        )),
    );
}

/// A role assumable by `service` with one inline least-privilege policy.
fn role(service: &str, account_id: &str, policy: serde_json::Value) -> RoleSpec {
    RoleSpec {
        assume_role_policy: normalise_policy(policies::trust(service, account_id)),
        inline_policies: BTreeMap::from([("least-privilege".into(), normalise_policy(policy))]),
        managed_policy_arns: vec![],
    }
}

pub(super) fn functions(b: &mut Builder<'_>) {
    let suffix = b.suffix;
    let arns = b.arns.clone();
    let dlq = names::dlq(suffix);
    let environment = base_environment(suffix, &arns);
    for function in names::FUNCTIONS {
        let settings = b.function_settings(function).clone();
        let repository = names::repository(suffix, function);
        let (image_uri, image_in_repository) = match (&settings.image.tag, &settings.image.uri) {
            (Some(tag), _) => (
                format!("{}:{tag}", arns.repository_uri(&repository)),
                Some(EcrImage {
                    repository: repository.clone(),
                    tag: tag.clone(),
                }),
            ),
            (None, Some(uri)) => (uri.clone(), None),
            (None, None) => unreachable!("validate() requires an image tag or uri"),
        };
        let mut env_vars = environment.clone();
        env_vars.extend(settings.environment.clone());
        b.add(
            id(Kind::Function, names::function(suffix, function)),
            vec![
                id(Kind::Role, names::function_role(suffix, function)),
                id(Kind::Repository, &repository),
                id(Kind::LogGroup, names::function_log_group(suffix, function)),
                id(Kind::Queue, &dlq),
            ],
            ResourceSpec::Function(FunctionSpec {
                image_uri,
                role_arn: arns.role(&names::function_role(suffix, function)),
                memory_mb: settings.memory_mb,
                timeout_seconds: settings.timeout_seconds,
                architectures: vec!["arm64".into()],
                environment: env_vars,
                tracing_mode: "Active".into(),
                dead_letter_target_arn: arns.queue(&dlq),
                image_in_repository,
            }),
        );
    }
    let validator = names::function(suffix, "csv-validator");
    let bucket = names::bucket(suffix, &arns.account_id);
    b.add(
        id(
            Kind::Permission,
            names::permission(&validator, names::S3_INVOKE_STATEMENT),
        ),
        vec![id(Kind::Function, &validator)],
        ResourceSpec::Permission(PermissionSpec {
            function_name: validator.clone(),
            statement_id: names::S3_INVOKE_STATEMENT.into(),
            principal: "s3.amazonaws.com".into(),
            source_arn: arns.bucket(&bucket),
            source_account: Some(arns.account_id.clone()),
            source_api: None,
        }),
    );
}

/// Environment variables every function gets: where the stack's resources are.
fn base_environment(suffix: &str, arns: &Arns) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "TRANSACTIONS_TABLE".into(),
            names::transactions_table(suffix),
        ),
        ("STATUS_TABLE".into(), names::status_table(suffix)),
        (
            "BUCKET_NAME".into(),
            names::bucket(suffix, &arns.account_id),
        ),
        ("TOPIC_ARN".into(), arns.topic(&names::topic(suffix))),
        (
            "STATE_MACHINE_ARN".into(),
            arns.state_machine(&names::state_machine(suffix)),
        ),
    ])
}
