//! Manifests in and the CRD out, in YAML, one library (serde-saphyr) and one set of rules: kubectl's.
//!
//! kubectl reads YAML 1.1, where an unquoted `OFF`, `yes` or `on` is a boolean and `0755` an octal
//! number. Reading a manifest, a plain scalar that YAML 1.1 would type as a boolean, number or null is
//! refused where the API wants a string (quote it), booleans are read in their YAML 1.1 spellings, and
//! zero-prefixed integers as octal. Like `kubectl apply` (strict field validation), a manifest must be one
//! object of this API, and an unknown field is an error naming its path. Writing the CRD, every string a
//! YAML 1.1 reader would take for another type is quoted.

use std::path::Path;

use kube::CustomResourceExt;
use serde::Deserialize;

use crate::api::{validate, validate_metadata, TransactionPipeline, ValidationErrors};

pub const API_VERSION: &str = "tap.dev/v1alpha1";
pub const KIND: &str = "TransactionPipeline";

/// Why a manifest was refused. Each names the file and, where there is one, the field path.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Yaml { path: String, message: String },
    #[error("{path}: {field}: {message}")]
    Field {
        path: String,
        field: String,
        message: String,
    },
    #[error("{path}: unknown field{} {}: not in the {KIND} API (a typo? `kubectl explain transactionpipeline.spec --recursive` lists the fields)", if .fields.len() > 1 { "s" } else { "" }, .fields.join(", "))]
    UnknownFields { path: String, fields: Vec<String> },
    #[error("{path}: {0}", .errors)]
    Invalid {
        path: String,
        errors: ValidationErrors,
    },
}

impl ManifestError {
    /// The validation errors, when that is what it is.
    pub fn validation(&self) -> Option<&ValidationErrors> {
        match self {
            ManifestError::Invalid { errors, .. } => Some(errors),
            _ => None,
        }
    }
}

/// kubectl's reading of YAML (1.1 scalars), strict about what the API types: see the module doc.
fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = false;
    options.no_schema = true;
    options.legacy_octal_numbers = true;
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    options.with_snippet = false;
    options
}

/// `apiVersion` and `kind`, read first: another API's object is refused before its fields are.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    api_version: Option<String>,
    kind: Option<String>,
}

/// Reads a manifest's text: one `tap.dev/v1alpha1` `TransactionPipeline`, no unknown field, every value
/// of the type the API says. Does not check the rules of [`validate`].
pub fn parse_manifest(text: &str, path: &str) -> Result<TransactionPipeline, ManifestError> {
    let yaml_error = |e: serde_saphyr::Error| ManifestError::Yaml {
        path: path.into(),
        message: e.to_string(),
    };
    let types: TypeMeta =
        serde_saphyr::from_str_with_options(text, yaml_options()).map_err(yaml_error)?;
    let (field, got) = match (types.api_version.as_deref(), types.kind.as_deref()) {
        (Some(API_VERSION), Some(KIND)) => ("", String::new()),
        (None, _) => ("apiVersion", "none".to_string()),
        (_, None) => ("kind", "none".to_string()),
        (Some(v), Some(k)) => (
            if v == API_VERSION {
                "kind"
            } else {
                "apiVersion"
            },
            format!("{v} {k}"),
        ),
    };
    if !field.is_empty() {
        return Err(ManifestError::Field {
            path: path.into(),
            field: field.into(),
            message: format!(
                "this command takes a {KIND} (apiVersion: {API_VERSION}, kind: {KIND}); got {got}"
            ),
        });
    }

    let mut unknown = Vec::new();
    let mut failed_at = None;
    let pipeline =
        serde_saphyr::with_deserializer_from_str_with_options(text, yaml_options(), |de| {
            let mut note = |field: serde_ignored::Path<'_>| {
                // serde_ignored writes `?` for the inside of an `Option`: not a segment users see.
                let field = field.to_string().replace(".?.", ".");
                if field != "apiVersion" && field != "kind" {
                    unknown.push(field);
                }
            };
            let de = serde_ignored::Deserializer::new(de, &mut note);
            serde_path_to_error::deserialize::<_, TransactionPipeline>(de).map_err(|e| {
                failed_at = Some(e.path().to_string());
                e.into_inner()
            })
        });
    let pipeline = match (pipeline, failed_at) {
        (Ok(pipeline), _) => pipeline,
        (Err(e), Some(field)) if field != "." => {
            let mut message = e.to_string();
            if matches!(e, serde_saphyr::Error::QuotingRequired { .. }) {
                message.push_str(
                    ": kubectl reads YAML 1.1, where an unquoted OFF, ON, yes, no, y, n, a number or null is not a string: quote it, e.g. logLevel: 'OFF'",
                );
            }
            return Err(ManifestError::Field {
                path: path.into(),
                field,
                message,
            });
        }
        (Err(e), _) => return Err(yaml_error(e)),
    };
    if !unknown.is_empty() {
        return Err(ManifestError::UnknownFields {
            path: path.into(),
            fields: unknown,
        });
    }
    Ok(pipeline)
}

