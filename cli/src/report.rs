//! Benchmark results: aggregation of the runs, the human table, and the JSON report.
//!
//! JSON shape: `{"machine": {...}, "config": {...}, "results": [...], "ratios": [...]}`.
//! Each result is one (workload, engine, granularity) over `--repeat` runs; `counters` are
//! the udax counters by their DESIGN.md names (`{}` for the kernel), from the last run
//! (every run of a result does the same work), as is `store_allocated_bytes`;
//! `rss_peak_bytes` is the highest over the runs. `phases` breaks the time down (the timed
//! phases add up to the total; untimed ones only prepare). `spread` is (max - min) / median
//! of the runs' times and `spread_flagged` says it exceeds [`SPREAD_LIMIT`] (a `!` in the
//! table); `ran_first` says, run by run, whether this engine went first in its repeat (the
//! order alternates). `memory_cost_peak_bytes` is what the mapping cost the machine: its
//! Rss plus the store file's page cache, at the worst phase end.

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::Serialize;
use udax::Stats;

use crate::args::Variant;
use crate::engine::EngineKind;
use crate::machine::Machine;
use crate::size::format_bytes;

/// What one run measured.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Timed nanoseconds divided by the pages mapped.
    pub ns_per_page: f64,
    /// Peak Rss of the mapping over the run's phase ends.
    pub rss_peak: u64,
    /// Peak page cache of the store file over the run's phase ends.
    pub cache_peak: u64,
    /// Peak of the mapping's Rss plus the store's page cache over the run's phase ends.
    pub cost_peak: u64,
    /// Whether this engine ran first in its repeat.
    pub ran_first: bool,
    /// Store bytes allocated after the run.
    pub allocated: u64,
    /// udax counters after the timed phases (None for the kernel).
    pub counters: Option<Stats>,
    /// Each phase: name, ns per page, whether it is timed.
    pub phases: Vec<(&'static str, f64, bool)>,
}

/// One phase of a workload, over the runs.
#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    /// "read", "write", "dirty" or "flush".
    pub name: &'static str,
    /// Whether it counts in the result's time (untimed phases only prepare).
    pub timed: bool,
    /// Median over the runs of this phase's ns / pages.
    pub median_ns_per_page: f64,
}

/// One (workload, engine, granularity) over its runs.
#[derive(Clone, Debug, Serialize)]
pub struct ResultRow {
    /// Workload name.
    pub workload: String,
    /// "udax" or "kernel".
    pub engine: &'static str,
    /// udax granularity ("4k", "64k", "2m"); kernel rows carry the udax configuration
    /// they were paired with, here and in the next three fields.
    pub granularity: &'static str,
    /// udax fault resolution ("handler", "in-thread").
    pub resolution: &'static str,
    /// udax dirty tracking ("sync", "async").
    pub dirty_tracking: &'static str,
    /// The three above as one label ("4k", "2m in-thread").
    pub mode: String,
    /// Bytes mapped.
    pub size_bytes: u64,
    /// Pages mapped (4 KiB).
    pub pages: u64,
    /// Application threads.
    pub threads: usize,
    /// The udax mapping's resident budget (`--budget`, or the workload's default); null
    /// for the kernel, which has none.
    pub budget_bytes: Option<u64>,
    /// Median over the runs of timed ns / pages.
    pub median_ns_per_page: f64,
    /// Fastest run.
    pub min_ns_per_page: f64,
    /// Slowest run.
    pub max_ns_per_page: f64,
    /// Every run, in the order run.
    pub ns_per_page_runs: Vec<f64>,
    /// For every run, whether this engine ran first in its repeat (repeats alternate).
    pub ran_first: Vec<bool>,
    /// (max - min) / median of the runs.
    pub spread: f64,
    /// Whether `spread` exceeds [`SPREAD_LIMIT`]: the median is not to be trusted.
    pub spread_flagged: bool,
    /// size_bytes over the median time, in GiB/s.
    pub gib_per_s: f64,
    /// Highest Rss of the mapping seen.
    pub rss_peak_bytes: u64,
    /// Highest page cache of the store file seen (0 for a remote store, not measured).
    pub page_cache_peak_bytes: u64,
    /// Highest Rss plus page cache seen (what the mapping cost the machine; for the
    /// kernel, whose resident pages are that page cache, counted once).
    pub memory_cost_peak_bytes: u64,
    /// Store bytes allocated after the last run.
    pub store_allocated_bytes: u64,
    /// udax counters of the last run by name; empty for the kernel.
    pub counters: BTreeMap<&'static str, u64>,
    /// The phases of the workload, timed or not, in order.
    pub phases: Vec<Phase>,
}

