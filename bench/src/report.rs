//! What a run measured: delivery counts, latency percentiles (HDR histogram), connect times,
//! and the server processes' memory and CPU read from /proc. Printed as a table or as JSON.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The histograms every latency and connect time is recorded in (microseconds).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// A histogram as (value, count) pairs, one per non-empty bucket: each value is its bucket's
/// highest equivalent value, so recording the pairs into [`histogram`] rebuilds the same
/// buckets, and percentiles merged across processes are exact, not averaged.
pub fn to_pairs(histogram: &Histogram<u64>) -> Vec<(u64, u64)> {
    histogram
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Adds pairs made by [`to_pairs`] into `histogram`.
pub fn add_pairs(histogram: &mut Histogram<u64>, pairs: &[(u64, u64)]) -> Result<()> {
    for &(value, count) in pairs {
        histogram
            .record_n(value, count)
            .with_context(|| format!("recording {count} × {value} µs"))?;
    }
    Ok(())
}

/// Per-receiver tallies, merged at the end.
#[derive(Debug)]
pub struct Tally {
    /// Delivery latency in microseconds.
    pub latency: Histogram<u64>,
    pub delivered: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub errors: u64,
    /// Bytes the receiving sockets read (compressed as they came).
    pub wire_bytes: u64,
    /// Per publisher (duplicates and reordering are detected with it).
    publishers: Vec<Sequence>,
    last_offset: Option<u64>,
}

/// One publisher's sequence as received: the highest seen and the gaps below it.
#[derive(Debug, Clone, Default)]
struct Sequence {
    last: Option<u64>,
    /// A late arrival fills a gap (out of order); anything else below `last` is a duplicate.
    /// Servers that reorder (socketioxide runs each event handler as its own task) would
    /// otherwise show every reordered delivery as duplicated and lost.
    missing: HashSet<u64>,
}

impl Tally {
    pub fn new(publishers: usize) -> Self {
        Self {
            latency: histogram(),
            delivered: 0,
            duplicated: 0,
            out_of_order: 0,
            errors: 0,
            wire_bytes: 0,
            publishers: vec![Sequence::default(); publishers],
            last_offset: None,
        }
    }

    /// Records one delivery received at `now_ns`.
    pub fn record(
        &mut self,
        now_ns: u64,
        sent_ns: u64,
        publisher: u32,
        seq: u64,
        offset: Option<u64>,
    ) {
        if self.count(publisher, seq, offset) {
            let micros = now_ns.saturating_sub(sent_ns) / 1000;
            let _ = self.latency.record(micros.max(1));
        }
    }

    /// Counts one delivery (delivered, duplicated, out of order) without recording its
    /// latency; true if its latency is to be recorded.
    pub fn count(&mut self, publisher: u32, seq: u64, offset: Option<u64>) -> bool {
        let Some(sequence) = self.publishers.get_mut(publisher as usize) else {
            self.errors += 1;
            return false;
        };
        let mut late = false;
        match sequence.last {
            Some(last) if seq <= last => {
                if !sequence.missing.remove(&seq) {
                    self.duplicated += 1;
                    return false;
                }
                late = true;
            }
            // Every receiver subscribed before the first publication: sequences start at 0.
            last => {
                sequence.missing.extend(last.map_or(0, |l| l + 1)..seq);
                sequence.last = Some(seq);
            }
        }
        if let Some(offset) = offset {
            late |= self.last_offset.is_some_and(|l| offset <= l);
            self.last_offset = Some(offset);
        }
        if late {
            self.out_of_order += 1;
        }
        self.delivered += 1;
        true
    }

    pub fn merge(&mut self, other: &Tally) {
        let _ = self.latency.add(&other.latency);
        self.delivered += other.delivered;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.errors += other.errors;
        self.wire_bytes += other.wire_bytes;
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        Self {
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: histogram.max() as f64 / 1000.0,
        }
    }
}

/// A server process as seen from /proc.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessSample {
    pub pid: u32,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    /// CPU time used during the measured window, as a percentage of one core.
    pub cpu_percent: f64,
}

/// CPU ticks (user + system) of a process, from /proc/PID/stat.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Samples `pids` at the end of a window that started with `ticks_before`.
/// CPU ticks used over `window`, as a percentage of one core.
pub fn cpu_percent(ticks: u64, window: Duration) -> f64 {
    const TICKS_PER_SECOND: f64 = 100.0;
    ticks as f64 / TICKS_PER_SECOND / window.as_secs_f64().max(1e-9) * 100.0
}

pub fn sample(pids: &[u32], ticks_before: &[Option<u64>], window: Duration) -> Vec<ProcessSample> {
    const TICKS_PER_SECOND: f64 = 100.0;
    pids.iter()
        .zip(ticks_before)
        .filter_map(|(&pid, before)| {
            let (rss_kib, peak_rss_kib) = memory_kib(pid)?;
            let used = cpu_ticks(pid)?.saturating_sub((*before)?);
            Some(ProcessSample {
                pid,
                rss_kib,
                peak_rss_kib,
                cpu_percent: used as f64 / TICKS_PER_SECOND / window.as_secs_f64().max(1e-9)
                    * 100.0,
            })
        })
        .collect()
}

