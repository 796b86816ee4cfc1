//! Placeholder until the Kubernetes front end lands.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

pub struct RunConfig {
    pub resync: Duration,
    pub concurrency: usize,
    pub metrics_addr: SocketAddr,
    pub namespaces: Vec<String>,
    pub leader_election: bool,
    pub lease_name: String,
    pub extra_tags: BTreeMap<String, String>,
}

pub async fn run(_config: RunConfig, _sdk: aws_config::SdkConfig) -> anyhow::Result<()> {
    anyhow::bail!("the Kubernetes front end is not built yet")
}