/// udax's median time over the kernel's, for one workload and granularity.
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    /// Workload name.
    pub workload: String,
    /// udax granularity.
    pub granularity: &'static str,
    /// udax fault resolution.
    pub resolution: &'static str,
    /// udax dirty tracking.
    pub dirty_tracking: &'static str,
    /// The three above as one label.
    pub mode: String,
    /// Median udax ns/page over median kernel ns/page (below 1: udax is faster).
    pub udax_over_kernel: f64,
    /// The fastest udax run over the slowest kernel run: the low end of the error bar.
    pub low: f64,
    /// The slowest udax run over the fastest kernel run: the high end of the error bar.
    pub high: f64,
}

/// The spread ((max - min) / median) above which a row is flagged.
pub const SPREAD_LIMIT: f64 = 0.3;

/// What the ratio column means, printed above the table.
pub const RATIO_DEFINITION: &str = "udax/kernel = udax time / kernel time; below 1 = udax faster";

/// (max - min) / median of `runs` (0 when the median is 0).
pub fn spread(runs: &[f64]) -> f64 {
    let median = median(runs);
    let min = runs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = runs.iter().copied().fold(0.0, f64::max);
    if median > 0.0 {
        (max - min) / median
    } else {
        0.0
    }
}

/// Whether runs with this spread are flagged as untrustworthy.
pub fn spread_flagged(spread: f64) -> bool {
    spread > SPREAD_LIMIT
}

/// The benchmark settings, echoed into the JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    /// Bytes mapped.
    pub size_bytes: u64,
    /// Runs per workload, engine and granularity.
    pub repeat: usize,
    /// Application threads.
    pub threads: usize,
    /// The engines that ran ("udax", "kernel").
    pub engines: Vec<&'static str>,
    /// udax resident budget, if any.
    pub budget_bytes: Option<u64>,
    /// The store path, or null for a temporary store.
    pub store: Option<String>,
}

/// The whole JSON report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// How it ran.
    pub config: Config,
    /// One entry per workload, engine and granularity.
    pub results: Vec<ResultRow>,
    /// One entry per workload and granularity.
    pub ratios: Vec<Ratio>,
}

impl ResultRow {
    /// Aggregates the runs of one workload, engine and granularity (`samples` not empty).
    pub fn new(
        workload: &str,
        engine: EngineKind,
        variant: &Variant,
        (size_bytes, threads, budget_bytes): (u64, usize, Option<u64>),
        samples: &[Sample],
    ) -> ResultRow {
        let runs: Vec<f64> = samples.iter().map(|s| s.ns_per_page).collect();
        let median = median(&runs);
        let spread = spread(&runs);
        let pages = size_bytes / udax::PAGE_SIZE as u64;
        let last = samples.last();
        let counters = last
            .and_then(|s| s.counters)
            .map(|stats| stats.fields().into_iter().collect())
            .unwrap_or_default();
        ResultRow {
            workload: workload.to_string(),
            engine: engine.name(),
            granularity: variant.granularity.name,
            resolution: variant.resolution.name,
            dirty_tracking: variant.tracking.name,
            mode: variant.label(),
            size_bytes,
            pages,
            threads,
            budget_bytes,
            median_ns_per_page: median,
            min_ns_per_page: runs.iter().copied().fold(f64::INFINITY, f64::min),
            max_ns_per_page: runs.iter().copied().fold(0.0, f64::max),
            gib_per_s: gib_per_s(size_bytes, median * pages as f64),
            rss_peak_bytes: samples.iter().map(|s| s.rss_peak).max().unwrap_or(0),
            page_cache_peak_bytes: samples.iter().map(|s| s.cache_peak).max().unwrap_or(0),
            memory_cost_peak_bytes: samples.iter().map(|s| s.cost_peak).max().unwrap_or(0),
            store_allocated_bytes: last.map_or(0, |s| s.allocated),
            counters,
            phases: phases(samples),
            ns_per_page_runs: runs,
            ran_first: samples.iter().map(|s| s.ran_first).collect(),
            spread,
            spread_flagged: spread_flagged(spread),
        }
    }
}

/// The phases of the first run, each with its median over the runs.
fn phases(samples: &[Sample]) -> Vec<Phase> {
    let Some(first) = samples.first() else {
        return Vec::new();
    };
    first
        .phases
        .iter()
        .enumerate()
        .map(|(i, &(name, _, timed))| {
            let times: Vec<f64> = samples
                .iter()
                .filter_map(|s| s.phases.get(i).map(|p| p.1))
                .collect();
            Phase {
                name,
                timed,
                median_ns_per_page: median(&times),
            }
        })
        .collect()
}

/// The median of `values` (the mean of the middle two for an even count; 0 if empty).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn gib_per_s(bytes: u64, ns: f64) -> f64 {
    if ns <= 0.0 {
        return 0.0;
    }
    bytes as f64 / (1u64 << 30) as f64 / (ns / 1e9)
}

