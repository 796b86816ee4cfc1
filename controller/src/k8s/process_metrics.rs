//! The standard Prometheus process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, …, as every official client exports them), read from `/proc/self` through the
//! `procfs` crate at each scrape. prometheus-client has no process collector of its own. On other
//! systems than Linux the collector adds nothing.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Registered once per [`super::Metrics`] registry.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// One reading of this process.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: Option<f64>,
    pub resident_memory_bytes: Option<u64>,
    pub virtual_memory_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub threads: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

impl ProcessSample {
    /// Reads `/proc/self`; a field that cannot be read stays `None` (and is not exported).
    #[cfg(target_os = "linux")]
    pub fn read() -> Self {
        use procfs::prelude::*;
        use procfs::process::{LimitValue, Process};

        let mut sample = Self::default();
        let Ok(me) = Process::myself() else {
            return sample;
        };
        let ticks = procfs::ticks_per_second() as f64;
        if let Ok(stat) = me.stat() {
            sample.cpu_seconds = Some((stat.utime + stat.stime) as f64 / ticks);
            sample.resident_memory_bytes = Some(stat.rss_bytes().get());
            sample.virtual_memory_bytes = Some(stat.vsize);
            sample.threads = u64::try_from(stat.num_threads).ok();
            if let Ok(boot) = procfs::boot_time_secs() {
                sample.start_time_seconds = Some(boot as f64 + stat.starttime as f64 / ticks);
            }
        }
        sample.open_fds = me.fd_count().ok().map(|n| n as u64);
        if let Ok(limits) = me.limits() {
            sample.max_fds = match limits.max_open_files.soft_limit {
                LimitValue::Value(v) => Some(v),
                LimitValue::Unlimited => None,
            };
        }
        sample
    }

    #[cfg(not(target_os = "linux"))]
    pub fn read() -> Self {
        Self::default()
    }
}

fn gauge<N>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: Option<N>,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<N>: EncodeMetric,
{
    let Some(value) = value else { return Ok(()) };
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = ProcessSample::read();
        if let Some(cpu) = s.cpu_seconds {
            let metric = ConstCounter::new(cpu);
            metric.encode(encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds.",
                Some(&Unit::Seconds),
                metric.metric_type(),
            )?)?;
        }
        let as_i64 = |v: Option<u64>| v.and_then(|v| i64::try_from(v).ok());
        gauge(
            &mut encoder,
            "process_resident_memory",
            "Resident memory size in bytes.",
            Some(&Unit::Bytes),
            as_i64(s.resident_memory_bytes),
        )?;
        gauge(
            &mut encoder,
            "process_virtual_memory",
            "Virtual memory size in bytes.",
            Some(&Unit::Bytes),
            as_i64(s.virtual_memory_bytes),
        )?;
        gauge(
            &mut encoder,
            "process_open_fds",
            "Number of open file descriptors.",
            None,
            as_i64(s.open_fds),
        )?;
        gauge(
            &mut encoder,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            None,
            as_i64(s.max_fds),
        )?;
        gauge(
            &mut encoder,
            "process_threads",
            "Number of OS threads in the process.",
            None,
            as_i64(s.threads),
        )?;
        gauge(
            &mut encoder,
            "process_start_time",
            "Start time of the process since unix epoch in seconds.",
            Some(&Unit::Seconds),
            s.start_time_seconds,
        )?;
        Ok(())
    }
}
