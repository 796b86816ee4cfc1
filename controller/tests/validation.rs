//! One table of invalid manifests, checked two ways: by the CLI's reading and validation (everything,
//! before any AWS call) and by the generated CRD's OpenAPI schema and CEL rules (what the API server can
//! check, so `kubectl apply` fails at once).

use kube::CustomResourceExt;
use serde_json::Value;
use tap_controller::api::{validate, validate_metadata, validate_stack, TransactionPipeline};
use tap_controller::cli::parse_manifest;
use tap_controller::desired::{build_stack, StackEnv};

const ACCOUNT: &str = "123456789012";
const REGION: &str = "us-east-1";

/// A valid manifest; each case replaces one `(from, to)` in it.
const BASE: &str = "apiVersion: tap.dev/v1alpha1
kind: TransactionPipeline
metadata: {name: p, namespace: default}
spec:
  environmentSuffix: dev1
  region: us-east-1
  tags: {team: payments}
  functions:
    csvValidator: {image: {tag: v1}}
    dataTransformer: {image: {tag: v1}, environment: {LOG: info}}
    notificationSender: {image: {tag: v1}}
  alarms: {lambdaErrorThreshold: 1, stateMachineFailedThreshold: 1, evaluationPeriods: 1, periodSeconds: 300}
  notifications: {emails: [ops@example.com]}
  logRetentionDays: 14
";

/// Where the API server can refuse it too.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Crd {
    /// The schema or a CEL rule refuses it.
    Refuses,
    /// Only the controller can tell (the account, the controller's own variables).
    CannotTell,
}

struct Case {
    name: &'static str,
    from: &'static str,
    to: String,
    /// The field the CLI names.
    field: &'static str,
    crd: Crd,
}

fn case(
    name: &'static str,
    from: &'static str,
    to: impl Into<String>,
    field: &'static str,
    crd: Crd,
) -> Case {
    Case {
        name,
        from,
        to: to.into(),
        field,
        crd,
    }
}

