//! The dependency-graph executor: starts every resource whose prerequisites are done, at most
//! `concurrency` at a time, and waits for the next to finish. Forward for convergence (a resource after
//! the resources it depends on), backward for teardown (a resource after everything that depends on it).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};

use super::report::{Action, ResourceReport};
use super::Mode;
use crate::desired::{Resource, ResourceId, Stack};
use crate::drivers::Outputs;

/// Runs `run` over the graph. `prereqs[i]` are indices that must finish before `i`; `blocked` decides
/// from a finished prerequisite's report whether `i` may still run (if not, `i` reports `Wait`).
async fn run_graph<F, Fut>(
    stack: &Stack,
    prereqs: Vec<Vec<usize>>,
    concurrency: usize,
    blocked: impl Fn(&ResourceReport) -> bool,
    run: F,
) -> Vec<ResourceReport>
where
    F: Fn(usize, Vec<&ResourceReport>) -> Fut,
    Fut: Future<Output = ResourceReport>,
{
    let n = stack.resources.len();
    let mut done: Vec<Option<ResourceReport>> = vec![None; n];
    let mut started = vec![false; n];
    let mut running = FuturesUnordered::new();
    loop {
        // Start (or settle) everything whose prerequisites are finished, in stack order.
        let mut progressed = true;
        while progressed {
            progressed = false;
            for i in 0..n {
                if started[i] || !prereqs[i].iter().all(|&p| done[p].is_some()) {
                    continue;
                }
                let reports: Vec<&ResourceReport> = prereqs[i]
                    .iter()
                    .filter_map(|&p| done[p].as_ref())
                    .collect();
                if let Some(blocker) = reports.iter().find(|r| blocked(r)) {
                    started[i] = true;
                    done[i] = Some(ResourceReport {
                        id: stack.resources[i].id.clone(),
                        action: Action::Wait(format!(
                            "waiting for {} ({})",
                            blocker.id,
                            blocker.message()
                        )),
                        applied: false,
                        outputs: Outputs::default(),
                        elapsed: Duration::ZERO,
                    });
                    progressed = true;
                } else if running.len() < concurrency {
                    started[i] = true;
                    let fut = run(i, reports);
                    running.push(async move { (i, fut.await) });
                }
            }
        }
        match running.next().await {
            Some((i, report)) => done[i] = Some(report),
            None => break,
        }
    }
    done.into_iter()
        .map(|r| r.expect("every resource runs or is blocked"))
        .collect()
}

fn index(stack: &Stack) -> HashMap<&ResourceId, usize> {
    stack
        .resources
        .iter()
        .enumerate()
        .map(|(i, r)| (&r.id, i))
        .collect()
}

/// Converges resources after their dependencies. A dependency that does not exist as ours (waiting,
/// failed, in conflict) blocks its dependents; one that keeps a drift does not. In a dry run nothing is
/// created, so nothing blocks.
pub async fn forward<F, Fut>(
    stack: &Stack,
    concurrency: usize,
    mode: Mode,
    converge: F,
) -> Vec<ResourceReport>
where
    F: Fn(Resource, BTreeMap<ResourceId, Outputs>) -> Fut,
    Fut: Future<Output = ResourceReport>,
{
    let idx = index(stack);
    let prereqs = stack
        .resources
        .iter()
        .map(|r| {
            r.depends_on
                .iter()
                .filter_map(|d| idx.get(d).copied())
                .collect()
        })
        .collect();
    run_graph(
        stack,
        prereqs,
        concurrency,
        |dep| mode == Mode::Apply && !dep.usable(),
        |i, deps| {
            let outputs = deps
                .iter()
                .map(|d| (d.id.clone(), d.outputs.clone()))
                .collect();
            converge(stack.resources[i].clone(), outputs)
        },
    )
    .await
}

/// Deletes resources after everything that depends on them. A dependent that could not be deleted
/// blocks what it depends on.
pub async fn backward<F, Fut>(stack: &Stack, concurrency: usize, delete: F) -> Vec<ResourceReport>
where
    F: Fn(Resource) -> Fut,
    Fut: Future<Output = ResourceReport>,
{
    let idx = index(stack);
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); stack.resources.len()];
    for (i, r) in stack.resources.iter().enumerate() {
        for d in &r.depends_on {
            if let Some(&j) = idx.get(d) {
                dependents[j].push(i);
            }
        }
    }
    run_graph(
        stack,
        dependents,
        concurrency,
        |dependent| {
            !dependent.is_done()
                && !matches!(
                    (&dependent.action, dependent.applied),
                    (Action::Delete, false)
                )
        },
        |i, _| delete(stack.resources[i].clone()),
    )
    .await
}
