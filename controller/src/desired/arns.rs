//! ARNs, URIs and endpoints of the stack's resources, computed from names (resources can reference each
//! other without waiting for AWS to answer), and the one parser for ARNs read back from AWS.

use std::fmt;

/// Where the stack lives: partition, region and account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arns {
    pub partition: String,
    pub region: String,
    pub account_id: String,
}

/// The DNS suffix of AWS endpoints in a partition (`amazonaws.com`, `amazonaws.com.cn` in China, …).
pub fn dns_suffix(partition: &str) -> &'static str {
    match partition {
        "aws-cn" => "amazonaws.com.cn",
        "aws-iso" => "c2s.ic.gov",
        "aws-iso-b" => "sc2s.sgov.gov",
        "aws-iso-e" => "cloud.adc-e.uk",
        "aws-iso-f" => "csp.hci.ic.gov",
        "aws-eusc" => "amazonaws.eu",
        _ => "amazonaws.com",
    }
}

impl Arns {
    fn regional(&self, service: &str, rest: &str) -> String {
        format!(
            "arn:{}:{service}:{}:{}:{rest}",
            self.partition, self.region, self.account_id
        )
    }

    fn host(&self, service: &str) -> String {
        format!("{service}.{}.{}", self.region, dns_suffix(&self.partition))
    }

    pub fn function(&self, name: &str) -> String {
        self.regional("lambda", &format!("function:{name}"))
    }
    pub fn role(&self, name: &str) -> String {
        format!(
            "arn:{}:iam::{}:role/{name}",
            self.partition, self.account_id
        )
    }
    pub fn state_machine(&self, name: &str) -> String {
        self.regional("states", &format!("stateMachine:{name}"))
    }
    pub fn queue(&self, name: &str) -> String {
        self.regional("sqs", name)
    }
    /// The queue URL as AWS forms it (used inside the state machine definition).
    pub fn queue_url(&self, name: &str) -> String {
        format!("https://{}/{}/{name}", self.host("sqs"), self.account_id)
    }
    pub fn topic(&self, name: &str) -> String {
        self.regional("sns", name)
    }
    pub fn table(&self, name: &str) -> String {
        self.regional("dynamodb", &format!("table/{name}"))
    }
    pub fn bucket(&self, name: &str) -> String {
        format!("arn:{}:s3:::{name}", self.partition)
    }
    pub fn log_group(&self, name: &str) -> String {
        self.regional("logs", &format!("log-group:{name}"))
    }
    pub fn alarm(&self, name: &str) -> String {
        self.regional("cloudwatch", &format!("alarm:{name}"))
    }
    pub fn repository(&self, name: &str) -> String {
        self.regional("ecr", &format!("repository/{name}"))
    }
    pub fn repository_uri(&self, name: &str) -> String {
        format!("{}.dkr.{}/{name}", self.account_id, self.host("ecr"))
    }
    /// An API Gateway resource path (`/restapis/<id>`, `/usageplans/<id>`, `/apikeys/<id>`, …).
    pub fn apigateway(&self, path: &str) -> String {
        format!("arn:{}:apigateway:{}::{path}", self.partition, self.region)
    }
    /// The public endpoint of a REST API's stage and path.
    pub fn rest_api_url(&self, api_id: &str, stage: &str, path: &str) -> String {
        format!(
            "https://{api_id}.{}/{stage}{path}",
            self.host("execute-api")
        )
    }
    /// Invocation URI of a Lambda function for an API Gateway integration.
    pub fn lambda_integration_uri(&self, function_arn: &str) -> String {
        format!(
            "arn:{}:apigateway:{}:lambda:path/2015-03-31/functions/{function_arn}/invocations",
            self.partition, self.region
        )
    }
    /// Pattern for API Gateway invoking a method; [`API_ID`] in it is filled in once AWS assigned the id.
    pub fn execute_api(&self, method: &str, path: &str) -> String {
        self.regional("execute-api", &format!("{API_ID}/*/{method}{path}"))
    }
}

