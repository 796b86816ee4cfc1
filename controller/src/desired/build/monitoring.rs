//! CloudWatch alarms on each function's `Errors` and the state machine's `ExecutionsFailed`, acting on the
//! notification topic.

use std::collections::BTreeMap;

use super::{id, Builder};
use crate::desired::{names, AlarmSpec, Kind, ResourceSpec};

pub(super) fn alarms(b: &mut Builder<'_>) {
    let suffix = b.suffix;
    let topic = names::topic(suffix);
    let alarm = |description: String,
                 namespace: &str,
                 metric: &str,
                 dimension: (&str, String),
                 threshold: i32| {
        let settings = &b.spec.alarms;
        AlarmSpec {
            description,
            namespace: namespace.into(),
            metric_name: metric.into(),
            dimensions: BTreeMap::from([(dimension.0.to_string(), dimension.1)]),
            statistic: "Sum".into(),
            period_seconds: settings.period_seconds,
            evaluation_periods: settings.evaluation_periods,
            threshold: threshold as f64,
            comparison_operator: "GreaterThanOrEqualToThreshold".into(),
            treat_missing_data: "notBreaching".into(),
            alarm_actions: vec![b.arns.topic(&topic)],
        }
    };
    let mut alarms = Vec::new();
    for function in names::FUNCTIONS {
        let name = names::function(suffix, function);
        alarms.push((
            id(Kind::Alarm, names::function_errors_alarm(suffix, function)),
            id(Kind::Function, &name),
            alarm(
                format!("tap {suffix}: {function} errors"),
                "AWS/Lambda",
                "Errors",
                ("FunctionName", name.clone()),
                b.spec.alarms.lambda_error_threshold,
            ),
        ));
    }
    let state_machine = names::state_machine(suffix);
    alarms.push((
        id(Kind::Alarm, names::state_machine_failed_alarm(suffix)),
        id(Kind::StateMachine, &state_machine),
        alarm(
            format!("tap {suffix}: pipeline executions failed"),
            "AWS/States",
            "ExecutionsFailed",
            ("StateMachineArn", b.arns.state_machine(&state_machine)),
            b.spec.alarms.state_machine_failed_threshold,
        ),
    ));
    for (alarm_id, watched, spec) in alarms {
        b.add(
            alarm_id,
            vec![watched, id(Kind::Topic, &topic)],
            ResourceSpec::Alarm(spec),
        );
    }
}
