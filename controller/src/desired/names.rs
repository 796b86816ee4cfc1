//! AWS names of every resource of a stack, derived from the suffix: `tap-<suffix>-…`.

/// The three functions, by their short name (also their repository's and log group's).
pub const FUNCTIONS: [&str; 3] = ["csv-validator", "data-transformer", "notification-sender"];

pub fn prefix(suffix: &str) -> String {
    format!("tap-{suffix}")
}

/// The bucket carries the account id too: bucket names are global.
pub fn bucket(suffix: &str, account_id: &str) -> String {
    format!("tap-{suffix}-uploads-{account_id}")
}

pub fn transactions_table(suffix: &str) -> String {
    format!("tap-{suffix}-transactions")
}

pub fn status_table(suffix: &str) -> String {
    format!("tap-{suffix}-processing-status")
}

pub fn repository(suffix: &str, function: &str) -> String {
    format!("tap-{suffix}-{function}")
}

pub fn function(suffix: &str, function: &str) -> String {
    format!("tap-{suffix}-{function}")
}

pub fn function_role(suffix: &str, function: &str) -> String {
    format!("tap-{suffix}-{function}-role")
}

pub fn function_log_group(suffix: &str, function: &str) -> String {
    format!("/aws/lambda/tap-{suffix}-{function}")
}

pub fn state_machine(suffix: &str) -> String {
    format!("tap-{suffix}-pipeline")
}

pub fn state_machine_role(suffix: &str) -> String {
    format!("tap-{suffix}-pipeline-role")
}

pub fn state_machine_log_group(suffix: &str) -> String {
    format!("/aws/vendedlogs/states/tap-{suffix}-pipeline")
}

pub fn dlq(suffix: &str) -> String {
    format!("tap-{suffix}-dlq")
}

pub fn topic(suffix: &str) -> String {
    format!("tap-{suffix}-notifications")
}

pub fn rest_api(suffix: &str) -> String {
    format!("tap-{suffix}-api")
}

pub fn usage_plan(suffix: &str) -> String {
    format!("tap-{suffix}-usage-plan")
}

pub fn api_key(suffix: &str) -> String {
    format!("tap-{suffix}-api-key")
}

pub fn function_errors_alarm(suffix: &str, function: &str) -> String {
    format!("tap-{suffix}-{function}-errors")
}

pub fn state_machine_failed_alarm(suffix: &str) -> String {
    format!("tap-{suffix}-pipeline-failed")
}

/// camelCase key of a function in the spec and in status outputs (`csv-validator` → `csvValidator`).
pub fn camel(function: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in function.chars() {
        if c == '-' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A Lambda permission's resource name: the function and the statement id.
pub fn permission(function: &str, statement_id: &str) -> String {
    format!("{function}/{statement_id}")
}

/// A stage's resource name: the REST API and the stage.
pub fn stage(rest_api: &str, stage: &str) -> String {
    format!("{rest_api}/{stage}")
}

/// Statement ids of the two invoke permissions of csv-validator.
pub const S3_INVOKE_STATEMENT: &str = "tap-s3-invoke";
pub const API_INVOKE_STATEMENT: &str = "tap-apigateway-invoke";

/// The stack's control table (intents, the writer's lock).
pub fn control_table(suffix: &str) -> String {
    format!("tap-{suffix}-control")
}

/// AWS's limit on a tag value.
pub const TAG_VALUE_LIMIT: usize = 256;

/// The value of the ownership tag for a pipeline `namespace/name`: the key itself when it fits a tag value
/// (Kubernetes allows a 253-character name and a 63-character namespace; AWS 256 characters per tag
/// value), else the head of the key and a digest of the whole, so two long keys never share a value.
pub fn owner_tag(owner: &str) -> String {
    if owner.len() <= TAG_VALUE_LIMIT {
        return owner.to_string();
    }
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(owner.as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut head = TAG_VALUE_LIMIT - digest.len() - 1;
    while !owner.is_char_boundary(head) {
        head -= 1;
    }
    format!("{}~{digest}", &owner[..head])
}
