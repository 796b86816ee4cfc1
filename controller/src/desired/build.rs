//! Spec → desired stack.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::arns::Arns;
use super::{
    names, policies, specs::*, Kind, Resource, ResourceId, ResourceSpec, Stack, Tags, OWNER_TAG,
    SUFFIX_TAG,
};
use crate::api::{FunctionSettings, TransactionPipelineSpec};

/// Where and for whom the stack is built: what the spec alone does not say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackEnv {
    pub account_id: String,
    pub region: String,
    pub partition: String,
    /// `namespace/name` of the owning pipeline (the ownership tag's value).
    pub owner: String,
    /// Tags the controller adds to every resource (its `--extra-tags`).
    pub extra_tags: Tags,
}

impl StackEnv {
    pub fn arns(&self) -> Arns {
        Arns {
            partition: self.partition.clone(),
            region: self.region.clone(),
            account_id: self.account_id.clone(),
        }
    }
}

fn id(kind: Kind, name: impl Into<String>) -> ResourceId {
    ResourceId {
        kind,
        name: name.into(),
    }
}

struct Builder<'a> {
    spec: &'a TransactionPipelineSpec,
    arns: Arns,
    tags: Tags,
    resources: Vec<Resource>,
}

impl Builder<'_> {
    fn add(&mut self, id: ResourceId, depends_on: Vec<ResourceId>, spec: ResourceSpec) {
        debug_assert_eq!(id.kind, spec.kind());
        self.resources.push(Resource {
            id,
            depends_on,
            tags: self.tags.clone(),
            spec,
        });
    }

    fn function_settings(&self, function: &str) -> &FunctionSettings {
        let f = &self.spec.functions;
        match function {
            "csv-validator" => &f.csv_validator,
            "data-transformer" => &f.data_transformer,
            "notification-sender" => &f.notification_sender,
            other => unreachable!("unknown function {other}"),
        }
    }
}