/// The result of one run.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    /// Generator processes whose reports were merged into this one (`--processes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<usize>,
    pub protocol: crate::conn::Protocol,
    pub urls: Vec<String>,
    pub connections: usize,
    pub connect_ms: Option<Latency>,
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub errors: u64,
    pub offered_per_sec: f64,
    pub delivered_per_sec: f64,
    pub latency: Option<Latency>,
    pub servers: Vec<ProcessSample>,
    /// The load generator's own CPU over the window, in % of one core (all its processes
    /// together): a figure counts as the server's limit only if the generator had CPU to
    /// spare.
    #[serde(default)]
    pub generator_cpu_percent: f64,
    /// Idle scenario: server memory added per connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_kib_per_connection: Option<f64>,
    /// Bytes read off the wire per delivery by the receivers (frames, compressed or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wire_bytes_per_delivery: Option<f64>,
    pub seconds: f64,
    /// Only in a `--processes` child's report, for the parent to merge percentiles exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub histograms: Option<Histograms>,
}

/// The raw histograms behind a report's percentiles, as [`to_pairs`] writes them.
#[derive(Debug, Serialize, Deserialize)]
pub struct Histograms {
    pub latency_us: Vec<(u64, u64)>,
    pub connect_us: Vec<(u64, u64)>,
}

impl Report {
    pub fn print(&self) {
        println!("scenario      {} ({:?})", self.scenario, self.protocol);
        if let Some(processes) = self.processes {
            println!("processes     {processes} (one merged report)");
        }
        println!("targets       {}", self.urls.join(" "));
        println!("connections   {}", self.connections);
        if let Some(c) = &self.connect_ms {
            println!(
                "connect ms    p50 {:.2}  p99 {:.2}  max {:.2}",
                c.p50_ms, c.p99_ms, c.max_ms
            );
        }
        println!(
            "sent          {}   expected deliveries {}   delivered {}",
            self.sent, self.expected, self.delivered
        );
        println!(
            "lost          {}   duplicated {}   out of order {}   errors {}",
            self.lost, self.duplicated, self.out_of_order, self.errors
        );
        println!(
            "rate          offered {:.0}/s deliveries   delivered {:.0}/s over {:.1} s",
            self.offered_per_sec, self.delivered_per_sec, self.seconds
        );
        if let Some(l) = &self.latency {
            println!(
                "latency ms    p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
            );
        }
        for s in &self.servers {
            println!(
                "server {:>6}  rss {} KiB  peak {} KiB  cpu {:.0}%",
                s.pid, s.rss_kib, s.peak_rss_kib, s.cpu_percent
            );
        }
        println!("generator     cpu {:.0}%", self.generator_cpu_percent);
        if let Some(per) = self.rss_kib_per_connection {
            println!("memory        {per:.2} KiB of server RSS per idle connection");
        }
        if let Some(per) = self.wire_bytes_per_delivery {
            println!("wire          {per:.1} bytes read per delivery");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Latency, Tally, add_pairs, histogram, to_pairs};

    #[test]
    fn histograms_rebuilt_from_pairs_have_the_same_percentiles() {
        let mut a = histogram();
        let mut b = histogram();
        let mut both = histogram();
        // Values spread over several orders of magnitude, so buckets of many widths are used.
        let mut x: u64 = 12345;
        for i in 0..20_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let value = 1 + (x >> 33) % 10u64.pow(1 + (i % 6) as u32);
            if i % 3 == 0 {
                a.record(value)
            } else {
                b.record(value)
            }
            .unwrap();
            both.record(value).unwrap();
        }
        let mut merged = histogram();
        add_pairs(&mut merged, &to_pairs(&a)).unwrap();
        add_pairs(&mut merged, &to_pairs(&b)).unwrap();
        assert_eq!(merged.len(), both.len());
        assert_eq!(merged.max(), both.max());
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0] {
            assert_eq!(
                merged.value_at_quantile(q),
                both.value_at_quantile(q),
                "q {q}"
            );
        }
        let (m, o) = (Latency::of(&merged), Latency::of(&both));
        assert_eq!(
            (m.p50_ms, m.p999_ms, m.max_ms),
            (o.p50_ms, o.p999_ms, o.max_ms)
        );
    }

    #[test]
    fn a_late_delivery_is_out_of_order_and_a_repeated_one_duplicated() {
        let mut tally = Tally::new(1);
        for seq in [0, 2, 1, 2, 3] {
            tally.record(10, 5, 0, seq, None);
        }
        assert_eq!(
            (tally.delivered, tally.out_of_order, tally.duplicated),
            (4, 1, 1)
        );
    }
}
