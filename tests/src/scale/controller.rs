//! `tap-controller run` as a separate process: started with a kubeconfig and an AWS endpoint, its
//! `/readyz` awaited, its `/metrics` scraped, its JSON log read back, stopped with SIGTERM.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How to start the controller.
pub struct ControllerConfig<'a> {
    pub binary: &'a Path,
    pub kubeconfig: &'a Path,
    pub aws_endpoint: &'a str,
    pub region: &'a str,
    pub concurrency: usize,
    pub resync_seconds: u64,
    pub namespace: &'a str,
    /// stderr (the JSON log) goes here.
    pub log: PathBuf,
    /// The working directory (where a `dhat-heap` build writes its profile).
    pub cwd: &'a Path,
    /// Extra environment, e.g. `MALLOC_ARENA_MAX=2`.
    pub env: &'a [(String, String)],
}

/// The running controller; killed when dropped (use [`ControllerProcess::stop`] for a clean exit).
pub struct ControllerProcess {
    child: Child,
    pub metrics_addr: String,
    pub log: PathBuf,
}

/// What `/metrics` said at one moment.
#[derive(Clone, Debug, Default)]
pub struct MetricsSnapshot {
    /// `tap_aws_calls_total` by (service, operation).
    pub calls: BTreeMap<(String, String), u64>,
    /// `tap_reconciles_total`: reconciles started.
    pub reconciles_started: u64,
    /// `tap_reconcile_duration_seconds_count`: reconciles finished (or dropped).
    pub reconciles_finished: u64,
    pub reconcile_errors: u64,
}

impl MetricsSnapshot {
    pub fn total_calls(&self) -> u64 {
        self.calls.values().sum()
    }

    /// Calls made since `before`, by (service, operation).
    pub fn calls_since(&self, before: &MetricsSnapshot) -> BTreeMap<(String, String), u64> {
        self.calls
            .iter()
            .map(|(k, v)| (k.clone(), v - before.calls.get(k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v > 0)
            .collect()
    }

    /// No reconcile in flight.
    pub fn idle(&self) -> bool {
        self.reconciles_started == self.reconciles_finished
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A plain HTTP/1.1 GET; returns (status, body).
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    Ok((status, body.to_string()))
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let end = labels[start..].find('"')? + start;
    Some(&labels[start..end])
}

/// Parses the OpenMetrics text of `/metrics`.
pub fn parse_metrics(text: &str) -> MetricsSnapshot {
    let mut m = MetricsSnapshot::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let value = value as u64;
        let (name, labels) = key.split_once('{').unwrap_or((key, ""));
        match name {
            "tap_aws_calls_total" => {
                if let (Some(s), Some(o)) = (label(labels, "service"), label(labels, "operation")) {
                    m.calls.insert((s.to_string(), o.to_string()), value);
                }
            }
            "tap_reconciles_total" => m.reconciles_started = value,
            "tap_reconcile_duration_seconds_count" => m.reconciles_finished = value,
            "tap_reconcile_errors_total" => m.reconcile_errors += value,
            _ => {}
        }
    }
    m
}

impl ControllerProcess {
    pub fn start(config: &ControllerConfig<'_>) -> anyhow::Result<Self> {
        let port = free_port()?;
        let metrics_addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(&config.log)
            .with_context(|| format!("creating {}", config.log.display()))?;
        let mut command = Command::new(config.binary);
        command
            .args([
                "run",
                "--metrics-addr",
                &metrics_addr,
                "--concurrency",
                &config.concurrency.to_string(),
                "--resync-seconds",
                &config.resync_seconds.to_string(),
                "--namespaces",
                config.namespace,
                "--log-format",
                "json",
                "--log-level",
                "info",
                // Nothing is in flight when the bench stops it; the long watchdog leaves a heap-profiling
                // build (`dhat-heap`) the time to write its profile.
                "--shutdown-timeout-seconds",
                "60",
            ])
            .current_dir(config.cwd)
            .env("KUBECONFIG", config.kubeconfig)
            .env("AWS_ENDPOINT_URL", config.aws_endpoint)
            .env("AWS_REGION", config.region)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("TAP_LEADER_ELECTION")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in config.env {
            command.env(k, v);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", config.binary.display()))?;
        Ok(Self {
            child,
            metrics_addr,
            log: config.log.clone(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for `/readyz` to answer 200 (its watchers have listed the pipelines).
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the controller exited with {status} before it was ready; its log: {}",
                    self.log.display()
                );
            }
            if let Ok((200, _)) = http_get(&self.metrics_addr, "/readyz").await {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!("the controller was not ready within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn metrics(&self) -> anyhow::Result<MetricsSnapshot> {
        let (status, body) = http_get(&self.metrics_addr, "/metrics").await?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        Ok(parse_metrics(&body))
    }

    /// Waits until no reconcile is in flight and at least `finished` reconciles have finished.
    pub async fn wait_reconciled(
        &self,
        finished: u64,
        timeout: Duration,
    ) -> anyhow::Result<MetricsSnapshot> {
        let started = Instant::now();
        loop {
            let m = self.metrics().await?;
            if m.idle() && m.reconciles_finished >= finished {
                return Ok(m);
            }
            if started.elapsed() > timeout {
                bail!(
                    "{} of {finished} reconciles finished after {timeout:?}",
                    m.reconciles_finished
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Length of the log so far (a mark to read the lines of one phase).
    pub fn log_mark(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// The log's JSON lines between two marks (`None`: to the end).
    pub fn log_lines(&self, from: u64, to: Option<u64>) -> Vec<serde_json::Value> {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let to = to
            .map(|t| t as usize)
            .unwrap_or(bytes.len())
            .min(bytes.len());
        let from = (from as usize).min(to);
        String::from_utf8_lossy(&bytes[from..to])
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// SIGTERM, then waits for the exit (SIGKILL after `timeout`). Returns the exit status's code.
    pub fn stop(&mut self, timeout: Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if started.elapsed() > timeout {
                let _ = self.child.kill();
                return self.child.wait().ok().and_then(|s| s.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_controller_metrics() {
        let text = "# HELP tap_reconciles Reconciles\n# TYPE tap_reconciles counter\ntap_reconciles_total 7\n\
                    tap_reconcile_duration_seconds_sum 1.5\ntap_reconcile_duration_seconds_count 6\n\
                    tap_aws_calls_total{service=\"Lambda\",operation=\"GetFunction\"} 12\n\
                    tap_reconcile_errors_total{kind=\"kube\"} 2\n# EOF\n";
        let m = parse_metrics(text);
        assert_eq!(m.reconciles_started, 7);
        assert_eq!(m.reconciles_finished, 6);
        assert!(!m.idle());
        assert_eq!(m.reconcile_errors, 2);
        assert_eq!(
            m.calls[&("Lambda".to_string(), "GetFunction".to_string())],
            12
        );
    }
}