/// The ratio udax/kernel for every workload and granularity that has both engines.
pub fn ratios(results: &[ResultRow]) -> Vec<Ratio> {
    results
        .iter()
        .filter(|r| r.engine == EngineKind::Udax.name())
        .filter_map(|udax| {
            let kernel = results.iter().find(|k| {
                k.engine == EngineKind::Kernel.name()
                    && k.workload == udax.workload
                    && k.mode == udax.mode
            })?;
            let over = |u: f64, k: f64| if k > 0.0 { u / k } else { f64::INFINITY };
            Some(Ratio {
                workload: udax.workload.clone(),
                granularity: udax.granularity,
                resolution: udax.resolution,
                dirty_tracking: udax.dirty_tracking,
                mode: udax.mode.clone(),
                udax_over_kernel: over(udax.median_ns_per_page, kernel.median_ns_per_page),
                low: over(udax.min_ns_per_page, kernel.max_ns_per_page),
                high: over(udax.max_ns_per_page, kernel.min_ns_per_page),
            })
        })
        .collect()
}

/// The counters a table row shows, with short names, when non-zero.
const KEY_COUNTERS: [(&str, &str); 15] = [
    ("zero_faults", "zero"),
    ("read_faults", "read"),
    ("write_faults", "write"),
    ("mkwrite_faults", "mkwrite"),
    ("zero_to_dirty", "zero>dirty"),
    ("huge_faults", "huge"),
    ("huge_fallbacks", "fallback"),
    ("read_ahead_ranges", "ahead"),
    ("fault_around_pages", "around"),
    ("write_around_pages", "write_around"),
    ("pages_written_back", "written_back"),
    ("unwritten_skipped", "unwritten"),
    ("evictions", "evicted"),
    ("resident_pages_peak", "resident_peak"),
    ("sigbus_delivered", "sigbus"),
];

