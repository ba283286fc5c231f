//! The process's own resource figures on `/metrics`, in the names every Prometheus setup
//! already charts (`process_cpu_seconds_total`, `process_resident_memory_bytes`, …): read from
//! `/proc/self` at each scrape, so they cost nothing between scrapes. Off Linux (no `/proc`)
//! they are simply absent.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Linux reports CPU time in USER_HZ ticks, fixed at 100 for userspace on every architecture
/// the kernel supports (sysconf(_SC_CLK_TCK) would need an unsafe FFI call to say the same).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Default)]
pub(crate) struct ProcessCollector;

/// What one scrape reads.
#[derive(Debug, Default, PartialEq)]
struct Sample {
    cpu_seconds: f64,
    threads: i64,
    start_time_seconds: Option<f64>,
    resident_bytes: Option<i64>,
    virtual_bytes: Option<i64>,
    open_fds: Option<i64>,
}

/// `/proc/self/stat` after the command name (which may hold spaces and parentheses): field 3
/// onwards, so field n is at index n - 3.
fn parse_stat(stat: &str) -> Option<(f64, i64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    let cpu = (ticks(14)? + ticks(15)?) as f64 / TICKS_PER_SECOND;
    let threads = f.get(20 - 3)?.parse::<i64>().ok()?;
    Some((cpu, threads, ticks(22)?))
}

/// A `VmRSS:    12345 kB` line of `/proc/self/status`, in bytes.
fn status_bytes(status: &str, key: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: i64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

fn sample() -> Option<Sample> {
    let (cpu_seconds, threads, start_ticks) = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    Some(Sample {
        cpu_seconds,
        threads,
        start_time_seconds: boot.map(|b| b as f64 + start_ticks as f64 / TICKS_PER_SECOND),
        resident_bytes: status_bytes(&status, "VmRSS:"),
        virtual_bytes: status_bytes(&status, "VmSize:"),
        open_fds: std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as i64),
    })
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = sample() else { return Ok(()) };
        let cpu = ConstCounter::new(s.cpu_seconds);
        let m = encoder.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?;
        cpu.encode(m)?;
        let gauges: [(&str, &str, Option<Unit>, Option<i64>); 4] = [
            (
                "process_resident_memory",
                "Resident memory size",
                Some(Unit::Bytes),
                s.resident_bytes,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size",
                Some(Unit::Bytes),
                s.virtual_bytes,
            ),
            ("process_open_fds", "Open file descriptors", None, s.open_fds),
            ("process_threads", "OS threads", None, Some(s.threads)),
        ];
        for (name, help, unit, value) in gauges {
            let Some(v) = value else { continue };
            let g = ConstGauge::new(v);
            let m = encoder.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?;
            g.encode(m)?;
        }
        if let Some(start) = s.start_time_seconds {
            let g = ConstGauge::new(start);
            let m = encoder.encode_descriptor(
                "process_start_time",
                "Start time of the process since the Unix epoch",
                Some(&Unit::Seconds),
                g.metric_type(),
            )?;
            g.encode(m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 7 0 12345 100000 2000 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((3.0, 7, 12345)));
        assert_eq!(parse_stat("garbage"), None);
        let status = "Name:\tllm-sidecar\nVmSize:\t  204800 kB\nVmRSS:\t   22000 kB\n";
        assert_eq!(status_bytes(status, "VmRSS:"), Some(22000 * 1024));
        assert_eq!(status_bytes(status, "VmSwap:"), None);
    }

    #[test]
    fn this_process_has_figures() {
        let s = sample().expect("/proc is there on Linux");
        assert!(s.resident_bytes.unwrap() > 0 && s.threads >= 1 && s.open_fds.unwrap() > 0);
        assert!(s.start_time_seconds.unwrap() > 1.6e9);
    }
}
