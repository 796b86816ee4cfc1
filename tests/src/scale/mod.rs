//! The pieces of the scale benchmark (`tests/benches/scale.rs`): a recording proxy in front of the AWS
//! endpoint ([`tap`]), the controller as a separate process ([`controller`]), `/proc` readings
//! ([`procstat`]), microburst adding latency ([`LatencyProxy`]) and the critical path of a stack
//! ([`critical_path`]).

pub mod controller;
pub mod procstat;
pub mod tap;

use std::collections::HashMap;
use std::time::Duration;

use tap_controller::desired::{ResourceId, Stack};

/// microburst in front of `upstream`, adding `latency_ms` to every call; killed when dropped.
pub struct LatencyProxy {
    child: std::process::Child,
    pub endpoint: String,
}

impl LatencyProxy {
    pub async fn start(upstream: &str, latency_ms: u64) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config = std::env::temp_dir().join(format!("tap-scale-latency-{port}.yml"));
        std::fs::write(&config, format!("rules:\n  - latency: {latency_ms}\n"))?;
        let child = std::process::Command::new("microburst")
            .args([
                "--upstream",
                upstream,
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--config",
            ])
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("starting microburst (scripts/setup.sh installs it): {e}")
            })?;
        let mut proxy = LatencyProxy {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..400 {
            if let Some(status) = proxy.child.try_wait()? {
                anyhow::bail!("microburst exited with {status}");
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(proxy);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("microburst did not listen on {port} within 20 s")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The longest dependency chain of `stack`, each resource weighted by `weight` (e.g. the AWS round
/// trips its driver made): (total weight, the chain from its first resource to its last).
pub fn critical_path(stack: &Stack, weight: impl Fn(&ResourceId) -> f64) -> (f64, Vec<ResourceId>) {
    let index: HashMap<&ResourceId, usize> = stack
        .resources
        .iter()
        .enumerate()
        .map(|(i, r)| (&r.id, i))
        .collect();
    // best[i]: the heaviest chain ending at i (i included), and its predecessor.
    let n = stack.resources.len();
    let mut best: Vec<Option<(f64, Option<usize>)>> = vec![None; n];
    fn visit(
        i: usize,
        stack: &Stack,
        index: &HashMap<&ResourceId, usize>,
        weight: &dyn Fn(&ResourceId) -> f64,
        best: &mut [Option<(f64, Option<usize>)>],
    ) -> f64 {
        if let Some((w, _)) = best[i] {
            return w;
        }
        let mut heaviest: (f64, Option<usize>) = (0.0, None);
        for dep in &stack.resources[i].depends_on {
            if let Some(&j) = index.get(dep) {
                let w = visit(j, stack, index, weight, best);
                if heaviest.1.is_none() || w > heaviest.0 {
                    heaviest = (w, Some(j));
                }
            }
        }
        let total = heaviest.0 + weight(&stack.resources[i].id);
        best[i] = Some((total, heaviest.1));
        total
    }
    let mut end = None;
    let mut heaviest = 0.0;
    for i in 0..n {
        let w = visit(i, stack, &index, &weight, &mut best);
        if end.is_none() || w > heaviest {
            heaviest = w;
            end = Some(i);
        }
    }
    let mut chain = Vec::new();
    let mut at = end;
    while let Some(i) = at {
        chain.push(stack.resources[i].id.clone());
        at = best[i].and_then(|(_, prev)| prev);
    }
    chain.reverse();
    (heaviest, chain)
}

/// The `q` quantile (0..=1) of `values` (nearest rank); `None` when empty.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Least-squares line through `points`: (slope, intercept).
pub fn line_fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    Some((slope, my - slope * mx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::offline_stack;
    use tap_controller::desired::Kind;

    #[test]
    fn the_critical_path_follows_the_heaviest_dependency_chain() {
        let stack = offline_stack(crate::stack::EXAMPLE);
        let (length, chain) = critical_path(&stack, |_| 1.0);
        assert_eq!(length as usize, chain.len());
        for pair in chain.windows(2) {
            let later = stack.get(&pair[1]).unwrap();
            assert!(
                later.depends_on.contains(&pair[0]),
                "{} → {}",
                pair[0],
                pair[1]
            );
        }
        // Weighting one resource heavily puts it on the path.
        let heavy = stack
            .resources
            .iter()
            .find(|r| r.id.kind == Kind::Table)
            .unwrap()
            .id
            .clone();
        let (_, chain) = critical_path(&stack, |id| if *id == heavy { 100.0 } else { 1.0 });
        assert!(chain.contains(&heavy));
    }

    #[test]
    fn quantiles_and_line_fits() {
        assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 0.5), Some(2.0));
        assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 0.95), Some(4.0));
        assert_eq!(quantile(&[], 0.5), None);
        let (slope, intercept) = line_fit(&[(1.0, 3.0), (2.0, 5.0), (3.0, 7.0)]).unwrap();
        assert!((slope - 2.0).abs() < 1e-9 && (intercept - 1.0).abs() < 1e-9);
    }
}
