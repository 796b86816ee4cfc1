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

/// How long before the end of its term the holder renews the Lease: a third of the duration, at least
/// 1 s (15 s → every 10 s, like client-go's defaults).
pub fn grace_seconds(duration_seconds: u64) -> u64 {
    (duration_seconds / 3).max(1)
}

/// A running candidacy: the lease manager task renews or contends for the Lease in the background.
pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
}

impl Leadership {
    /// Starts contending for `lease_name` in `namespace` (the Lease is created when missing). The
    /// holder renews it `grace_seconds(duration)` before it would expire; a standby looks again when
    /// the holder's term ends, so it takes over at most `duration_seconds` after the last renewal.
    pub async fn join(
        client: Client,
        lease_name: &str,
        namespace: &str,
        identity: &str,
        duration_seconds: u64,
    ) -> anyhow::Result<Self> {
        let manager = LeaseManagerBuilder::new(client, lease_name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(duration_seconds)
            .with_grace(grace_seconds(duration_seconds))
            // One field manager per identity: the API server's field ownership then refuses a
            // second holder's server-side apply of holderIdentity (409), which is the lock.
            .with_field_manager(format!("tap-controller-lease-{identity}"))
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use serde_json::{json, Value};

    use super::*;
    use crate::k8s::fixtures::mock_client;

    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/tap-system/leases";

    /// A one-Lease API server: GET, POST and PATCH (spec fields merged, `null` removes), recording
    /// `(method, path)` of every request.
    fn serve_leases(
        mut server: crate::k8s::fixtures::ApiServerVerifier,
        seen: Arc<Mutex<Vec<(String, String)>>>,
    ) {
        tokio::spawn(async move {
            let mut lease: Option<Value> = None;
            loop {
                let request = server.next_request_opt().await;
                let Some(request) = request else { return };
                let path = request
                    .uri
                    .split('?')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                seen.lock()
                    .unwrap()
                    .push((request.method.clone(), path.clone()));
                match request.method.as_str() {
                    "GET" => match &lease {
                        Some(l) => request.ok(l.clone()),
                        None => request.not_found(),
                    },
                    "POST" => {
                        let mut created = request.body.clone();
                        created["metadata"]["namespace"] = json!("tap-system");
                        created["metadata"]["resourceVersion"] = json!("1");
                        created["spec"] = json!({});
                        lease = Some(created.clone());
                        request.respond(201, created);
                    }
                    "PATCH" => {
                        let current = lease.get_or_insert_with(|| json!({"spec": {}}));
                        if let Some(fields) = request.body["spec"].as_object() {
                            for (k, v) in fields {
                                if v.is_null() {
                                    current["spec"].as_object_mut().unwrap().remove(k);
                                } else {
                                    current["spec"][k] = v.clone();
                                }
                            }
                        }
                        let answer = current.clone();
                        request.ok(answer);
                    }
                    _ => request.not_found(),
                }
            }
        });
    }

    #[tokio::test]
    async fn takes_the_lease_with_get_create_and_patch_only() {
        let (client, server) = mock_client();
        let seen = Arc::new(Mutex::new(Vec::new()));
        serve_leases(server, seen.clone());

        let mut leadership = Leadership::join(client, "tap-controller", "tap-system", "pod-a", 15)
            .await
            .expect("join");
        tokio::time::timeout(Duration::from_secs(20), leadership.acquired())
            .await
            .expect("the lease is free: acquired")
            .expect("lease manager running");
        assert!(leadership.is_leader());
        leadership.release().await;

        let seen = seen.lock().unwrap().clone();
        let lease = format!("{LEASES}/tap-controller");
        for (method, path) in &seen {
            assert!(
                matches!(
                    (method.as_str(), path.as_str()),
                    ("GET", p) | ("PATCH", p) if p == lease
                ) || (method == "POST" && path == LEASES),
                "unexpected {method} {path}"
            );
        }
        assert!(seen.iter().any(|(m, _)| m == "POST"), "created the Lease");
        assert!(seen.iter().any(|(m, _)| m == "PATCH"), "took it by patch");
    }
}