/// Builds the complete desired stack of a (validated) spec.
pub fn build_stack(spec: &TransactionPipelineSpec, env: &StackEnv) -> Stack {
    let suffix = spec.environment_suffix.as_str();
    let mut tags: Tags = env.extra_tags.clone();
    tags.extend(spec.tags.clone());
    tags.insert(OWNER_TAG.into(), env.owner.clone());
    tags.insert(SUFFIX_TAG.into(), suffix.into());
    let mut b = Builder {
        spec,
        arns: env.arns(),
        tags,
        resources: Vec::new(),
    };
    let arns = b.arns.clone();
    let account = env.account_id.as_str();

    // Leaves: storage, messaging, logs, repositories, roles. Their cross-references are ARN strings.
    let dlq = names::dlq(suffix);
    b.add(
        id(Kind::Queue, &dlq),
        vec![],
        ResourceSpec::Queue(QueueSpec {
            attributes: BTreeMap::from([
                ("MessageRetentionPeriod".into(), "1209600".into()),
                ("SqsManagedSseEnabled".into(), "true".into()),
            ]),
        }),
    );
    let topic = names::topic(suffix);
    let mut emails = spec.notifications.emails.clone();
    emails.sort();
    emails.dedup();
    b.add(
        id(Kind::Topic, &topic),
        vec![],
        ResourceSpec::Topic(TopicSpec {
            attributes: BTreeMap::from([(
                "DisplayName".into(),
                format!("tap {suffix} notifications"),
            )]),
            email_subscriptions: emails,
        }),
    );
    for table in [
        names::transactions_table(suffix),
        names::status_table(suffix),
    ] {
        let hash = if table.ends_with("-transactions") {
            "transaction_id"
        } else {
            "upload_id"
        };
        b.add(
            id(Kind::Table, &table),
            vec![],
            ResourceSpec::Table(TableSpec {
                hash_key: KeyAttribute {
                    name: hash.into(),
                    attribute_type: "S".into(),
                },
                range_key: None,
                billing_mode: "PAY_PER_REQUEST".into(),
                global_secondary_indexes: vec![GlobalSecondaryIndex {
                    name: "timestamp-index".into(),
                    hash_key: KeyAttribute {
                        name: "timestamp".into(),
                        attribute_type: "S".into(),
                    },
                    range_key: None,
                    projection: "ALL".into(),
                }],
                point_in_time_recovery: true,
            }),
        );
    }
    let retention = LogGroupSpec {
        retention_days: spec.log_retention_days,
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
                policy: crate::drivers::normalise_policy(policies::repository_policy(
                    &arns, suffix,
                )),
            }),
        );
        b.add(
            id(Kind::Role, names::function_role(suffix, function)),
            vec![],
            ResourceSpec::Role(RoleSpec {
                assume_role_policy: crate::drivers::normalise_policy(policies::trust(
                    "lambda.amazonaws.com",
                    account,
                )),
                inline_policies: BTreeMap::from([(
                    "least-privilege".into(),
                    crate::drivers::normalise_policy(policies::function_policy(
                        &arns, suffix, function,
                    )),
                )]),
                managed_policy_arns: vec![],
            }),
        );
    }
    let sm_log_group = names::state_machine_log_group(suffix);
    b.add(
        id(Kind::LogGroup, &sm_log_group),
        vec![],
        ResourceSpec::LogGroup(retention),
    );
    let sm_role = names::state_machine_role(suffix);
    b.add(
        id(Kind::Role, &sm_role),
        vec![],
        ResourceSpec::Role(RoleSpec {
            assume_role_policy: crate::drivers::normalise_policy(policies::trust(
                "states.amazonaws.com",
                account,
            )),
            inline_policies: BTreeMap::from([(
                "least-privilege".into(),
                crate::drivers::normalise_policy(policies::state_machine_policy(&arns, suffix)),
            )]),
            managed_policy_arns: vec![],
        }),
    );

    // Functions.
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
    let function_ids: Vec<ResourceId> = names::FUNCTIONS
        .iter()
        .map(|f| id(Kind::Function, names::function(suffix, f)))
        .collect();
    let validator_id = function_ids[0].clone();
    let validator_arn = arns.function(&validator_id.name);

    // State machine.
    let state_machine = names::state_machine(suffix);
    let mut sm_deps = function_ids.clone();
    sm_deps.extend([
        id(Kind::Role, &sm_role),
        id(Kind::LogGroup, &sm_log_group),
        id(Kind::Queue, &dlq),
    ]);
    b.add(
        id(Kind::StateMachine, &state_machine),
        sm_deps,
        ResourceSpec::StateMachine(StateMachineSpec {
            machine_type: "EXPRESS".into(),
            definition: state_machine_definition(spec, suffix, &arns),
            role_arn: arns.role(&sm_role),
            logging: StateMachineLogging {
                level: spec.state_machine.log_level.as_str().into(),
                include_execution_data: true,
                log_group_arn: format!("{}:*", arns.log_group(&sm_log_group)),
            },
            tracing_enabled: true,
        }),
    );

    // Bucket: its notification invokes csv-validator, so it comes after the function.
    let bucket = names::bucket(suffix, account);
    b.add(
        id(Kind::Bucket, &bucket),
        vec![validator_id.clone()],
        ResourceSpec::Bucket(BucketSpec {
            encryption: "AES256".into(),
            block_public_access: true,
            versioning: true,
            notification: BucketNotification {
                id: "tap-validated-uploads".into(),
                function_arn: validator_arn.clone(),
                prefix: "validated/".into(),
                events: vec!["s3:ObjectCreated:*".into()],
            },
            invoke_permission: InvokePermission {
                function_name: validator_id.name.clone(),
                statement_id: "tap-s3-invoke".into(),
                principal: "s3.amazonaws.com".into(),
                source_arn: arns.bucket(&bucket),
                source_account: Some(account.into()),
            },
        }),
    );

    // API: POST /upload → csv-validator, then the usage plan and key on its stage.
    let rest_api = names::rest_api(suffix);
    let api = &spec.api;
    b.add(
        id(Kind::RestApi, &rest_api),
        vec![validator_id.clone()],
        ResourceSpec::RestApi(RestApiSpec {
            description: format!("tap {suffix}: CSV transaction uploads"),
            endpoint_type: "REGIONAL".into(),
            resource_path: "/upload".into(),
            method: ApiMethod {
                http_method: "POST".into(),
                authorization_type: "NONE".into(),
                api_key_required: true,
                request_parameters: BTreeMap::from([(
                    "method.request.header.Content-Type".into(),
                    true,
                )]),
                request_models: BTreeMap::from([(
                    "application/json".into(),
                    "UploadEnvelope".into(),
                )]),
            },
            integration: ApiIntegration {
                integration_type: "AWS_PROXY".into(),
                integration_http_method: "POST".into(),
                uri: arns.lambda_integration_uri(&validator_arn),
            },
            validator: RequestValidator {
                name: format!("tap-{suffix}-upload-validator"),
                validate_request_body: true,
                validate_request_parameters: true,
            },
            model: ApiModel {
                name: "UploadEnvelope".into(),
                content_type: "application/json".into(),
                schema: json!({
                    "$schema": "http://json-schema.org/draft-04/schema#",
                    "title": "UploadEnvelope",
                    "type": "object",
                    "required": ["csv"],
                    "properties": {"csv": {"type": "string", "minLength": 1}}
                }),
            },
            stage: ApiStage {
                name: api.stage_name.clone(),
                tracing_enabled: true,
                throttle_rate_limit: api.throttle.rate_limit,
                throttle_burst_limit: api.throttle.burst_limit,
            },
            invoke_permission: InvokePermission {
                function_name: validator_id.name.clone(),
                statement_id: "tap-apigateway-invoke".into(),
                principal: "apigateway.amazonaws.com".into(),
                source_arn: arns.execute_api("POST", "/upload"),
                source_account: None,
            },
        }),
    );
    b.add(
        id(Kind::UsagePlan, names::usage_plan(suffix)),
        vec![id(Kind::RestApi, &rest_api)],
        ResourceSpec::UsagePlan(UsagePlanSpec {
            description: format!("tap {suffix}: upload clients"),
            rest_api_name: rest_api.clone(),
            stage_name: api.stage_name.clone(),
            throttle_rate_limit: api.throttle.rate_limit,
            throttle_burst_limit: api.throttle.burst_limit,
            quota_limit: api.quota.limit,
            quota_period: api.quota.period.as_str().into(),
            api_key_name: names::api_key(suffix),
        }),
    );

    // Alarms → topic.
    let topic_arn = arns.topic(&topic);
    let alarms = &spec.alarms;
    for (function, function_id) in names::FUNCTIONS.iter().zip(&function_ids) {
        b.add(
            id(Kind::Alarm, names::function_errors_alarm(suffix, function)),
            vec![function_id.clone(), id(Kind::Topic, &topic)],
            ResourceSpec::Alarm(AlarmSpec {
                description: format!("tap {suffix}: {function} errors"),
                namespace: "AWS/Lambda".into(),
                metric_name: "Errors".into(),
                dimensions: BTreeMap::from([("FunctionName".into(), function_id.name.clone())]),
                statistic: "Sum".into(),
                period_seconds: alarms.period_seconds,
                evaluation_periods: alarms.evaluation_periods,
                threshold: alarms.lambda_error_threshold as f64,
                comparison_operator: "GreaterThanOrEqualToThreshold".into(),
                treat_missing_data: "notBreaching".into(),
                alarm_actions: vec![topic_arn.clone()],
            }),
        );
    }
    b.add(
        id(Kind::Alarm, names::state_machine_failed_alarm(suffix)),
        vec![
            id(Kind::StateMachine, &state_machine),
            id(Kind::Topic, &topic),
        ],
        ResourceSpec::Alarm(AlarmSpec {
            description: format!("tap {suffix}: pipeline executions failed"),
            namespace: "AWS/States".into(),
            metric_name: "ExecutionsFailed".into(),
            dimensions: BTreeMap::from([(
                "StateMachineArn".into(),
                arns.state_machine(&state_machine),
            )]),
            statistic: "Sum".into(),
            period_seconds: alarms.period_seconds,
            evaluation_periods: alarms.evaluation_periods,
            threshold: alarms.state_machine_failed_threshold as f64,
            comparison_operator: "GreaterThanOrEqualToThreshold".into(),
            treat_missing_data: "notBreaching".into(),
            alarm_actions: vec![topic_arn],
        }),
    );

    Stack {
        env: env.clone(),
        suffix: suffix.to_string(),
        resources: b.resources,
    }
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

