//! CloudWatch metric alarms.

use serde_json::json;
use tap_controller::desired::Kind;
use tap_controller::drivers::cloudwatch::Alarms;
use tap_tests::lifecycle::written;
use tap_tests::stack::TestStack;

use super::{diff_of, fields, set};

#[tokio::test]
async fn alarm_create_observe_drift_update_delete() -> anyhow::Result<()> {
    let t = TestStack::example().await?;
    let alarms: Vec<_> = t
        .stack
        .resources
        .iter()
        .filter(|r| r.id.kind == Kind::Alarm)
        .map(|r| t.subject(Alarms, Kind::Alarm, &r.id.name))
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(alarms.len(), 4);

    // Every alarm of the stack reads back equal.
    for alarm in &alarms {
        alarm.assert_absent().await?;
        let outputs = alarm.create().await?;
        let observed = alarm.assert_converged().await?;
        assert_eq!(observed.outputs.arn, outputs.arn);
    }

    // Out of band: the threshold is raised (PutMetricAlarm rewrites the whole alarm) and a tag changed.
    let alarm = &alarms[0];
    let (desired, tags) = (&alarm.desired, &alarm.tags);
    let arn = alarm.get().await?.outputs.arn.expect("alarm arn");
    let cw = &t.aws.cloudwatch;
    cw.put_metric_alarm()
        .alarm_name(alarm.name())
        .alarm_description(&desired.description)
        .namespace(&desired.namespace)
        .metric_name(&desired.metric_name)
        .set_dimensions(Some(
            desired
                .dimensions
                .iter()
                .map(|(k, v)| {
                    aws_sdk_cloudwatch::types::Dimension::builder()
                        .name(k)
                        .value(v)
                        .build()
                })
                .collect(),
        ))
        .statistic(desired.statistic.as_str().into())
        .period(desired.period_seconds)
        .evaluation_periods(desired.evaluation_periods)
        .threshold(desired.threshold + 10.0)
        .comparison_operator(desired.comparison_operator.as_str().into())
        .treat_missing_data(&desired.treat_missing_data)
        .set_alarm_actions(Some(desired.alarm_actions.clone()))
        .send()
        .await?;
    cw.tag_resource()
        .resource_arn(&arn)
        .tags(
            aws_sdk_cloudwatch::types::Tag::builder()
                .key("team")
                .value("oops")
                .build(),
        )
        .send()
        .await?;
    let (observed, changes) = alarm.assert_drift(&["tags.team", "threshold"]).await?;
    let threshold = diff_of(&changes, "threshold");
    assert_eq!(threshold.expected.as_f64(), Some(desired.threshold));
    assert_eq!(threshold.actual.as_f64(), Some(desired.threshold + 10.0));
    assert_eq!(diff_of(&changes, "tags.team").actual, json!("oops"));
    let observed = alarm
        .correct(&observed, &changes, &["PutMetricAlarm", "TagResource"])
        .await?;

    // A tag-only change does not rewrite the alarm.
    let mut fewer_tags = tags.clone();
    fewer_tags.remove("team");
    let changes = alarm.diff(desired, &fewer_tags, &observed);
    assert_eq!(fields(&changes), set(&["tags.team"]));
    t.aws.calls.reset();
    alarm
        .update_with(desired, &fewer_tags, &observed, &changes)
        .await?;
    assert_eq!(written(&t.aws), set(&["UntagResource"]));
    let observed = alarm.get().await?;
    assert!(alarm.diff(desired, &fewer_tags, &observed).is_empty());

    alarm.assert_deleted(&observed).await?;
    // The others are untouched.
    for other in &alarms[1..] {
        other.get().await?;
    }
    Ok(())
}