fn cases() -> Vec<Case> {
    use Crd::*;
    let csv = "csvValidator: {image: {tag: v1}}";
    let env = "environment: {LOG: info}";
    let tags = "tags: {team: payments}";
    let many_tags: Vec<String> = (0..49).map(|i| format!("t{i}: v")).collect();
    let big_env: Vec<String> = (0..300)
        .map(|i| format!("V{i}: {}", "x".repeat(10)))
        .collect();
    vec![
        case("tag and uri", csv, format!("csvValidator: {{image: {{tag: v1, uri: '{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/r:v1'}}}}"), "spec.functions.csvValidator.image", Refuses),
        case("neither tag nor uri", csv, "csvValidator: {image: {}}", "spec.functions.csvValidator.image", Refuses),
        case("image tag characters", csv, "csvValidator: {image: {tag: '-bad/tag'}}", "spec.functions.csvValidator.image.tag", Refuses),
        case("docker.io image", csv, "csvValidator: {image: {uri: 'docker.io/library/python:3.12'}}", "spec.functions.csvValidator.image.uri", Refuses),
        case("garbage image", csv, "csvValidator: {image: {uri: '/:'}}", "spec.functions.csvValidator.image.uri", Refuses),
        case("image of another account", csv, format!("csvValidator: {{image: {{uri: '999999999999.dkr.ecr.{REGION}.amazonaws.com/r:v1'}}}}"), "spec.functions.csvValidator.image.uri", CannotTell),
        case("image of another region", csv, format!("csvValidator: {{image: {{uri: '{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/r:v1'}}}}"), "spec.functions.csvValidator.image.uri", CannotTell),
        case("environment over 4 KB", env, format!("environment: {{{}}}", big_env.join(", ")), "spec.functions.dataTransformer.environment", CannotTell),
        case("reserved Lambda variable", env, "environment: {LAMBDA_TASK_ROOT: /x}", "spec.functions.dataTransformer.environment.LAMBDA_TASK_ROOT", Refuses),
        case("AWS_ variable", env, "environment: {AWS_REGION: x}", "spec.functions.dataTransformer.environment.AWS_REGION", Refuses),
        case("controller's variable", env, "environment: {BUCKET_NAME: x}", "spec.functions.dataTransformer.environment.BUCKET_NAME", Refuses),
        case("e-mail with a space", "ops@example.com", "'ops team@example.com'", "spec.notifications.emails[0]", Refuses),
        case("e-mail with ..", "ops@example.com", "'ops..x@example.com'", "spec.notifications.emails[0]", Refuses),
        case("e-mail with <script>", "ops@example.com", "'<script>@example.com'", "spec.notifications.emails[0]", Refuses),
        case("tag key characters", tags, "tags: {'cost*center<>': x}", "spec.tags.cost*center<>", Refuses),
        case("tag value characters", tags, "tags: {team: 'a<b'}", "spec.tags.team", Refuses),
        case("tag key too long", tags, format!("tags: {{{}: x}}", "k".repeat(129)), "spec.tags.kkk", Refuses),
        case("tag value too long", tags, format!("tags: {{team: {}}}", "v".repeat(257)), "spec.tags.team", Refuses),
        case("aws: tag", tags, "tags: {'aws:cost': x}", "spec.tags.aws:cost", Refuses),
        case("tap.dev/ tag", tags, "tags: {'tap.dev/pipeline': x}", "spec.tags.tap.dev/pipeline", Refuses),
        case("too many tags", tags, format!("tags: {{{}}}", many_tags.join(", ")), "spec.tags", Refuses),
        case("log retention", "logRetentionDays: 14", "logRetentionDays: 15", "spec.logRetentionDays", Refuses),
        case("period not 10, 30 or a minute multiple", "periodSeconds: 300", "periodSeconds: 45", "spec.alarms.periodSeconds", Refuses),
        case("period over a day", "periodSeconds: 300", "periodSeconds: 90000", "spec.alarms.periodSeconds", Refuses),
        case("region", "region: us-east-1", "region: mars-north-1", "spec.region", Refuses),
        case("role ARN of a user", "region: us-east-1", "region: us-east-1\n  aws: {roleArn: 'arn:aws:iam::123456789012:user/deployer'}", "spec.aws.roleArn", Refuses),
        case("role ARN without an account", "region: us-east-1", "region: us-east-1\n  aws: {roleArn: 'arn:aws:iam:::role/deployer'}", "spec.aws.roleArn", Refuses),
        case("external id with spaces", "region: us-east-1", "region: us-east-1\n  aws: {roleArn: 'arn:aws:iam::123456789012:role/deployer', externalId: 'a b'}", "spec.aws.externalId", Refuses),
        case("name of 300 characters", "name: p,", format!("name: {},", "p".repeat(300)), "metadata.name", Refuses),
        case("memory", csv, "csvValidator: {image: {tag: v1}, memoryMb: 64}", "spec.functions.csvValidator.memoryMb", Refuses),
    ]
}

/// The CLI: every error field, from reading the manifest and from the checks needing the account.
fn cli_errors(text: &str) -> Vec<String> {
    let pipeline = parse_manifest(text, "m.yaml").expect("the case parses");
    let mut fields = Vec::new();
    for result in [
        validate_metadata(&pipeline.metadata),
        validate(&pipeline.spec),
    ] {
        if let Err(e) = result {
            fields.extend(e.0.into_iter().map(|e| e.field));
        }
    }
    if !fields.is_empty() {
        // As the CLI does: the stack is built only from a spec that passed.
        return fields;
    }
    let env = StackEnv {
        account_id: ACCOUNT.into(),
        region: REGION.into(),
        partition: "aws".into(),
        owner: pipeline.owner_key(),
        extra_tags: Default::default(),
    };
    if let Err(e) = validate_stack(&pipeline.spec, &build_stack(&pipeline.spec, &env)) {
        fields.extend(e.0.into_iter().map(|e| e.field));
    }
    fields
}

