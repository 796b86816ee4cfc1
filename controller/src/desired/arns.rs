//! ARNs and URIs of the stack's resources, computed from names: resources can reference each other
//! without waiting for AWS to answer.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arns {
    pub partition: String,
    pub region: String,
    pub account_id: String,
}

impl Arns {
    fn regional(&self, service: &str, rest: &str) -> String {
        format!(
            "arn:{}:{service}:{}:{}:{rest}",
            self.partition, self.region, self.account_id
        )
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
        format!(
            "https://sqs.{}.amazonaws.com/{}/{name}",
            self.region, self.account_id
        )
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
    pub fn repository_uri(&self, name: &str) -> String {
        format!(
            "{}.dkr.ecr.{}.amazonaws.com/{name}",
            self.account_id, self.region
        )
    }
    /// Invocation URI of a Lambda function for an API Gateway integration.
    pub fn lambda_integration_uri(&self, function_arn: &str) -> String {
        format!(
            "arn:{}:apigateway:{}:lambda:path/2015-03-31/functions/{function_arn}/invocations",
            self.partition, self.region
        )
    }
    /// Pattern for API Gateway invoking a method; `{api_id}` is filled in once AWS assigned it.
    pub fn execute_api(&self, method: &str, path: &str) -> String {
        self.regional("execute-api", &format!("{{api_id}}/*/{method}{path}"))
    }
}
