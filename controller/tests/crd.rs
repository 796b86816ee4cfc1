//! The committed CRD is what the Rust types generate, and it documents every field.

use serde_json::Value;
use tap_controller::cli::crd_yaml;

const COMMITTED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crds/transactionpipeline.yaml"
);

#[test]
fn committed_crd_is_current() {
    let committed =
        std::fs::read_to_string(COMMITTED).expect("crds/transactionpipeline.yaml exists");
    assert!(
        committed == crd_yaml(),
        "crds/transactionpipeline.yaml is stale: regenerate it with `cargo run -p tap-controller -- crd > crds/transactionpipeline.yaml`"
    );
}

fn undocumented(schema: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            let here = format!("{path}.{name}");
            if prop
                .get("description")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                out.push(here.clone());
            }
            undocumented(prop, &here, out);
        }
    }
    if let Some(items) = schema.get("items") {
        undocumented(items, &format!("{path}[]"), out);
    }
    if let Some(extra) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        undocumented(extra, &format!("{path}.*"), out);
    }
}

#[test]
fn every_spec_and_status_field_has_a_description() {
    let crd: Value = serde_saphyr::from_str(&crd_yaml()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut missing = Vec::new();
    undocumented(&schema["properties"]["spec"], "spec", &mut missing);
    undocumented(&schema["properties"]["status"], "status", &mut missing);
    assert!(
        missing.is_empty(),
        "fields without a description (kubectl explain shows nothing): {missing:#?}"
    );
}

#[test]
fn api_contract_names_and_printer_columns() {
    let crd: Value = serde_saphyr::from_str(&crd_yaml()).unwrap();
    assert_eq!(crd["spec"]["group"], "tap.dev");
    assert_eq!(crd["spec"]["names"]["plural"], "transactionpipelines");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "txp");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(
        version["subresources"]["status"].is_object(),
        "status subresource"
    );
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        ["Suffix", "Phase", "Ready", "Drift", "Endpoint", "Account", "Region", "Age"]
    );
    // ENDPOINT, ACCOUNT and REGION only with `-o wide`.
    let priority = |name: &str| {
        version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
            .get("priority")
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    assert_eq!(priority("Endpoint"), 1);
    assert_eq!(priority("Account"), 1);
    assert_eq!(priority("Region"), 1);
    assert_eq!(priority("Phase"), 0);
    let status = &version["schema"]["openAPIV3Schema"]["properties"]["status"];
    let conditions = &status["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map", "{conditions}");
    assert_eq!(
        conditions["x-kubernetes-list-map-keys"],
        serde_json::json!(["type"])
    );
    // kubectl explain: the root and status say what they are, and the phase lists no null.
    let root = &version["schema"]["openAPIV3Schema"];
    assert!(
        !root["description"]
            .as_str()
            .unwrap()
            .contains("Auto-generated"),
        "{}",
        root["description"]
    );
    assert!(status["description"]
        .as_str()
        .is_some_and(|d| !d.is_empty()));
    let phases = status["properties"]["phase"]["enum"].as_array().unwrap();
    assert!(!phases.iter().any(Value::is_null), "{phases:?}");
    let suffix = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["environmentSuffix"];
    assert_eq!(suffix["pattern"], "^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$");
    assert_eq!(
        suffix["x-kubernetes-validations"][0]["rule"],
        "self == oldSelf"
    );
    let required = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["required"]
        .as_array()
        .unwrap();
    let required: Vec<&str> = required.iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(required, ["environmentSuffix", "functions"]);
}

#[test]
fn enum_values_stay_strings_for_yaml_1_1_readers() {
    // kubectl reads YAML 1.1, where an unquoted OFF is the boolean false.
    let yaml = crd_yaml();
    assert!(
        yaml.contains("- 'OFF'") || yaml.contains("- \"OFF\""),
        "the logLevel enum's OFF must be quoted"
    );
    assert!(!yaml.lines().any(|l| l.trim() == "- OFF"));
    let crd: Value = serde_saphyr::from_str(&yaml).unwrap();
    let level = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["stateMachine"]["properties"]["logLevel"];
    assert_eq!(
        level["enum"],
        serde_json::json!(["ALL", "ERROR", "FATAL", "OFF"])
    );
}