/// The Amazon States Language definition: validate → transform → notify; every task retries transient
/// Lambda errors per the spec, and any failure goes to the dead-letter queue, then a failure notification.
pub fn state_machine_definition(
    spec: &TransactionPipelineSpec,
    suffix: &str,
    arns: &Arns,
) -> Value {
    let retry = &spec.state_machine.retry;
    let retriers = json!([{
        "ErrorEquals": [
            "Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.SdkClientException",
            "Lambda.TooManyRequestsException", "States.Timeout"
        ],
        "IntervalSeconds": retry.interval_seconds,
        "MaxAttempts": retry.max_attempts,
        "BackoffRate": retry.backoff_rate,
    }]);
    let catch = json!([{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "SendToDeadLetterQueue"}]);
    let function = |f: &str| arns.function(&names::function(suffix, f));
    let task = |f: &str, result: &str, next: Option<&str>| {
        let mut state = json!({
            "Type": "Task",
            "Resource": function(f),
            "ResultPath": result,
            "Retry": retriers.clone(),
            "Catch": catch.clone(),
        });
        match next {
            Some(next) => state["Next"] = json!(next),
            None => state["End"] = json!(true),
        }
        state
    };
    json!({
        "Comment": format!("tap {suffix}: validate, transform and notify one uploaded CSV file"),
        "StartAt": "Validate",
        "States": {
            "Validate": task("csv-validator", "$.validation", Some("Transform")),
            "Transform": task("data-transformer", "$.transform", Some("Notify")),
            "Notify": task("notification-sender", "$.notification", None),
            "SendToDeadLetterQueue": {
                "Type": "Task",
                "Resource": format!("arn:{}:states:::sqs:sendMessage", arns.partition),
                "Parameters": {"QueueUrl": arns.queue_url(&names::dlq(suffix)), "MessageBody.$": "$"},
                "ResultPath": "$.deadLetter",
                "Next": "NotifyFailure",
            },
            "NotifyFailure": {
                "Type": "Task",
                "Resource": function("notification-sender"),
                "ResultPath": "$.notification",
                "Next": "Failed",
            },
            "Failed": {"Type": "Fail", "Error": "PipelineFailed", "Cause": "A step failed; the input is in the dead-letter queue."},
        }
    })
}
