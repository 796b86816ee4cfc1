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

/// Parses a policy document as AWS returns it (possibly URL-encoded, as IAM does) into normalised JSON:
/// key order is irrelevant once parsed, and single-element arrays are unwrapped where AWS allows either
/// form (`"Action": ["s3:GetObject"]` ≡ `"Action": "s3:GetObject"`).
pub fn parse_policy(text: &str) -> Value {
    let decoded = if text.trim_start().starts_with('%') || text.contains("%22") {
        urlencoding::decode(text)
            .map(|s| s.into_owned())
            .unwrap_or_else(|_| text.to_string())
    } else {
        text.to_string()
    };
    normalise_policy(serde_json::from_str(&decoded).unwrap_or(Value::String(decoded)))
}

/// See [`parse_policy`]; also applied to desired policies so both sides have one form.
pub fn normalise_policy(value: Value) -> Value {
    match value {
        Value::Array(items) if items.len() == 1 => {
            normalise_policy(items.into_iter().next().expect("one item"))
        }
        Value::Array(items) => Value::Array(items.into_iter().map(normalise_policy).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, normalise_policy(v)))
                .collect(),
        ),
        other => other,
    }
}

/// The statement `sid` of a (normalised) resource policy, if present.
pub fn statement<'a>(policy: &'a Value, sid: &str) -> Option<&'a Value> {
    match policy.get("Statement")? {
        Value::Array(items) => items.iter().find(|s| s["Sid"] == sid),
        single if single["Sid"] == sid => Some(single),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_compare_regardless_of_encoding_order_and_singletons() {
        let ours = normalise_policy(
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::b/*"}]}),
        );
        let iam = parse_policy("%7B%22Statement%22%3A%5B%7B%22Resource%22%3A%22arn%3Aaws%3As3%3A%3A%3Ab%2F%2A%22%2C%22Action%22%3A%22s3%3AGetObject%22%2C%22Effect%22%3A%22Allow%22%7D%5D%2C%22Version%22%3A%222012-10-17%22%7D");
        assert_eq!(ours, iam);
    }

    #[test]
    fn finds_a_statement_by_sid_in_a_list_or_alone() {
        let many = json!({"Statement": [{"Sid": "a"}, {"Sid": "b", "Effect": "Allow"}]});
        assert_eq!(statement(&many, "b").unwrap()["Effect"], "Allow");
        assert!(statement(&many, "c").is_none());
        let one = normalise_policy(json!({"Statement": [{"Sid": "a"}]}));
        assert!(statement(&one, "a").is_some());
    }
}
