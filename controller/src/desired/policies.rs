//! IAM documents of the stack: trust policies and least-privilege inline policies. Every statement names
//! this stack's ARNs, except for the few actions AWS does not let anyone scope to a resource (listed in
//! [`UNSCOPABLE_ACTIONS`]).

use serde_json::{json, Value};

use super::arns::Arns;
use super::names;

/// Actions that only accept `"Resource": "*"` in AWS (X-Ray segment upload, CloudWatch Logs delivery
/// management used by Step Functions logging). Nothing else may use `*`.
pub const UNSCOPABLE_ACTIONS: &[&str] = &[
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "xray:GetSamplingRules",
    "xray:GetSamplingTargets",
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
];

pub fn document(statements: Vec<Value>) -> Value {
    json!({"Version": "2012-10-17", "Statement": statements})
}

fn allow(sid: &str, actions: &[&str], resources: Vec<String>) -> Value {
    json!({"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources})
}

pub fn trust(service: &str, account_id: &str) -> Value {
    document(vec![json!({
        "Effect": "Allow",
        "Principal": {"Service": service},
        "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"aws:SourceAccount": account_id}},
    })])
}

fn tracing() -> Value {
    json!({"Sid": "XRay", "Effect": "Allow", "Action": ["xray:PutTraceSegments", "xray:PutTelemetryRecords"], "Resource": "*"})
}

/// The one inline policy of a function's role.
pub fn function_policy(arns: &Arns, suffix: &str, function: &str) -> Value {
    let log_group = arns.log_group(&names::function_log_group(suffix, function));
    let bucket = arns.bucket(&names::bucket(suffix, &arns.account_id));
    let transactions = arns.table(&names::transactions_table(suffix));
    let status = arns.table(&names::status_table(suffix));
    let mut statements = vec![
        allow(
            "Logs",
            &["logs:CreateLogStream", "logs:PutLogEvents"],
            vec![format!("{log_group}:*")],
        ),
        allow(
            "DeadLetterQueue",
            &["sqs:SendMessage"],
            vec![arns.queue(&names::dlq(suffix))],
        ),
        tracing(),
    ];
    match function {
        "csv-validator" => {
            statements.push(allow(
                "ValidatedObjects",
                &["s3:PutObject", "s3:GetObject"],
                vec![format!("{bucket}/validated/*")],
            ));
            statements.push(allow(
                "StatusTable",
                &[
                    "dynamodb:GetItem",
                    "dynamodb:PutItem",
                    "dynamodb:UpdateItem",
                ],
                vec![status],
            ));
            statements.push(allow(
                "StartPipeline",
                &["states:StartExecution"],
                vec![arns.state_machine(&names::state_machine(suffix))],
            ));
        }
        "data-transformer" => {
            statements.push(allow(
                "ReadValidatedObjects",
                &["s3:GetObject"],
                vec![format!("{bucket}/validated/*")],
            ));
            statements.push(allow(
                "TransactionsTable",
                &["dynamodb:BatchWriteItem", "dynamodb:PutItem"],
                vec![transactions],
            ));
            statements.push(allow(
                "StatusTable",
                &["dynamodb:GetItem", "dynamodb:UpdateItem"],
                vec![status],
            ));
        }
        "notification-sender" => {
            statements.push(allow(
                "Notify",
                &["sns:Publish"],
                vec![arns.topic(&names::topic(suffix))],
            ));
            statements.push(allow(
                "StatusTable",
                &["dynamodb:GetItem", "dynamodb:UpdateItem"],
                vec![status],
            ));
        }
        other => unreachable!("unknown function {other}"),
    }
    document(statements)
}

/// The one inline policy of the state machine's role.
pub fn state_machine_policy(arns: &Arns, suffix: &str) -> Value {
    let functions: Vec<String> = names::FUNCTIONS
        .iter()
        .map(|f| arns.function(&names::function(suffix, f)))
        .collect();
    document(vec![
        allow("InvokeSteps", &["lambda:InvokeFunction"], functions),
        allow(
            "DeadLetterQueue",
            &["sqs:SendMessage"],
            vec![arns.queue(&names::dlq(suffix))],
        ),
        json!({
            "Sid": "LogDelivery",
            "Effect": "Allow",
            "Action": [
                "logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery", "logs:DeleteLogDelivery",
                "logs:ListLogDeliveries", "logs:PutResourcePolicy", "logs:DescribeResourcePolicies", "logs:DescribeLogGroups"
            ],
            "Resource": "*",
        }),
        json!({
            "Sid": "XRay",
            "Effect": "Allow",
            "Action": ["xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules", "xray:GetSamplingTargets"],
            "Resource": "*",
        }),
    ])
}

/// Repository policy: only this stack's functions (through the Lambda service) may pull.
pub fn repository_policy(arns: &Arns, suffix: &str) -> Value {
    document(vec![json!({
        "Sid": "LambdaPull",
        "Effect": "Allow",
        "Principal": {"Service": "lambda.amazonaws.com"},
        "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
        "Condition": {"StringLike": {"aws:sourceArn": arns.function(&format!("{}-*", names::prefix(suffix)))}},
    })])
}