/// Reads a manifest and checks everything that needs no AWS call: the object's name and namespace and
/// every rule of [`validate`].
pub fn load_manifest(path: &Path) -> Result<TransactionPipeline, ManifestError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: shown.clone(),
        source,
    })?;
    let pipeline = parse_manifest(&text, &shown)?;
    let mut errors = validate_metadata(&pipeline.metadata)
        .err()
        .map(|e| e.0)
        .unwrap_or_default();
    errors.extend(
        validate(&pipeline.spec)
            .err()
            .map(|e| e.0)
            .unwrap_or_default(),
    );
    if !errors.is_empty() {
        return Err(ManifestError::Invalid {
            path: shown,
            errors: ValidationErrors(errors),
        });
    }
    Ok(pipeline)
}

/// The CustomResourceDefinition as YAML that kubectl (YAML 1.1) reads back unchanged: serde-saphyr quotes
/// every string a YAML 1.1 reader would type otherwise (the `logLevel` enum's `'OFF'`).
pub fn crd_yaml() -> String {
    let mut options = serde_saphyr::SerializerOptions::default();
    // Long one-line strings (CEL rules, patterns) stay on one line, not folded.
    options.folded_wrap_chars = 100_000;
    serde_saphyr::to_string_with_options(&TransactionPipeline::crd(), options)
        .expect("the CRD serializes to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "apiVersion: tap.dev/v1alpha1
kind: TransactionPipeline
metadata: {name: p, namespace: default}
spec:
  environmentSuffix: dev1
  functions:
    csvValidator: {image: {tag: v1}}
    dataTransformer: {image: {tag: v1}}
    notificationSender: {image: {tag: v1}}
";

    fn refused(yaml: &str) -> String {
        parse_manifest(yaml, "m.yaml").unwrap_err().to_string()
    }

    #[test]
    fn a_valid_manifest_reads_with_defaults() {
        let p = parse_manifest(BASE, "m.yaml").unwrap();
        assert_eq!(p.spec.functions.csv_validator.memory_mb, 512);
        assert_eq!(p.metadata.name.as_deref(), Some("p"));
    }

    #[test]
    fn an_unknown_field_is_refused_with_its_path() {
        let yaml = BASE.replace(
            "csvValidator: {image: {tag: v1}}",
            "csvValidator: {image: {tag: v1}, memoryMB: 2048}",
        );
        let err = refused(&yaml);
        assert!(
            err.contains("unknown field spec.functions.csvValidator.memoryMB"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_field_inside_an_optional_object_is_named_by_its_path() {
        let yaml = BASE.replace(
            "spec:\n",
            "spec:\n  aws: {roleArn: 'arn:aws:iam::123456789012:role/d', externalID: abc}\n",
        );
        let err = refused(&yaml);
        assert!(err.contains("unknown field spec.aws.externalID"), "{err}");
    }

    #[test]
    fn another_kind_is_refused() {
        let yaml = BASE
            .replace("tap.dev/v1alpha1", "apps/v1")
            .replace("TransactionPipeline", "Deployment");
        let err = refused(&yaml);
        assert!(
            err.contains("apiVersion: this command takes a TransactionPipeline"),
            "{err}"
        );
        assert!(err.contains("apps/v1 Deployment"), "{err}");
        let err = refused(&BASE.replace("kind: TransactionPipeline\n", ""));
        assert!(err.contains("m.yaml: kind:"), "{err}");
    }

    #[test]
    fn yaml_1_1_booleans_are_read_like_kubectl_or_refused_with_a_hint() {
        let yaml = format!("{BASE}  stateMachine: {{logLevel: OFF}}\n");
        let err = refused(&yaml);
        assert!(err.contains("spec.stateMachine.logLevel"), "{err}");
        assert!(err.contains("quote it"), "{err}");
        let quoted = format!("{BASE}  stateMachine: {{logLevel: 'OFF'}}\n");
        let p = parse_manifest(&quoted, "m.yaml").unwrap();
        assert_eq!(p.spec.state_machine.log_level, crate::api::LogLevel::Off);
        let env = BASE.replace(
            "dataTransformer: {image: {tag: v1}}",
            "dataTransformer: {image: {tag: v1}, environment: {DEBUG: yes}}",
        );
        let err = refused(&env);
        assert!(
            err.contains("spec.functions.dataTransformer.environment.DEBUG"),
            "{err}"
        );
    }

    #[test]
    fn a_wrong_type_names_its_field() {
        let yaml = BASE.replace(
            "csvValidator: {image: {tag: v1}}",
            "csvValidator: {image: {tag: v1}, memoryMb: lots}",
        );
        let err = refused(&yaml);
        assert!(
            err.contains("spec.functions.csvValidator.memoryMb"),
            "{err}"
        );
    }
}
