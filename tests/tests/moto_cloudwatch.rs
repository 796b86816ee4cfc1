//! CloudWatch alarms through the Rust SDK (Smithy RPC v2 CBOR) against moto, which speaks only the
//! Query protocol for CloudWatch: `tests/moto/cloudwatch_cbor.py` answers the CBOR operations from
//! moto's own CloudWatch backend. Everything the controller's alarm driver calls is covered here.

use std::collections::BTreeMap;

use aws_sdk_cloudwatch::types::{
    ComparisonOperator, Dimension, MetricAlarm, StateValue, Statistic, Tag,
};
use aws_sdk_cloudwatch::Client;
use tap_tests::{Emulator, EmulatorKind};

const ACCOUNT: &str = "123456789012";

async fn moto() -> anyhow::Result<(Emulator, Client)> {
    let emu = Emulator::start_kind(EmulatorKind::Moto).await?;
    let client = Client::new(&emu.sdk_config());
    Ok((emu, client))
}

fn arn(emu: &Emulator, name: &str) -> String {
    format!("arn:aws:cloudwatch:{}:{ACCOUNT}:alarm:{name}", emu.region)
}

fn dim(name: &str, value: &str) -> Dimension {
    Dimension::builder().name(name).value(value).build()
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

async fn put(
    client: &Client,
    name: &str,
    threshold: f64,
    tags: Option<Vec<Tag>>,
) -> anyhow::Result<()> {
    client
        .put_metric_alarm()
        .alarm_name(name)
        .alarm_description("errors of the csv validator")
        .namespace("AWS/Lambda")
        .metric_name("Errors")
        .dimensions(dim("FunctionName", "tap-dev1-csv-validator"))
        .dimensions(dim("Resource", "tap-dev1-csv-validator:live"))
        .statistic(Statistic::Sum)
        .period(300)
        .evaluation_periods(2)
        .threshold(threshold)
        .comparison_operator(ComparisonOperator::GreaterThanOrEqualToThreshold)
        .treat_missing_data("notBreaching")
        .alarm_actions("arn:aws:sns:us-east-1:123456789012:alerts")
        .ok_actions("arn:aws:sns:us-east-1:123456789012:ok")
        .insufficient_data_actions("arn:aws:sns:us-east-1:123456789012:unknown")
        .actions_enabled(true)
        .set_tags(tags)
        .send()
        .await?;
    Ok(())
}

async fn describe(client: &Client, name: &str) -> anyhow::Result<Vec<MetricAlarm>> {
    let out = client.describe_alarms().alarm_names(name).send().await?;
    assert!(out.composite_alarms().is_empty());
    Ok(out.metric_alarms().to_vec())
}

async fn tags(client: &Client, arn: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let out = client
        .list_tags_for_resource()
        .resource_arn(arn)
        .send()
        .await?;
    Ok(out
        .tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn alarm_lifecycle_over_rpc_v2_cbor() -> anyhow::Result<()> {
    let (emu, client) = moto().await?;
    let name = "tap-dev1-csv-validator-errors";
    let alarm_arn = arn(&emu, name);

    put(
        &client,
        name,
        1.0,
        Some(vec![tag("team", "payments"), tag("env", "dev1")]),
    )
    .await?;

    let alarms = describe(&client, name).await?;
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    let a = &alarms[0];
    assert_eq!(a.alarm_name(), Some(name));
    assert_eq!(a.alarm_arn(), Some(alarm_arn.as_str()));
    assert_eq!(a.alarm_description(), Some("errors of the csv validator"));
    assert_eq!(a.namespace(), Some("AWS/Lambda"));
    assert_eq!(a.metric_name(), Some("Errors"));
    assert_eq!(
        a.dimensions(),
        &[
            dim("FunctionName", "tap-dev1-csv-validator"),
            dim("Resource", "tap-dev1-csv-validator:live")
        ]
    );
    assert_eq!(a.statistic(), Some(&Statistic::Sum));
    assert_eq!(a.period(), Some(300));
    assert_eq!(a.evaluation_periods(), Some(2));
    assert_eq!(a.threshold(), Some(1.0));
    assert_eq!(
        a.comparison_operator(),
        Some(&ComparisonOperator::GreaterThanOrEqualToThreshold)
    );
    assert_eq!(a.treat_missing_data(), Some("notBreaching"));
    assert_eq!(
        a.alarm_actions(),
        &["arn:aws:sns:us-east-1:123456789012:alerts".to_string()]
    );
    assert_eq!(
        a.ok_actions(),
        &["arn:aws:sns:us-east-1:123456789012:ok".to_string()]
    );
    assert_eq!(
        a.insufficient_data_actions(),
        &["arn:aws:sns:us-east-1:123456789012:unknown".to_string()]
    );
    assert_eq!(a.actions_enabled(), Some(true));
    assert_eq!(a.state_value(), Some(&StateValue::Ok));
    // CBOR tag 1 timestamps: decoded, and recent.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    for ts in [
        a.alarm_configuration_updated_timestamp(),
        a.state_updated_timestamp(),
    ] {
        let secs = ts.expect("timestamp").secs();
        assert!((now - secs).abs() < 300, "timestamp {secs} vs now {now}");
    }

    assert_eq!(
        tags(&client, &alarm_arn).await?,
        map(&[("env", "dev1"), ("team", "payments")])
    );
    client
        .tag_resource()
        .resource_arn(&alarm_arn)
        .tags(tag("team", "platform"))
        .tags(tag("owner", "ops"))
        .send()
        .await?;
    client
        .untag_resource()
        .resource_arn(&alarm_arn)
        .tag_keys("env")
        .send()
        .await?;
    assert_eq!(
        tags(&client, &alarm_arn).await?,
        map(&[("owner", "ops"), ("team", "platform")])
    );

    // Update: PutMetricAlarm rewrites the alarm; tags given on an update are ignored (AWS semantics).
    put(&client, name, 7.5, Some(vec![tag("ignored", "yes")])).await?;
    let alarms = describe(&client, name).await?;
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0].threshold(), Some(7.5));
    assert_eq!(alarms[0].dimensions().len(), 2);
    assert_eq!(
        tags(&client, &alarm_arn).await?,
        map(&[("owner", "ops"), ("team", "platform")])
    );

    client.delete_alarms().alarm_names(name).send().await?;
    assert!(describe(&client, name).await?.is_empty());

    // Tags of a deleted alarm are an error, as on AWS.
    let err = client
        .list_tags_for_resource()
        .resource_arn(&alarm_arn)
        .send()
        .await
        .expect_err("tags of a deleted alarm");
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_resource_not_found_exception()),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn describe_by_prefix_and_unknown_delete() -> anyhow::Result<()> {
    let (_emu, client) = moto().await?;
    put(&client, "svc-a-errors", 1.0, None).await?;
    put(&client, "svc-a-throttles", 2.0, None).await?;
    put(&client, "svc-b-errors", 3.0, None).await?;

    let out = client
        .describe_alarms()
        .alarm_name_prefix("svc-a-")
        .send()
        .await?;
    let names: Vec<_> = out
        .metric_alarms()
        .iter()
        .filter_map(|a| a.alarm_name())
        .collect();
    assert_eq!(names, ["svc-a-errors", "svc-a-throttles"]);

    let all = client.describe_alarms().send().await?;
    assert_eq!(all.metric_alarms().len(), 3);

    // Deleting an alarm that does not exist is not an error.
    client
        .delete_alarms()
        .alarm_names("no-such-alarm")
        .send()
        .await?;
    assert!(describe(&client, "no-such-alarm").await?.is_empty());

    // Untagging an alarm that never had tags works (moto's own untag would 404 it).
    client
        .untag_resource()
        .resource_arn(all.metric_alarms()[0].alarm_arn().unwrap())
        .tag_keys("absent")
        .send()
        .await?;
    Ok(())
}

#[tokio::test]
async fn errors_are_typed() -> anyhow::Result<()> {
    let (emu, client) = moto().await?;
    let err = client
        .tag_resource()
        .resource_arn(arn(&emu, "missing"))
        .tags(tag("k", "v"))
        .send()
        .await
        .expect_err("tagging a missing alarm");
    let service = err.as_service_error().expect("a service error");
    assert!(service.is_resource_not_found_exception(), "{err:?}");

    // An operation the adapter does not implement: a proper (unhandled) service error, not a parse failure.
    let err = client
        .list_dashboards()
        .send()
        .await
        .expect_err("not implemented by the adapter");
    let meta = aws_sdk_cloudwatch::error::ProvideErrorMetadata::code(&err);
    assert_eq!(meta, Some("UnknownOperationException"), "{err:?}");
    Ok(())
}
