//! The EXPRESS state machine and its Amazon States Language definition.

use serde_json::{json, Value};

use super::{id, Builder};
use crate::api::TransactionPipelineSpec;
use crate::desired::arns::Arns;
use crate::desired::{
    names, Kind, ResourceId, ResourceSpec, StateMachineLogging, StateMachineSpec,
};

pub(super) fn state_machine(b: &mut Builder<'_>) {
    let suffix = b.suffix;
    let arns = b.arns.clone();
    let role = names::state_machine_role(suffix);
    let log_group = names::state_machine_log_group(suffix);
    let mut depends_on: Vec<ResourceId> = names::FUNCTIONS
        .iter()
        .map(|f| id(Kind::Function, names::function(suffix, f)))
        .collect();
    depends_on.extend([
        id(Kind::Role, &role),
        id(Kind::LogGroup, &log_group),
        id(Kind::Queue, names::dlq(suffix)),
    ]);
    b.add(
        id(Kind::StateMachine, names::state_machine(suffix)),
        depends_on,
        ResourceSpec::StateMachine(StateMachineSpec {
            machine_type: "EXPRESS".into(),
            definition: state_machine_definition(b.spec, suffix, &arns),
            role_arn: arns.role(&role),
            logging: StateMachineLogging {
                level: b.spec.state_machine.log_level.as_str().into(),
                include_execution_data: true,
                log_group_arn: format!("{}:*", arns.log_group(&log_group)),
            },
            tracing_enabled: true,
        }),
    );
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
