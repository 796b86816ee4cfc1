//! The dependency-graph executor: starts every resource whose prerequisites are done, at most
//! `concurrency` at a time, and waits for the next to finish. Forward for convergence (a resource after
//! the resources it depends on), backward for teardown (a resource after everything that depends on it).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};

use super::report::{Action, ResourceReport};
use super::Mode;
use crate::desired::{Kind, Resource, ResourceId, Stack};
use crate::drivers::{Outputs, WaitReason};

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
    let order = heaviest_chain_first(stack, &prereqs);
    let mut done: Vec<Option<ResourceReport>> = vec![None; n];
    let mut started = vec![false; n];
    let mut running = FuturesUnordered::new();
    loop {
        // Start (or settle) everything whose prerequisites are finished, longest chain first.
        let mut progressed = true;
        while progressed {
            progressed = false;
            for &i in &order {
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
                        action: Action::Wait(WaitReason::Dependency {
                            id: blocker.id.clone(),
                            why: blocker.message(),
                        }),
                        applied: false,
                        outputs: Outputs::default(),
                        remembered: false,
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

/// Round trips a resource's turn typically takes when it is created, roughly as the drivers make them
/// (the REST API's create, parts and method in a row; a table's create and waiter): the weights by
/// which the walk finds the heaviest chains. Only an order of starting, never a deadline.
fn typical_round_trips(kind: Kind) -> usize {
    match kind {
        Kind::RestApi => 5,
        Kind::Table => 4,
        Kind::Function | Kind::Stage | Kind::UsagePlan | Kind::Bucket => 3,
        _ => 2,
    }
}

/// The resources in the order to start them when several are ready: the one heading the heaviest chain
/// of resources waiting on it (in typical round trips) first, stack order among equals. The walk takes
/// as long as its longest chain only if that chain never waits for a free slot behind resources that
/// have time to spare.
fn heaviest_chain_first(stack: &Stack, prereqs: &[Vec<usize>]) -> Vec<usize> {
    let n = prereqs.len();
    let mut dependents = vec![Vec::new(); n];
    for (i, ps) in prereqs.iter().enumerate() {
        for &p in ps {
            dependents[p].push(i);
        }
    }
    let weight: Vec<usize> = stack
        .resources
        .iter()
        .map(|r| typical_round_trips(r.id.kind))
        .collect();
    // chain[i]: round trips on the heaviest path from i through its dependents, i included.
    let mut chain: Vec<Option<usize>> = vec![None; n];
    fn length(
        i: usize,
        dependents: &[Vec<usize>],
        weight: &[usize],
        chain: &mut [Option<usize>],
    ) -> usize {
        if let Some(l) = chain[i] {
            return l;
        }
        chain[i] = Some(weight[i]); // a cycle (none is built) counts once instead of recursing forever
        let l = weight[i]
            + dependents[i]
                .iter()
                .map(|&d| length(d, dependents, weight, chain))
                .max()
                .unwrap_or(0);
        chain[i] = Some(l);
        l
    }
    let lengths: Vec<usize> = (0..n)
        .map(|i| length(i, &dependents, &weight, &mut chain))
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    order
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
/// blocks what it depends on, except one that is not ours (a Conflict): we never delete it, so waiting
/// for it would leave everything of ours beneath it behind.
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
                    (Action::Delete, false) | (Action::Conflict(_), _)
                )
        },
        |i, _| delete(stack.resources[i].clone()),
    )
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::desired::{build_stack, StackEnv};
    use crate::drivers::FieldDiff;

    fn stack() -> Stack {
        let spec = serde_saphyr::from_str(
            "environmentSuffix: t1\nfunctions:\n  csvValidator: {image: {tag: v1}}\n  dataTransformer: {image: {tag: v1}}\n  notificationSender: {image: {tag: v1}}\n",
        )
        .unwrap();
        let env = StackEnv {
            account_id: "123456789012".into(),
            region: "us-east-1".into(),
            partition: "aws".into(),
            owner: "ns/p".into(),
            extra_tags: Default::default(),
        };
        build_stack(&spec, &env)
    }

    fn report(id: &ResourceId, action: Action, applied: bool) -> ResourceReport {
        ResourceReport {
            id: id.clone(),
            action,
            applied,
            outputs: Outputs::default(),
            remembered: false,
            elapsed: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn forward_runs_after_dependencies_within_the_concurrency_limit() {
        let stack = stack();
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(Mutex::new(Vec::<ResourceId>::new()));
        let reports = forward(&stack, 3, Mode::Apply, |resource, deps| {
            let (running, peak, finished) = (running.clone(), peak.clone(), finished.clone());
            async move {
                let done = finished.lock().unwrap().clone();
                for dep in &resource.depends_on {
                    assert!(
                        done.contains(dep),
                        "{} started before its dependency {dep}",
                        resource.id
                    );
                    assert!(
                        deps.contains_key(dep),
                        "{} lacks the outputs of {dep}",
                        resource.id
                    );
                }
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                finished.lock().unwrap().push(resource.id.clone());
                report(&resource.id, Action::Create, true)
            }
        })
        .await;
        assert_eq!(reports.len(), stack.resources.len());
        assert!(reports.iter().all(|r| r.is_done()));
        assert_eq!(
            peak.load(Ordering::SeqCst),
            3,
            "independent resources run in parallel, at most 3 at once"
        );
    }

    fn round_trips(kind: Kind) -> u32 {
        typical_round_trips(kind) as u32
    }

    #[tokio::test(start_paused = true)]
    async fn the_walk_takes_as_long_as_its_longest_chain_when_slots_suffice() {
        let stack = stack();
        let step = Duration::from_millis(10);
        // The longest chain, in round trips (prerequisites come before their dependents in the stack).
        let idx = index(&stack);
        let mut finish = vec![0u32; stack.resources.len()];
        for (i, r) in stack.resources.iter().enumerate() {
            let ready = r.depends_on.iter().map(|d| finish[idx[d]]).max();
            finish[i] = ready.unwrap_or(0) + round_trips(r.id.kind);
        }
        let chain = *finish.iter().max().unwrap();
        let started = tokio::time::Instant::now();
        forward(&stack, 8, Mode::Apply, |resource, _| async move {
            tokio::time::sleep(step * round_trips(resource.id.kind)).await;
            report(&resource.id, Action::Create, true)
        })
        .await;
        // Counting resources instead of round trips, the REST API (three resources on its chain, but 11
        // round trips) would wait for a slot behind longer but lighter chains: 150 ms instead of 130.
        assert_eq!(
            started.elapsed(),
            step * chain,
            "{} resources, 8 at a time: nothing on the longest chain waits for a slot",
            stack.resources.len()
        );
    }

    #[tokio::test]
    async fn a_missing_dependency_blocks_dependents_but_a_kept_drift_does_not() {
        let stack = stack();
        let called = Arc::new(Mutex::new(Vec::<ResourceId>::new()));
        let reports = forward(&stack, 8, Mode::Apply, |resource, _| {
            let called = called.clone();
            async move {
                called.lock().unwrap().push(resource.id.clone());
                let action = match (resource.id.kind, resource.id.name.as_str()) {
                    (Kind::Function, "tap-t1-csv-validator") => Action::Wait(WaitReason::Image {
                        uri: "u".into(),
                        repository: "r".into(),
                        tag: "v1".into(),
                    }),
                    (Kind::Function, _) => Action::Hold(vec![FieldDiff {
                        field: "tracingMode".into(),
                        expected: "Active".into(),
                        actual: "PassThrough".into(),
                    }]),
                    _ => Action::NoChange,
                };
                report(&resource.id, action, false)
            }
        })
        .await;
        let called = called.lock().unwrap();
        let find = |kind, name: &str| {
            reports
                .iter()
                .find(|r| r.id.kind == kind && r.id.name == name)
                .unwrap()
        };
        // The bucket, the API's permission and the state machine need csv-validator: not attempted, and
        // they say why.
        for (kind, name) in [
            (Kind::Bucket, "tap-t1-uploads-123456789012"),
            (
                Kind::Permission,
                "tap-t1-csv-validator/tap-apigateway-invoke",
            ),
            (Kind::StateMachine, "tap-t1-pipeline"),
        ] {
            let r = find(kind, name);
            assert!(
                matches!(&r.action, Action::Wait(m) if m.to_string().contains("tap-t1-csv-validator")),
                "{:?}",
                r.action
            );
            assert!(
                !called.iter().any(|id| id.name == name),
                "{name} must not be attempted"
            );
        }
        assert!(
            matches!(
                find(Kind::UsagePlan, "tap-t1-usage-plan").action,
                Action::Wait(_)
            ),
            "transitively blocked"
        );
        // The transformer keeps a drift but exists: its alarm still converges.
        assert!(called
            .iter()
            .any(|id| id.name == "tap-t1-data-transformer-errors"));
    }

    #[tokio::test]
    async fn backward_deletes_dependents_first() {
        let stack = stack();
        let deleted = Arc::new(Mutex::new(Vec::<ResourceId>::new()));
        delete_all_recording_order(&stack, deleted.clone()).await;
        let deleted = deleted.lock().unwrap();
        for r in &stack.resources {
            let me = deleted.iter().position(|id| id == &r.id).unwrap();
            for dep in &r.depends_on {
                let dep_at = deleted.iter().position(|id| id == dep).unwrap();
                assert!(me < dep_at, "{} deleted after its dependency {dep}", r.id);
            }
        }
    }

    async fn delete_all_recording_order(stack: &Stack, deleted: Arc<Mutex<Vec<ResourceId>>>) {
        backward(stack, 4, |resource| {
            let deleted = deleted.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                deleted.lock().unwrap().push(resource.id.clone());
                report(&resource.id, Action::Delete, true)
            }
        })
        .await;
    }

    #[tokio::test]
    async fn backward_is_not_held_up_by_someone_elses_resource() {
        let stack = stack();
        let theirs = stack
            .resources
            .iter()
            .find(|r| r.id.kind == Kind::Stage)
            .unwrap();
        assert!(!theirs.depends_on.is_empty());
        let reports = backward(&stack, 4, |resource| async move {
            if resource.id.kind == Kind::Stage {
                report(&resource.id, Action::Conflict("not ours".into()), false)
            } else {
                report(&resource.id, Action::Delete, true)
            }
        })
        .await;
        for dep in &theirs.depends_on {
            let r = reports.iter().find(|r| &r.id == dep).unwrap();
            assert_eq!(r.action, Action::Delete, "{dep} held up by a Conflict");
        }
    }
}