/// Placeholder for a REST API's id in an ARN pattern of the desired model.
pub const API_ID: &str = "{api_id}";

/// An ARN read back from AWS, split into its parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arn<'a> {
    pub partition: &'a str,
    pub service: &'a str,
    pub region: &'a str,
    pub account: &'a str,
    /// Everything after the account: `function:name[:qualifier]`, `role/name`, `table/name`, `name`.
    pub resource: &'a str,
}

impl<'a> Arn<'a> {
    pub fn parse(text: &'a str) -> Option<Self> {
        let mut parts = text.splitn(6, ':');
        if parts.next()? != "arn" {
            return None;
        }
        Some(Arn {
            partition: parts.next()?,
            service: parts.next()?,
            region: parts.next()?,
            account: parts.next()?,
            resource: parts.next()?,
        })
    }

    /// The resource's name: the last path segment, without a Lambda qualifier
    /// (`function:f:$LATEST` → `f`, `role/r` → `r`, `table/t` → `t`, `q` → `q`).
    pub fn name(&self) -> &'a str {
        if let Some(rest) = self.resource.strip_prefix("function:") {
            return rest.split(':').next().unwrap_or(rest);
        }
        let last = self.resource.rsplit('/').next().unwrap_or(self.resource);
        last.rsplit(':').next().unwrap_or(last)
    }

    /// The ARN without a Lambda version or alias qualifier.
    pub fn unqualified(&self) -> String {
        match self.resource.strip_prefix("function:") {
            Some(_) => format!(
                "arn:{}:{}:{}:{}:function:{}",
                self.partition,
                self.service,
                self.region,
                self.account,
                self.name()
            ),
            None => self.to_string(),
        }
    }
}

impl fmt::Display for Arn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "arn:{}:{}:{}:{}:{}",
            self.partition, self.service, self.region, self.account, self.resource
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arns(partition: &str, region: &str) -> Arns {
        Arns {
            partition: partition.into(),
            region: region.into(),
            account_id: "123456789012".into(),
        }
    }

    #[test]
    fn endpoints_follow_the_partition() {
        let china = arns("aws-cn", "cn-north-1");
        assert_eq!(
            china.queue_url("q"),
            "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q"
        );
        assert_eq!(
            china.repository_uri("r"),
            "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/r"
        );
        assert_eq!(
            china.function("f"),
            "arn:aws-cn:lambda:cn-north-1:123456789012:function:f"
        );
        let us = arns("aws", "us-east-1");
        assert_eq!(
            us.rest_api_url("abc", "prod", "/upload"),
            "https://abc.execute-api.us-east-1.amazonaws.com/prod/upload"
        );
        assert_eq!(
            arns("aws-us-gov", "us-gov-west-1").queue_url("q"),
            "https://sqs.us-gov-west-1.amazonaws.com/123456789012/q"
        );
    }

    #[test]
    fn parses_names_and_drops_qualifiers() {
        let f = Arn::parse("arn:aws:lambda:us-east-1:123456789012:function:f:$LATEST").unwrap();
        assert_eq!(
            (f.service, f.account, f.name()),
            ("lambda", "123456789012", "f")
        );
        assert_eq!(
            f.unqualified(),
            "arn:aws:lambda:us-east-1:123456789012:function:f"
        );
        assert_eq!(Arn::parse("arn:aws:iam::1:role/r").unwrap().name(), "r");
        assert_eq!(Arn::parse("arn:aws:sqs:us-east-1:1:q").unwrap().name(), "q");
        assert_eq!(
            Arn::parse("arn:aws:dynamodb:us-east-1:1:table/t")
                .unwrap()
                .name(),
            "t"
        );
        assert_eq!(
            Arn::parse("arn:aws-cn:sts::1:assumed-role/r/s")
                .unwrap()
                .partition,
            "aws-cn"
        );
        assert!(Arn::parse("not-an-arn").is_none());
    }
}