fn key_counters(counters: &BTreeMap<&'static str, u64>) -> String {
    KEY_COUNTERS
        .iter()
        .filter_map(|(name, short)| {
            let value = *counters.get(name)?;
            (value != 0).then(|| format!("{short}={value}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Formats ns with thousands separators (one decimal below 100).
fn format_ns(ns: f64) -> String {
    if ns < 100.0 {
        return format!("{ns:.1}");
    }
    let digits = format!("{:.0}", ns);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The table's time cell: median (min-max), and `!` when the spread is flagged.
fn time_cell(r: &ResultRow) -> String {
    format!(
        "{} ({}-{}){}",
        format_ns(r.median_ns_per_page),
        format_ns(r.min_ns_per_page),
        format_ns(r.max_ns_per_page),
        if r.spread_flagged { " !" } else { "" }
    )
}

/// The table's memory-cost cell: Rss plus page cache, with the budget beside it if any.
fn cost_cell(r: &ResultRow) -> String {
    let cost = format_bytes(r.memory_cost_peak_bytes);
    match r.budget_bytes {
        Some(budget) => format!("{cost} (budget {})", format_bytes(budget)),
        None => cost,
    }
}

/// Writes the human table: the ratio's definition, one row per result (the ratio on each
/// udax row), and a legend line if some row's spread is flagged.
pub fn write_table(out: &mut dyn Write, results: &[ResultRow], ratios: &[Ratio]) -> io::Result<()> {
    let header = [
        "workload",
        "engine",
        "mode",
        "ns/page median (min-max)",
        "GiB/s",
        "peak rss",
        "rss+cache",
        "allocated",
        "udax/kernel",
        "counters",
    ];
    let mut rows: Vec<[String; 10]> = Vec::new();
    for r in results {
        let ratio = ratios
            .iter()
            .find(|q| {
                r.engine == EngineKind::Udax.name() && q.workload == r.workload && q.mode == r.mode
            })
            .map_or(String::new(), |q| format!("{:.2}x", q.udax_over_kernel));
        rows.push([
            r.workload.clone(),
            r.engine.to_string(),
            r.mode.clone(),
            time_cell(r),
            format!("{:.2}", r.gib_per_s),
            format_bytes(r.rss_peak_bytes),
            cost_cell(r),
            format_bytes(r.store_allocated_bytes),
            ratio,
            key_counters(&r.counters),
        ]);
    }
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| -> String {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            // Numbers right-aligned, text left-aligned; the last column unpadded.
            let numeric = (3..=8).contains(&i);
            match (i + 1 == cells.len(), numeric) {
                (true, _) => text.push_str(cell),
                (false, true) => text.push_str(&format!("{cell:>width$}  ")),
                (false, false) => text.push_str(&format!("{cell:<width$}  ")),
            }
        }
        text.trim_end().to_string()
    };
    writeln!(out, "{RATIO_DEFINITION}")?;
    writeln!(out, "{}", line(&header))?;
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        writeln!(out, "{}", line(&cells))?;
    }
    if results.iter().any(|r| r.spread_flagged) {
        writeln!(
            out,
            "! spread (max-min)/median above {:.0}%: the median is not to be trusted (rerun, or raise --repeat)",
            SPREAD_LIMIT * 100.0
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{GRANULARITIES, RESOLUTIONS, TRACKINGS};

    fn sample(ns: f64, counters: Option<Stats>) -> Sample {
        Sample {
            ns_per_page: ns,
            rss_peak: 4096,
            cache_peak: 8192,
            cost_peak: 12288,
            ran_first: true,
            allocated: 0,
            counters,
            phases: vec![("read", ns, true)],
        }
    }

    fn four_k() -> Variant {
        Variant {
            granularity: GRANULARITIES[0],
            resolution: RESOLUTIONS[0],
            tracking: TRACKINGS[0],
            read_ahead: true,
        }
    }

    #[test]
    fn median_min_max_and_ratio() {
        let stats = Stats {
            zero_faults: 4,
            ..Stats::default()
        };
        let udax = ResultRow::new(
            "sparse-read",
            EngineKind::Udax,
            &four_k(),
            (16384, 1, Some(8192)),
            &[
                sample(30.0, Some(stats)),
                sample(10.0, Some(stats)),
                sample(20.0, Some(stats)),
            ],
        );
        assert_eq!(udax.median_ns_per_page, 20.0);
        assert_eq!((udax.min_ns_per_page, udax.max_ns_per_page), (10.0, 30.0));
        assert_eq!(udax.counters["zero_faults"], 4);
        assert_eq!(udax.phases.len(), 1);
        assert_eq!(udax.phases[0].median_ns_per_page, 20.0);
        let kernel = ResultRow::new(
            "sparse-read",
            EngineKind::Kernel,
            &four_k(),
            (16384, 1, None),
            &[sample(5.0, None), sample(15.0, None)],
        );
        assert_eq!(kernel.median_ns_per_page, 10.0);
        assert!(kernel.counters.is_empty());
        let rows = [udax, kernel];
        let ratios = ratios(&rows);
        assert_eq!(ratios.len(), 1);
        assert_eq!(ratios[0].udax_over_kernel, 2.0);
        // Fastest udax over slowest kernel, slowest udax over fastest kernel.
        assert_eq!((ratios[0].low, ratios[0].high), (10.0 / 15.0, 30.0 / 5.0));
        let mut text = Vec::new();
        write_table(&mut text, &rows, &ratios).expect("write to a Vec");
        let text = String::from_utf8(text).expect("utf-8");
        assert!(text.contains("2.00x"), "{text}");
        assert!(text.contains("zero=4"), "{text}");
        assert!(text.contains("12.0 KiB (budget 8.0 KiB)"), "{text}");
        assert!(text.starts_with(RATIO_DEFINITION), "{text}");
    }

    #[test]
    fn a_wide_spread_is_flagged_in_the_table() {
        let row = |runs: &[f64]| {
            let samples: Vec<Sample> = runs.iter().map(|&ns| sample(ns, None)).collect();
            ResultRow::new(
                "rand-read",
                EngineKind::Kernel,
                &four_k(),
                (16384, 1, None),
                &samples,
            )
        };
        let table = |rows: &[ResultRow]| {
            let mut text = Vec::new();
            write_table(&mut text, rows, &[]).expect("write to a Vec");
            String::from_utf8(text).expect("utf-8")
        };
        // (13 - 10) / 12 = 0.25: within the limit.
        let steady = row(&[10.0, 12.0, 13.0]);
        assert!(!steady.spread_flagged && (steady.spread - 0.25).abs() < 1e-12);
        let text = table(std::slice::from_ref(&steady));
        assert!(!text.contains('!'), "{text}");
        // (36 - 10) / 12 > 0.3: flagged, in the row and in a legend line.
        let noisy = row(&[10.0, 12.0, 36.0]);
        assert!(noisy.spread_flagged, "{noisy:?}");
        let text = table(&[steady, noisy]);
        assert!(text.contains("12.0 (10.0-36.0) !"), "{text}");
        assert!(
            text.contains("! spread (max-min)/median above 30%"),
            "{text}"
        );
        assert_eq!(text.matches(" !").count(), 1, "{text}");
    }

    #[test]
    fn formats_ns() {
        assert_eq!(format_ns(12.34), "12.3");
        assert_eq!(format_ns(10220.4), "10,220");
        assert_eq!(format_ns(1234567.0), "1,234,567");
    }
}
