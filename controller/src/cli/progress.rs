//! Live progress of a walk, on stderr (stdout keeps the result, and only the JSON with `--output json`):
//! on a terminal a spinner per resource in flight with its elapsed time (indicatif), elsewhere a line as
//! each resource starts and ends, and a "still …" line every 10 s for those that take long.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::desired::ResourceId;
use crate::engine::{Progress, ResourceReport};

use super::output::{done, symbol};

/// How often a plain (non-terminal) log repeats what is still in flight.
pub const STILL_EVERY: Duration = Duration::from_secs(10);

struct InFlight {
    started: Instant,
    bar: Option<ProgressBar>,
}

pub struct LiveProgress {
    /// `applying`, `deleting`, `reading`.
    verb: Mutex<&'static str>,
    /// Plain lines are printed (false: a dry run nobody asked to watch; spinners only).
    lines: AtomicBool,
    live: Option<MultiProgress>,
    in_flight: Mutex<HashMap<ResourceId, InFlight>>,
}

impl LiveProgress {
    /// Live spinners when stderr is a terminal, plain lines otherwise.
    pub fn new(verb: &'static str) -> Arc<Self> {
        let live = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Arc::new(Self {
            verb: Mutex::new(verb),
            lines: AtomicBool::new(true),
            live,
            in_flight: Default::default(),
        })
    }

    /// What the next walk does, and whether it prints a line per resource.
    pub fn set(&self, verb: &'static str, lines: bool) {
        *self.verb.lock().expect("progress poisoned") = verb;
        self.lines.store(lines, Ordering::Relaxed);
    }

    fn verb(&self) -> &'static str {
        *self.verb.lock().expect("progress poisoned")
    }

    fn line(&self, text: &str) {
        match &self.live {
            Some(live) => {
                let _ = live.println(text);
            }
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{text}");
            }
        }
    }

    /// Prints a progress line (a pass summary, …) without breaking the spinners.
    pub fn note(&self, text: &str) {
        self.line(text);
    }

    /// Without a terminal: one "still …" line per resource in flight for `STILL_EVERY` or longer.
    pub fn tick(&self) {
        if self.live.is_some() || !self.lines.load(Ordering::Relaxed) {
            return;
        }
        let verb = self.verb();
        let in_flight = self.in_flight.lock().expect("progress poisoned");
        let mut still: Vec<(&ResourceId, Duration)> = in_flight
            .iter()
            .map(|(id, f)| (id, f.started.elapsed()))
            .filter(|(_, elapsed)| *elapsed >= STILL_EVERY)
            .collect();
        still.sort_by_key(|(id, _)| (*id).clone());
        for (id, elapsed) in still {
            self.line(&format!(
                "  {id}: still {verb}… [{}s elapsed]",
                elapsed.as_secs()
            ));
        }
    }

    /// Repeats [`tick`](Self::tick) until the returned handle is dropped.
    pub fn ticker(self: &Arc<Self>) -> Ticker {
        let progress = self.clone();
        Ticker(tokio::spawn(async move {
            let mut interval = tokio::time::interval(STILL_EVERY);
            interval.tick().await;
            loop {
                interval.tick().await;
                progress.tick();
            }
        }))
    }
}

/// Stops the "still …" lines when dropped.
pub struct Ticker(tokio::task::JoinHandle<()>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Progress for LiveProgress {
    fn waiting_for_lock(&self, holder: &crate::engine::LockHolder) {
        self.note(&format!("{holder}, waiting…"));
    }

    fn started(&self, id: &ResourceId) {
        let verb = self.verb();
        let bar = self.live.as_ref().map(|live| {
            let bar = live.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed} elapsed]")
                    .expect("the progress template parses"),
            );
            bar.set_message(format!("{id}: {verb}…"));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        if bar.is_none() && self.lines.load(Ordering::Relaxed) {
            self.line(&format!("  {id}: {verb}…"));
        }
        self.in_flight.lock().expect("progress poisoned").insert(
            id.clone(),
            InFlight {
                started: Instant::now(),
                bar,
            },
        );
    }

    fn finished(&self, report: &ResourceReport) {
        let in_flight = self
            .in_flight
            .lock()
            .expect("progress poisoned")
            .remove(&report.id);
        if let Some(bar) = in_flight.as_ref().and_then(|f| f.bar.as_ref()) {
            bar.finish_and_clear();
            if let Some(live) = &self.live {
                live.remove(bar);
            }
        }
        if self.lines.load(Ordering::Relaxed) {
            let what = done(report).replace('\n', "\n    ");
            self.line(&format!(
                "{} {}: {what} [{:.1}s]",
                symbol(&report.action),
                report.id,
                report.elapsed.as_secs_f64()
            ));
        }
    }
}