fn openapi_schema() -> Value {
    let crd = serde_json::to_value(TransactionPipeline::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// The API server's view: the OpenAPI schema (as JSON schema) and the CEL rules.
fn crd_errors(schema: &Value, text: &str) -> Vec<String> {
    let object: Value = serde_saphyr::from_str(text).unwrap();
    let mut errors = Vec::new();
    // The API server checks a 63-character namespace and a 253-character name before the schema; the
    // schema's metadata is an open object.
    let validator = jsonschema::validator_for(schema).expect("the CRD schema compiles");
    errors.extend(
        validator
            .iter_errors(&object)
            .map(|e| format!("schema: {e}")),
    );
    if let Err(e) = kube::core::cel::Validator::new().validate(schema, &object, None) {
        errors.extend(e.into_vec().into_iter().map(|e| format!("cel: {e}")));
    }
    errors
}

#[test]
fn the_base_manifest_passes_both() {
    assert_eq!(cli_errors(BASE), Vec::<String>::new());
    assert_eq!(crd_errors(&openapi_schema(), BASE), Vec::<String>::new());
}

#[test]
fn every_invalid_manifest_is_refused_by_the_cli_and_where_it_can_by_the_crd() {
    let schema = openapi_schema();
    let mut wrong = Vec::new();
    for c in cases() {
        assert!(
            BASE.contains(c.from),
            "{}: {:?} not in the base",
            c.name,
            c.from
        );
        let text = BASE.replacen(c.from, &c.to, 1);
        let cli = cli_errors(&text);
        if !cli.iter().any(|f| f.starts_with(c.field)) {
            wrong.push(format!(
                "{}: the CLI named {cli:?}, not {}",
                c.name, c.field
            ));
        }
        let crd = crd_errors(&schema, &text);
        match c.crd {
            Crd::Refuses if crd.is_empty() => {
                wrong.push(format!("{}: the CRD accepts it", c.name));
            }
            Crd::CannotTell if !crd.is_empty() => {
                wrong.push(format!(
                    "{}: the CRD refuses it ({crd:?}): mark it Refuses",
                    c.name
                ));
            }
            _ => {}
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// The same table against a real API server, when `KUBECONFIG` names one (kind in the GitHub workflow):
/// the CRD is applied, the base manifest is accepted and every case the CRD refuses is refused, naming
/// the field (server-side dry run: nothing is stored). Without a cluster it prints why and returns.
#[tokio::test]
async fn a_real_api_server_refuses_what_the_crd_refuses_when_kubeconfig_names_one() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
    use kube::core::ApiResource;
    use kube::runtime::wait::{await_condition, conditions};

    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = match tap_tests::cluster::from_kubeconfig().await {
        Ok(client) => client,
        Err(reason) => {
            eprintln!("SKIP the API server check: {reason} (the table was checked against the generated schema and CEL rules)");
            return;
        }
    };
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = TransactionPipeline::crd();
    let name = crd.metadata.name.clone().unwrap();
    crds.patch(
        &name,
        &PatchParams::apply("tap-validation-test").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("the CRD applies");
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        await_condition(crds, &name, conditions::is_crd_established()),
    )
    .await
    .expect("the CRD is established within 60 s")
    .unwrap();
    let resource = ApiResource::erase::<TransactionPipeline>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client, "default", &resource);
    let dry_run = PostParams {
        dry_run: true,
        field_manager: None,
    };
    let object = |text: &str| -> DynamicObject {
        serde_json::from_value(serde_saphyr::from_str::<Value>(text).unwrap()).unwrap()
    };
    api.create(&dry_run, &object(BASE))
        .await
        .expect("the API server accepts the base manifest");
    let mut wrong = Vec::new();
    let mut refused = 0;
    for c in cases().into_iter().filter(|c| c.crd == Crd::Refuses) {
        let text = BASE.replacen(c.from, &c.to, 1);
        let leaf = c.field.rsplit('.').next().unwrap();
        match api.create(&dry_run, &object(&text)).await {
            Err(kube::Error::Api(e)) if e.code == 422 && e.message.contains(leaf) => refused += 1,
            Err(e) => wrong.push(format!("{}: refused, but not naming {leaf}: {e}", c.name)),
            Ok(_) => wrong.push(format!("{}: the API server accepts it", c.name)),
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    eprintln!("the API server refused all {refused} cases the CRD refuses");
}
