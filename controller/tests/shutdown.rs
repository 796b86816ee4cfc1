//! `tap-controller run` as a process, stopped by signals as Kubernetes stops a pod: SIGTERM, then
//! (after terminationGracePeriodSeconds) SIGKILL. The API server is either unreachable (a port that
//! accepts connections and never answers) or the in-memory fake API server over HTTP; AWS is a port
//! that accepts connections and never answers, so a walk stays in flight.
//!
//! `TAP_CONTROLLER_BIN` runs another build of the binary (e.g. an older one, to compare).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tap_controller::k8s::fake_api::FakeApi;
use tap_controller::k8s::fixtures::{finalized, pipeline};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

fn binary() -> PathBuf {
    std::env::var_os("TAP_CONTROLLER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tap-controller")))
}

/// A port that accepts connections, keeps them open and never answers; each accepted connection is
/// reported on the returned channel.
async fn black_hole() -> (String, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
            let _ = tx.send(());
        }
    });
    (url, rx)
}

struct Controller {
    child: Child,
    log: tempfile::NamedTempFile,
    metrics_port: u16,
    _kubeconfig: tempfile::NamedTempFile,
}

impl Controller {
    fn start(api_url: &str, aws_url: &str, env: &[(&str, &str)]) -> Self {
        let mut kubeconfig = tempfile::NamedTempFile::new().unwrap();
        kubeconfig
            .write_all(FakeApi::kubeconfig(api_url).as_bytes())
            .unwrap();
        let log = tempfile::NamedTempFile::new().unwrap();
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new(binary());
        cmd.arg("run")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", kubeconfig.path())
            .env("TAP_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("TAP_LOG_FORMAT", "text")
            .env("TAP_LOG_LEVEL", "info")
            .env("POD_NAMESPACE", "tap-system")
            .env("POD_NAME", "controller-0")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", aws_url)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawning tap-controller run");
        let mut controller = Self {
            child,
            log,
            metrics_port,
            _kubeconfig: kubeconfig,
        };
        controller.wait_healthy();
        controller
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the controller exited with {status}:\n{}", self.log());
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)) {
                use std::io::Read as _;
                let _ = s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n");
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                if answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200") {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "not healthy:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name}");
    }

    /// Waits (at most `bound`) for the process to exit; its status and how long it took.
    fn exit_within(&mut self, bound: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            if started.elapsed() > bound {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "still running {bound:?} after the signal (killed now); log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (bounded) until the log has `text`.
    fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_api_server_unreachable_exits_within_seconds() {
    let (api, _) = black_hole().await;
    let (aws, _) = black_hole().await;
    for leader_election in ["false", "true"] {
        let mut controller =
            Controller::start(&api, &aws, &[("TAP_LEADER_ELECTION", leader_election)]);
        let mut c = tokio::task::spawn_blocking(move || {
            controller.signal("TERM");
            let (status, took) = controller.exit_within(Duration::from_secs(15));
            (controller, status, took)
        });
        let (controller, status, took) = (&mut c).await.unwrap();
        eprintln!("leader election {leader_election}: SIGTERM -> exit {status} in {took:?}");
        assert!(
            status.success(),
            "exit {status}; log:\n{}",
            controller.log()
        );
        assert!(
            took < Duration::from_secs(3),
            "took {took:?} with nothing in flight; log:\n{}",
            controller.log()
        );
    }
}

/// A fake API server holding one pipeline (with its finalizer): the controller starts a walk at once.
async fn api_with_a_pipeline() -> (FakeApi, String) {
    let api = FakeApi::new();
    api.put_pipeline(&finalized(pipeline("payments", "pay1", 60)));
    let url = api.serve_tcp().await;
    (api, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_abandons_the_walk_after_the_shutdown_timeout_and_releases_the_lease() {
    let (api, api_url) = api_with_a_pipeline().await;
    let (aws, mut aws_connections) = black_hole().await;
    let mut controller = Controller::start(
        &api_url,
        &aws,
        &[
            ("TAP_LEADER_ELECTION", "true"),
            ("TAP_SHUTDOWN_TIMEOUT_SECONDS", "2"),
        ],
    );
    tokio::time::timeout(Duration::from_secs(20), aws_connections.recv())
        .await
        .unwrap_or_else(|_| panic!("no AWS call within 20 s; log:\n{}", controller.log()));
    let lease = api
        .object("coordination.k8s.io/leases", "tap-system", "tap-controller")
        .expect("the Lease");
    assert_eq!(lease["spec"]["holderIdentity"], "controller-0");

    let (controller, status, took) = tokio::task::spawn_blocking(move || {
        controller.signal("TERM");
        let (status, took) = controller.exit_within(Duration::from_secs(15));
        (controller, status, took)
    })
    .await
    .unwrap();
    eprintln!("walk in flight, shutdown timeout 2 s: SIGTERM -> exit {status} in {took:?}");
    let log = controller.log();
    assert!(status.success(), "exit {status}; log:\n{log}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(2 + 5),
        "took {took:?}: the walk gets the 2 s shutdown timeout, then the rest is bounded by 5 s; log:\n{log}"
    );
    assert!(
        log.contains("abandoning the in-flight reconciles"),
        "log:\n{log}"
    );
    let lease = api
        .object("coordination.k8s.io/leases", "tap-system", "tap-controller")
        .expect("the Lease");
    assert!(
        lease["spec"].get("holderIdentity").is_none(),
        "the Lease is released: {lease}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once() {
    let (_api, api_url) = api_with_a_pipeline().await;
    let (aws, mut aws_connections) = black_hole().await;
    let mut controller =
        Controller::start(&api_url, &aws, &[("TAP_SHUTDOWN_TIMEOUT_SECONDS", "60")]);
    tokio::time::timeout(Duration::from_secs(20), aws_connections.recv())
        .await
        .unwrap_or_else(|_| panic!("no AWS call within 20 s; log:\n{}", controller.log()));
    let (controller, status, took) = tokio::task::spawn_blocking(move || {
        controller.signal("TERM");
        controller.wait_log("termination signal: shutting down");
        controller.signal("TERM");
        let (status, took) = controller.exit_within(Duration::from_secs(10));
        (controller, status, took)
    })
    .await
    .unwrap();
    eprintln!("second SIGTERM -> exit {status} in {took:?}");
    assert_eq!(
        status.code(),
        Some(143),
        "exit {status}; log:\n{}",
        controller.log()
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
}
