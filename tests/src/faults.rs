//! Faults real AWS has and the emulators lack, for the reliability suites:
//! - [`Microburst`]: the fault proxy (PyPI `microburst`) in front of an emulator: throttling and errors in
//!   each service's own error shape, latency, and responses aborted after the emulator acted;
//! - [`CrashAfter`]: an SDK interceptor that lets `n` writes through (and the reads among them), loses the
//!   answer of the `n`-th (the emulator acted on it) and refuses every later call: a process that died at
//!   that call. Only writes are crash points: a crash at a read leaves AWS exactly as the crash at the
//!   write before it did (a read changes nothing), so it would resume from a state already tried.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use aws_config::SdkConfig;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeDeserializationInterceptorContextMut, BeforeSerializationInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::{Intercept, SharedInterceptor};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use serde_json::Value;

use crate::emulator::Emulator;

/// The fault proxy, listening on a free loopback port, forwarding to an emulator. Killed when dropped.
pub struct Microburst {
    pub endpoint: String,
    child: Child,
}

impl Microburst {
    pub async fn start(upstream: &Emulator) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let bin = std::env::var("TAP_MICROBURST_BIN").unwrap_or_else(|_| "microburst".into());
        let child = Command::new(bin)
            .args([
                "--upstream",
                &upstream.endpoint,
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting microburst (pip install microburst; see scripts/setup.sh)")?;
        let proxy = Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("microburst did not listen on {port} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(proxy)
    }

    /// Replaces the fault rules (a JSON list, see microburst's rules: `service` is botocore's name,
    /// e.g. `stepfunctions`; `operation`, `probability`, `times`, `error`, `latency`, `reset`,
    /// `response: {"abort_bytes": 0}` for an answer lost after the emulator acted).
    pub async fn set_rules(&self, rules: Value) -> anyhow::Result<()> {
        self.control("POST", "/_microburst/rules", &rules.to_string())
            .await
            .map(drop)
    }

    /// How often each rule fired so far: `(rule as set, count)`.
    pub async fn fired(&self) -> anyhow::Result<Vec<(Value, u64)>> {
        let rules: Value =
            serde_json::from_str(&self.control("GET", "/_microburst/rules", "").await?)?;
        Ok(rules
            .as_array()
            .into_iter()
            .flatten()
            .map(|rule| {
                let count = rule["fired_count"].as_u64().unwrap_or(0);
                let mut rule = rule.clone();
                if let Some(map) = rule.as_object_mut() {
                    map.retain(|k, _| {
                        ["service", "operation", "error", "response", "reset"].contains(&k.as_str())
                    });
                }
                (rule, count)
            })
            .collect())
    }

    /// One request to the control API; the response body.
    async fn control(&self, method: &str, path: &str, body: &str) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.endpoint.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        if !response.starts_with("HTTP/1.1 2") {
            bail!(
                "microburst refused {method} {path}: {}",
                response.lines().next().unwrap_or_default()
            );
        }
        Ok(response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default())
    }

    /// The emulator's SDK configuration, through the proxy.
    pub fn sdk_config(&self, emulator: &Emulator) -> SdkConfig {
        emulator
            .sdk_config()
            .to_builder()
            .endpoint_url(&self.endpoint)
            .build()
    }
}

impl Drop for Microburst {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process that stops at its `n`-th AWS write: writes 1..n (and the reads before them) reach AWS, the
/// answer to the `n`-th is lost (AWS acted on it), and every later call is refused before it is sent.
#[derive(Clone, Debug)]
pub struct CrashAfter {
    n: u64,
    seen: Arc<AtomicU64>,
    reached: Arc<tokio::sync::Notify>,
}

/// Marks the operation in flight as the one whose answer is lost.
#[derive(Clone, Debug)]
struct LoseAnswer;

impl Storable for LoseAnswer {
    type Storer = StoreReplace<Self>;
}

impl CrashAfter {
    pub fn new(n: u64) -> Self {
        Self {
            n,
            seen: Arc::new(AtomicU64::new(0)),
            reached: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Resolves once the `n`-th operation's answer is lost: the process would be gone from there, so the
    /// caller drops what it was running (in-flight calls lose their answers too).
    pub async fn reached(&self) {
        self.reached.notified().await
    }

    pub fn interceptor(&self) -> SharedInterceptor {
        SharedInterceptor::new(self.clone())
    }

    /// Writes started (sent or refused).
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::SeqCst)
    }

    /// Whether the crash point was reached.
    pub fn crashed(&self) -> bool {
        self.seen() >= self.n
    }
}

impl Intercept for CrashAfter {
    fn name(&self) -> &'static str {
        "tap-crash-after"
    }

    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let write = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .is_none_or(|m| !tap_controller::aws::is_read(m.name()));
        if !write {
            if self.seen() >= self.n {
                return Err("crashed: the process is gone".into());
            }
            return Ok(());
        }
        let index = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if index > self.n {
            return Err("crashed: the process is gone".into());
        }
        if index == self.n {
            cfg.interceptor_state().store_put(LoseAnswer);
        }
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if cfg.load::<LoseAnswer>().is_some() {
            let _ = context;
            self.reached.notify_one();
            return Err("crashed: the answer was lost".into());
        }
        Ok(())
    }
}
