//! One module per AWS service behind one trait. A driver reads a resource back into the same type as its
//! desired spec (normalised: policy JSON parsed, server-side defaults folded, ids mapped back to names), so
//! the engine can diff the two field by field; it creates, updates the drifted fields, and deletes.
//! Not-found on delete is success.

pub mod apigateway;
pub mod cloudwatch;
pub mod dynamodb;
pub mod ecr;
pub mod iam;
pub mod lambda;
pub mod logs;
pub mod s3;
pub mod sfn;
pub mod sns;
pub mod sqs;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;

use serde::Serialize;
use serde_json::Value;

use crate::aws::{Aws, AwsError};
use crate::desired::{ResourceId, Tags};

/// A value that must never reach logs, status or events (the API key).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(pub String);

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// What a converged resource exposes to its dependents and to the pipeline's outputs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outputs {
    /// ARN (or, for resources without one, the most useful identifier).
    pub arn: Option<String>,
    /// Server-assigned id (REST API id, usage plan id).
    pub id: Option<String>,
    /// URL (queue URL, API endpoint, repository URI).
    pub url: Option<String>,
    /// Anything else, by name (e.g. `apiKeyId`).
    pub extra: BTreeMap<String, String>,
    /// Secret material (the API key value), delivered to a Kubernetes Secret only.
    pub secret: Option<SecretValue>,
}

/// A resource as AWS reports it, in the desired spec's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed<S> {
    pub spec: S,
    /// Tags, without AWS-reserved `aws:` keys.
    pub tags: Tags,
    pub outputs: Outputs,
}

/// One field that differs between desired and observed.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldDiff {
    /// Dotted path, e.g. `memoryMb`, `environment.LOG_LEVEL`, `tags.team`.
    pub field: String,
    pub expected: Value,
    pub actual: Value,
}

impl FieldDiff {
    /// The top-level field this path is under (`environment.X` → `environment`).
    pub fn top(&self) -> &str {
        self.field.split('.').next().unwrap_or(&self.field)
    }
}

/// The diffs of one resource, with a quick test for which top-level fields changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    pub diffs: Vec<FieldDiff>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.diffs.is_empty()
    }

    /// Whether any diff sits under the top-level field `field` (serde name, e.g. `memoryMb`, `tags`).
    pub fn touches(&self, field: &str) -> bool {
        self.diffs.iter().any(|d| d.top() == field)
    }

    pub fn touches_any(&self, fields: &[&str]) -> bool {
        fields.iter().any(|f| self.touches(f))
    }

    pub fn top_fields(&self) -> BTreeSet<&str> {
        self.diffs.iter().map(FieldDiff::top).collect()
    }
}

/// What every driver call can see besides its own resource.
pub struct Ctx<'a> {
    pub aws: &'a Aws,
    /// Outputs of the resources this one depends on (converged earlier in the same walk).
    pub deps: &'a BTreeMap<ResourceId, Outputs>,
}

impl Ctx<'_> {
    /// The outputs of a dependency of the given kind and name, if it converged.
    pub fn dep(&self, kind: crate::desired::Kind, name: &str) -> Option<&Outputs> {
        self.deps.get(&ResourceId {
            kind,
            name: name.to_string(),
        })
    }
}

/// The one trait every AWS service module implements, for one kind of resource.
pub trait Driver: Sync {
    type Spec: Serialize + Clone + PartialEq + fmt::Debug + Send + Sync;

    /// Reads the resource named `name`; `Ok(None)` when it does not exist. Read calls only.
    fn observe(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &Self::Spec,
    ) -> impl Future<Output = Result<Option<Observed<Self::Spec>>, AwsError>> + Send;

    /// Creates the resource with its tags, and every sub-setting of the spec.
    fn create(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &Self::Spec,
        tags: &Tags,
    ) -> impl Future<Output = Result<Outputs, AwsError>> + Send;

    /// Rewrites the drifted fields (`changes`, never empty), tags included; nothing else.
    fn update(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        desired: &Self::Spec,
        tags: &Tags,
        observed: &Observed<Self::Spec>,
        changes: &Changes,
    ) -> impl Future<Output = Result<Outputs, AwsError>> + Send;

