//! Shutdown: the first SIGTERM or SIGINT requests it (no new reconcile starts, in-flight ones get the
//! shutdown timeout, the Lease is released), a second one exits at once, and a watchdog exits the process
//! if the shutdown overruns its deadline.

use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

/// How long the Lease release may take on shutdown before it is given up (the Lease then expires
/// after its duration).
pub const LEASE_RELEASE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the HTTP server gets to finish the requests it is answering on shutdown.
pub const HTTP_STOP_TIMEOUT: Duration = Duration::from_secs(1);
/// What a shutdown takes at most beyond the drain of in-flight reconciles: the Lease release, the HTTP
/// server, and a margin. After `shutdown_timeout + SHUTDOWN_SLACK` the process exits regardless.
pub const SHUTDOWN_SLACK: Duration = Duration::from_secs(5);

/// A request to shut down, seen by every part of [`serve`]. Cheap to clone.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// Requests the shutdown of a [`Shutdown`] made by [`Shutdown::manual`].
pub struct ShutdownTrigger(watch::Sender<bool>);

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// A shutdown requested only through the returned trigger (tests, embedding).
    pub fn manual() -> (ShutdownTrigger, Self) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Self(rx))
    }

    /// Listens for SIGTERM and SIGINT (Ctrl-C). The first one requests the shutdown and arms a
    /// watchdog: if the process still runs `deadline` later it exits with status 1. A second signal
    /// exits at once with status 128 + its number (143 for SIGTERM, 130 for SIGINT).
    pub fn on_signals(deadline: Duration) -> anyhow::Result<Self> {
        let (trigger, shutdown) = Self::manual();
        let mut signals = Signals::new()?;
        tokio::spawn(async move {
            let first = signals.next().await;
            tracing::info!(
                signal = first.name,
                deadline = ?deadline,
                "termination signal: shutting down (a second signal exits at once)"
            );
            trigger.trigger();
            tokio::select! {
                second = signals.next() => {
                    tracing::warn!(signal = second.name, "second termination signal: exiting now");
                    std::process::exit(128 + second.number);
                }
                _ = tokio::time::sleep(deadline) => {
                    tracing::error!(deadline = ?deadline, "the shutdown did not finish in time: exiting now");
                    std::process::exit(1);
                }
            }
        });
        Ok(shutdown)
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the shutdown is requested.
    pub fn requested(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            // An error means the trigger is gone without a request: never resolve then.
            if rx.wait_for(|requested| *requested).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

struct Received {
    name: &'static str,
    number: i32,
}

/// SIGTERM and SIGINT, registered once (so a second signal is caught, not fatal by default).
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
                int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    async fn next(&mut self) -> Received {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => Received { name: "SIGTERM", number: 15 },
                _ = self.int.recv() => Received { name: "SIGINT", number: 2 },
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Received {
                name: "Ctrl-C",
                number: 2,
            }
        }
    }
}
