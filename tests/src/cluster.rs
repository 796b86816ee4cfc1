//! The Kubernetes cluster `KUBECONFIG` names, for the tests that run against a real API server when there
//! is one (the end-to-end suite, the CRD's validation) and skip with the reason otherwise.

use std::time::Duration;

use kube::config::KubeConfigOptions;
use kube::{Client, Config};

/// The cluster `KUBECONFIG` names, answering, or the reason there is none (the caller prints it and
/// skips). The caller installs its rustls provider first.
pub async fn from_kubeconfig() -> std::result::Result<Client, String> {
    let kubeconfig = std::env::var("KUBECONFIG").unwrap_or_default();
    if kubeconfig.trim().is_empty() {
        return Err("KUBECONFIG is not set, so there is no cluster to test against".into());
    }
    if !std::env::split_paths(&kubeconfig).any(|p| p.is_file()) {
        return Err(format!("KUBECONFIG={kubeconfig} names no existing file"));
    }
    let config = Config::from_kubeconfig(&KubeConfigOptions::default())
        .await
        .map_err(|e| format!("KUBECONFIG={kubeconfig} is not usable: {e}"))?;
    let client =
        Client::try_from(config).map_err(|e| format!("cannot build a Kubernetes client: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(15), client.apiserver_version()).await {
        Ok(Ok(info)) => {
            eprintln!(
                "cluster: Kubernetes {}.{} ({})",
                info.major, info.minor, info.git_version
            );
            Ok(client)
        }
        Ok(Err(e)) => Err(format!(
            "the cluster in KUBECONFIG={kubeconfig} is unreachable: {e}"
        )),
        Err(_) => Err(format!(
            "the cluster in KUBECONFIG={kubeconfig} did not answer within 15 s"
        )),
    }
}
