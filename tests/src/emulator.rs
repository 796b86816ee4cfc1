//! A local AWS emulator started on a free loopback port for the lifetime of one [`Emulator`].
//!
//! `TAP_TEST_EMULATOR` picks the emulator: `moto` (default) or `ministack`. The binaries are found on
//! `PATH` (`.ci/run` installs both); `TAP_MOTO_PYTHON` and `TAP_MINISTACK_BIN` override them.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmulatorKind {
    Moto,
    Ministack,
}

impl EmulatorKind {
    /// The emulator named by `TAP_TEST_EMULATOR` (moto when unset).
    pub fn from_env() -> Self {
        match std::env::var("TAP_TEST_EMULATOR").as_deref() {
            Ok("ministack") => EmulatorKind::Ministack,
            _ => EmulatorKind::Moto,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EmulatorKind::Moto => "moto",
            EmulatorKind::Ministack => "ministack",
        }
    }
}

/// A running emulator; killed when dropped.
pub struct Emulator {
    pub kind: EmulatorKind,
    pub endpoint: String,
    pub region: String,
    child: Child,
}

pub const TEST_REGION: &str = "us-east-1";

/// `PYTHONPATH` for a moto process: `tests/moto` (its `sitecustomize.py` adapts moto to the Rust SDK)
/// ahead of whatever is already set.
pub fn moto_pythonpath() -> String {
    pythonpath_with(concat!(env!("CARGO_MANIFEST_DIR"), "/moto"))
}

/// `PYTHONPATH` with `patches` ahead of whatever is already set.
fn pythonpath_with(patches: &str) -> String {
    match std::env::var("PYTHONPATH") {
        Ok(existing) if !existing.is_empty() => format!("{patches}:{existing}"),
        _ => patches.to_string(),
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

impl Emulator {
    /// Starts the emulator chosen by `TAP_TEST_EMULATOR`.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_kind(EmulatorKind::from_env()).await
    }

    pub async fn start_kind(kind: EmulatorKind) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut command = match kind {
            EmulatorKind::Moto => {
                let python = std::env::var("TAP_MOTO_PYTHON").unwrap_or_else(|_| "python3".into());
                let mut c = Command::new(python);
                c.args([
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ]);
                // tests/moto/sitecustomize.py adapts moto's answers the Rust SDK rejects (see that file).
                c.env("PYTHONPATH", moto_pythonpath());
                c
            }
            EmulatorKind::Ministack => {
                let bin = std::env::var("TAP_MINISTACK_BIN").unwrap_or_else(|_| "ministack".into());
                let mut c = Command::new(bin);
                c.env("GATEWAY_PORT", port.to_string())
                    .env("BIND_HOST", "127.0.0.1")
                    // tests/ministack/sitecustomize.py closes ministack's gaps (see that file).
                    .env(
                        "PYTHONPATH",
                        pythonpath_with(concat!(env!("CARGO_MANIFEST_DIR"), "/ministack")),
                    );
                c
            }
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} (is it installed? see .ci/run)", kind.name()))?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut emulator = Emulator {
            kind,
            endpoint,
            region: TEST_REGION.into(),
            child,
        };
        emulator.wait_ready().await?;
        // A server that has just begun to listen may still reset the first connections while it
        // finishes starting up: retry those (and only those) for a few seconds.
        let mut tries = 0;
        loop {
            match emulator.configure().await {
                Ok(()) => break,
                Err(e) if tries < 50 && e.downcast_ref::<std::io::Error>().is_some() => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(emulator)
    }

    async fn configure(&self) -> anyhow::Result<()> {
        if self.kind == EmulatorKind::Moto {
            // Closer to AWS: no Docker for Lambda, and Step Functions really runs executions.
            self.post_json(
                "/moto-api/config",
                r#"{"lambda":{"use_docker":false},"stepfunctions":{"execute_state_machine":true}}"#,
            )
            .await?;
        }
        Ok(())
    }

    /// Forgets every resource (a fresh account), keeping the process.
    pub async fn reset(&self) -> anyhow::Result<()> {
        match self.kind {
            EmulatorKind::Moto => self.post_json("/moto-api/reset", "{}").await?,
            EmulatorKind::Ministack => self.post_json("/_ministack/reset", "{}").await?,
        }
        self.configure().await
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = self.endpoint.trim_start_matches("http://").to_string();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited during start-up with {status}", self.kind.name());
            }
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} did not listen on {addr} within 30 s", self.kind.name());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A raw HTTP/1.1 POST to the emulator's control API (no HTTP client dependency needed).
    pub async fn post_json(&self, path: &str, body: &str) -> anyhow::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.endpoint.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        if !response.starts_with("HTTP/1.1 2") && !response.starts_with("HTTP/1.0 2") {
            bail!(
                "POST {path} answered: {}",
                response.lines().next().unwrap_or_default()
            );
        }
        Ok(())
    }

    /// A GET of the emulator's control API, as JSON (moto's `/moto-api/data.json`: every model it holds).
    pub async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        use http_body_util::{BodyExt, Empty};
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Empty<axum::body::Bytes>>();
        let response = client
            .get(format!("{}{path}", self.endpoint).parse()?)
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("GET {path} answered {status}");
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// The emulator's process id (to read its memory use).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SDK configuration pointing at this emulator, with static test credentials.
    pub fn sdk_config(&self) -> SdkConfig {
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .endpoint_url(&self.endpoint)
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "tap-tests",
            )))
            .build()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Peak resident set size of a process in MiB (`VmHWM`), Linux only.
pub fn peak_rss_mib(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_string(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// A fake image manifest the emulators accept for `ecr:PutImage` (they never run it).
pub fn fake_image_manifest(tag: &str) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}},"layers":[]}}"#,
        2 + tag.len()
    )
}
