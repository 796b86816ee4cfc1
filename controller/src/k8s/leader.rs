//! Leader election through a `coordination.k8s.io/v1` Lease: only the holder runs the controller.

use anyhow::Context as _;
use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// This process's identity in the Lease: `POD_NAME`, else `HOSTNAME`, else a process-unique string.
pub fn identity() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            format!("tap-controller-{}-{nanos:x}", std::process::id())
        })
}

/// The Lease's namespace: `POD_NAMESPACE`, default `default`.
pub fn lease_namespace() -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// A running candidacy: the lease manager task renews or contends for the Lease in the background.
pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
}

impl Leadership {
    /// Starts contending for `lease_name` in `namespace` (the Lease is created when missing).
    pub async fn join(
        client: Client,
        lease_name: &str,
        namespace: &str,
        identity: &str,
    ) -> anyhow::Result<Self> {
        let manager = LeaseManagerBuilder::new(client, lease_name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_field_manager("tap-controller-lease")
            .build()
            .await
            .with_context(|| format!("preparing Lease {namespace}/{lease_name}"))?;
        let (state, task) = manager.watch().await;
        Ok(Self { state, task })
    }

    pub fn is_leader(&self) -> bool {
        *self.state.borrow()
    }

    /// Resolves once this process holds the Lease. Errors when the lease manager stopped.
    pub async fn acquired(&mut self) -> anyhow::Result<()> {
        while !*self.state.borrow_and_update() {
            self.state
                .changed()
                .await
                .context("the lease manager stopped")?;
        }
        Ok(())
    }

    /// Resolves once this process no longer holds the Lease (or the lease manager stopped).
    pub async fn lost(&mut self) {
        while *self.state.borrow_and_update() {
            if self.state.changed().await.is_err() {
                return;
            }
        }
    }

    /// Stops contending and releases the Lease if held.
    pub async fn release(self) {
        drop(self.state);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!("lease released"),
            Ok(Err(e)) => tracing::warn!(error = %e, "releasing the lease"),
            Err(e) => tracing::warn!(error = %e, "lease manager task"),
        }
    }
}
