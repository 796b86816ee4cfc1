//! What the account holds of a stack, listed service by service by name (the Resource Groups Tagging API
//! is incomplete on both emulators): the exactly-once check after a crash, and the empty-account check
//! after a teardown. A name is listed once per resource found, so a duplicate shows as a count of two.

use std::collections::BTreeMap;

use tap_controller::aws::Aws;

/// Resources found, by kind (`Bucket`, `RestApi`, …), each with the names found (repeated when two
/// resources share a name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory(pub BTreeMap<&'static str, Vec<String>>);

impl Inventory {
    /// Everything named `tap-<suffix>-…` (log groups: `/aws/…/tap-<suffix>-…`).
    pub async fn of(aws: &Aws, suffix: &str) -> anyhow::Result<Self> {
        let prefix = format!("tap-{suffix}-");
        let mine = |name: &str| name.starts_with(&prefix) || name.contains(&format!("/{prefix}"));
        let mut found: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        let mut add = |kind: &'static str, names: Vec<String>| {
            let names: Vec<String> = names.into_iter().filter(|n| mine(n)).collect();
            if !names.is_empty() {
                found.entry(kind).or_default().extend(names);
            }
        };

        let buckets = aws.s3.list_buckets().send().await?;
        add(
            "Bucket",
            buckets
                .buckets()
                .iter()
                .filter_map(|b| b.name().map(str::to_string))
                .collect(),
        );
        let tables = aws
            .dynamodb
            .list_tables()
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await?;
        add("Table", tables);
        let repositories = aws
            .ecr
            .describe_repositories()
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await?;
        add(
            "Repository",
            repositories
                .iter()
                .filter_map(|r| r.repository_name().map(str::to_string))
                .collect(),
        );
        let groups = aws
            .logs
            .describe_log_groups()
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await?;
        add(
            "LogGroup",
            groups
                .iter()
                .filter_map(|g| g.log_group_name().map(str::to_string))
                .collect(),
        );
        let queues = aws
            .sqs
            .list_queues()
            .queue_name_prefix(&prefix)
            .send()
            .await?;
        add(
            "Queue",
            queues
                .queue_urls()
                .iter()
                .filter_map(|u| u.rsplit('/').next().map(str::to_string))
                .collect(),
        );
        let topics = aws
            .sns
            .list_topics()
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await?;
        add(
            "Topic",
            topics
                .iter()
                .filter_map(|t| {
                    t.topic_arn()
                        .and_then(|a| a.rsplit(':').next())
                        .map(str::to_string)
                })
                .collect(),
        );
        let subscriptions = aws
            .sns
            .list_subscriptions()
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await?;
        add(
            "Subscription",
            subscriptions
                .iter()
                .filter_map(|s| {
                    let topic = s.topic_arn()?.rsplit(':').next()?;
                    Some(format!("{topic}/{}", s.endpoint().unwrap_or_default()))
                })
                .collect(),
        );
        let roles = aws
            .iam
            .list_roles()
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await?;
        add(
            "Role",
            roles.iter().map(|r| r.role_name().to_string()).collect(),
        );
        let functions = aws
            .lambda
            .list_functions()
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await?;
        add(
            "Function",
            functions
                .iter()
                .filter_map(|f| f.function_name().map(str::to_string))
                .collect(),
        );
        let machines = aws
            .sfn
            .list_state_machines()
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await?;
        add(
            "StateMachine",
            machines.iter().map(|m| m.name().to_string()).collect(),
        );
        let apis = aws
            .apigateway
            .get_rest_apis()
            .limit(500)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await?;
        add(
            "RestApi",
            apis.iter()
                .filter_map(|a| a.name().map(str::to_string))
                .collect(),
        );
        let keys = aws
            .apigateway
            .get_api_keys()
            .limit(500)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await?;
        add(
            "ApiKey",
            keys.iter()
                .filter_map(|k| k.name().map(str::to_string))
                .collect(),
        );
        let plans = aws
            .apigateway
            .get_usage_plans()
            .limit(500)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await?;
        add(
            "UsagePlan",
            plans
                .iter()
                .filter_map(|p| p.name().map(str::to_string))
                .collect(),
        );
        let alarms = aws
            .cloudwatch
            .describe_alarms()
            .alarm_name_prefix(&prefix)
            .send()
            .await?;
        add(
            "Alarm",
            alarms
                .metric_alarms()
                .iter()
                .filter_map(|a| a.alarm_name().map(str::to_string))
                .collect(),
        );
        for list in found.values_mut() {
            list.sort();
        }
        Ok(Self(found))
    }

    /// Names found more than once, by kind.
    pub fn duplicates(&self) -> BTreeMap<&'static str, Vec<String>> {
        self.0
            .iter()
            .filter_map(|(kind, names)| {
                let mut seen = std::collections::BTreeSet::new();
                let twice: Vec<String> =
                    names.iter().filter(|n| !seen.insert(*n)).cloned().collect();
                (!twice.is_empty()).then_some((*kind, twice))
            })
            .collect()
    }

    /// How many resources were found in all.
    pub fn total(&self) -> usize {
        self.0.values().map(Vec::len).sum()
    }
}