    /// Deletes the resource (already proven ours). Not-found is success.
    fn delete(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        observed: &Observed<Self::Spec>,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
}

/// Field-by-field difference between a desired and an observed value, as JSON: objects are compared key
/// by key (so maps such as `environment` and `tags` report one entry per key); anything else is compared
/// whole; numbers compare by value (`100` equals `100.0`).
pub fn diff_values(expected: &Value, actual: &Value, path: &str, out: &mut Vec<FieldDiff>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let keys: BTreeSet<&String> = e.keys().chain(a.keys()).collect();
            for key in keys {
                diff_values(
                    e.get(key).unwrap_or(&Value::Null),
                    a.get(key).unwrap_or(&Value::Null),
                    &join(key),
                    out,
                );
            }
        }
        (Value::Number(e), Value::Number(a)) if e.as_f64() == a.as_f64() => {}
        (e, a) if e == a => {}
        (e, a) => out.push(FieldDiff {
            field: path.to_string(),
            expected: e.clone(),
            actual: a.clone(),
        }),
    }
}

/// Diffs a desired spec and tags against what was observed.
pub fn diff<S: Serialize>(desired: &S, desired_tags: &Tags, observed: &Observed<S>) -> Changes {
    let mut diffs = Vec::new();
    let to_json = |s: &S| serde_json::to_value(s).expect("specs serialize to JSON");
    diff_values(&to_json(desired), &to_json(&observed.spec), "", &mut diffs);
    let tags = |t: &Tags| serde_json::to_value(t).expect("tags serialize to JSON");
    diff_values(
        &tags(desired_tags),
        &tags(&observed.tags),
        "tags",
        &mut diffs,
    );
    Changes { diffs }
}

/// Tags to set and tag keys to remove to go from `observed` to `desired`.
pub fn tag_delta(desired: &Tags, observed: &Tags) -> (Tags, Vec<String>) {
    let set = desired
        .iter()
        .filter(|(k, v)| observed.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let remove = observed
        .keys()
        .filter(|k| !desired.contains_key(*k))
        .cloned()
        .collect();
    (set, remove)
}

/// Drops AWS-reserved tags (`aws:…`), which no one can set or remove.
pub fn user_tags(tags: impl IntoIterator<Item = (String, String)>) -> Tags {
    tags.into_iter()
        .filter(|(k, _)| !k.starts_with("aws:"))
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_reports_each_map_key_and_ignores_number_form() {
        let mut out = Vec::new();
        diff_values(
            &json!({"memoryMb": 512, "rate": 100, "environment": {"A": "1", "B": "2"}}),
            &json!({"memoryMb": 256, "rate": 100.0, "environment": {"A": "1", "C": "3"}}),
            "",
            &mut out,
        );
        let fields: Vec<&str> = out.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["environment.B", "environment.C", "memoryMb"]);
        assert_eq!(out[2].expected, json!(512));
        assert_eq!(out[2].actual, json!(256));
    }

    #[test]
    fn policies_compare_regardless_of_encoding_order_and_singletons() {
        let ours = normalise_policy(
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::b/*"}]}),
        );
        let iam = parse_policy("%7B%22Statement%22%3A%5B%7B%22Resource%22%3A%22arn%3Aaws%3As3%3A%3A%3Ab%2F%2A%22%2C%22Action%22%3A%22s3%3AGetObject%22%2C%22Effect%22%3A%22Allow%22%7D%5D%2C%22Version%22%3A%222012-10-17%22%7D");
        assert_eq!(ours, iam);
    }

    #[test]
    fn tag_delta_sets_changed_and_removes_foreign() {
        let desired: Tags = [("a".into(), "1".into()), ("b".into(), "2".into())].into();
        let observed: Tags = [
            ("a".into(), "1".into()),
            ("b".into(), "x".into()),
            ("c".into(), "3".into()),
        ]
        .into();
        let (set, remove) = tag_delta(&desired, &observed);
        assert_eq!(set, [("b".to_string(), "2".to_string())].into());
        assert_eq!(remove, vec!["c".to_string()]);
    }
}
