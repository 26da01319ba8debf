//! `udax bench`: the driver. For each workload and granularity, `--repeat` times, it runs
//! the workload on udax and on the kernel baseline, on the same store file, prepared
//! afresh before each run; the order alternates (repeat r: udax first if r is even, the
//! kernel first if odd), so neither engine always inherits the other's leftovers. Then it
//! prints the table, the JSON and the chart. One progress bar with an ETA goes to stderr
//! when stderr is a terminal.
//!
//! Untimed around every run: preparing the store (holes or data, page cache dropped),
//! touching and freeing the memory the run will use (the warm-up), mapping, and afterwards
//! a flush/msync and unmap, so no dirty page of one run is written back during the next.

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::{BenchArgs, JsonOut, Plan, Variant};
use crate::engine::{Engine, EngineKind};
use crate::error::CliError;
use crate::kernel::KernelMap;
use crate::machine::Machine;
use crate::nbd_bench::NbdBench;
use crate::prng::SplitMix64;
use crate::report::{self, Config, Report, ResultRow, Sample};
use crate::store_file::BenchStore;
use crate::udax_engine::{self, UdaxMap};
use crate::warmup;
use crate::workload::Workload;

/// The most memory touched and freed before a run (2 GiB cleared the effect on this
/// project's VMs).
const WARM_UP_MAX: u64 = 2 << 30;

/// The memory a run over `size` bytes may take, warmed before it: the store's page cache
/// plus, for udax, the mapping's own pages beside it.
fn warm_up_bytes(size: u64) -> usize {
    WARM_UP_MAX.min(size.saturating_mul(2)) as usize
}

/// Runs `udax bench`.
pub fn run(args: &BenchArgs) -> Result<(), CliError> {
    let plan = args.plan()?;
    udax_engine::probe()?;
    let mut store = match &plan.store {
        Some(path) => BenchStore::given(path, plan.size)?,
        None => BenchStore::temporary(&std::env::temp_dir(), plan.size)?,
    };
    let mut nbd = match &plan.remote {
        Some(uri) if !plan.workloads.is_empty() => Some(NbdBench::new(uri, plan.size)?),
        _ => None,
    };
    let machine = Machine::collect(store.path());

    // Progress goes to stderr only, so `--json -` keeps stdout to the JSON.
    let bar = progress_bar(io::stderr().is_terminal(), &plan);
    let mut results = Vec::new();
    say_skipped(&plan);
    for (index, &workload) in plan.workloads.iter().enumerate() {
        for variant in plan.variants_of(workload) {
            let samples = run_pair(&mut store, &mut nbd, &plan, workload, variant, index, &bar)?;
            for (&engine, samples) in plan.engines.iter().zip(&samples) {
                let budget = match engine {
                    EngineKind::Udax => {
                        workload.budget(plan.size, plan.budget, variant.tracking.value)
                    }
                    EngineKind::Kernel => None,
                };
                let run = (plan.size, plan.threads, budget);
                results.push(ResultRow::new(
                    workload.name(),
                    engine,
                    variant,
                    run,
                    samples,
                ));
            }
        }
        let summary = report::ratios(&results)
            .iter()
            .filter(|r| r.workload == workload.name())
            .map(|r| format!("{} {:.2}x", r.mode, r.udax_over_kernel))
            .collect::<Vec<_>>()
            .join(", ");
        if !summary.is_empty() {
            let line = format!("{:>16} udax/kernel {summary}", workload.name());
            // A hidden bar (stderr not a terminal: a log, CI) prints nothing: the line goes
            // to stderr itself, so a long run that is killed still leaves what it measured.
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
    }
    bar.finish_and_clear();
    if let Some(lazy) = plan.lazy_restore {
        crate::lazy_restore::run(&plan, lazy)?;
    }
    drop(store);
    if plan.workloads.is_empty() {
        return Ok(());
    }
    output(&plan, machine, results)?;
    match &nbd {
        Some(nbd) if plan.json != Some(JsonOut::Stdout) => nbd
            .write_summary(&mut io::stdout().lock())
            .map_err(|e| CliError::failed("writing to stdout", e)),
        _ => Ok(()),
    }
}

/// Says on stderr which runs of all workloads are left out, and how to run them.
fn say_skipped(plan: &Plan) {
    for &workload in &plan.workloads {
        for variant in plan.variants.iter().filter(|v| !plan.runs(workload, v)) {
            eprintln!(
                "{} at {}: skipped: under its budget 2 MiB faults thrash (every random 4 KiB \
                 access reads and evicts 2 MiB; hours at 1GiB); run it with --workload {}",
                workload.name(),
                variant.label(),
                workload.name()
            );
        }
    }
}

/// The order of `engines` in repeat `repeat`: as given when `repeat` is even, reversed
/// when odd (with both engines: udax first, then the kernel first, and so on).
pub fn engine_order(engines: &[EngineKind], repeat: usize) -> Vec<(usize, EngineKind)> {
    let mut order: Vec<(usize, EngineKind)> = engines.iter().copied().enumerate().collect();
    if repeat % 2 == 1 {
        order.reverse();
    }
    order
}

/// Runs one workload at one granularity `--repeat` times on each of `plan.engines`,
/// alternating which goes first; the samples of each engine, in `plan.engines` order.
fn run_pair(
    store: &mut BenchStore,
    nbd: &mut Option<NbdBench>,
    plan: &Plan,
    workload: Workload,
    variant: &Variant,
    index: usize,
    bar: &ProgressBar,
) -> Result<Vec<Vec<Sample>>, CliError> {
    let mut samples = vec![Vec::new(); plan.engines.len()];
    for repeat in 0..plan.repeat {
        // The same random orders for both engines within a repeat.
        let seed = SplitMix64::new(((index as u64) << 32) | repeat as u64).next_u64();
        for (place, (slot, engine)) in engine_order(&plan.engines, repeat).into_iter().enumerate() {
            bar.set_message(format!(
                "{} {} {} run {}/{}",
                workload.name(),
                engine.name(),
                variant.label(),
                repeat + 1,
                plan.repeat
            ));
            let run = (workload, variant, engine, seed);
            let mut sample = run_once(store, nbd, plan, run)?;
            sample.ran_first = place == 0;
            samples[slot].push(sample);
            bar.inc(1);
        }
    }
    Ok(samples)
}

/// One run: prepare the store, map it, run the workload, flush and unmap, measure. With
/// a remote store (NBD or RBD), udax maps it (the file's state copied in first).
fn run_once(
    store: &mut BenchStore,
    nbd: &mut Option<NbdBench>,
    plan: &Plan,
    (workload, variant, engine, seed): (Workload, &Variant, EngineKind, u64),
) -> Result<Sample, CliError> {
    store.prepare(workload, seed)?;
    // Last before the mapping: memory the host took back goes cold again within seconds.
    warmup::touch_and_free(warm_up_bytes(plan.size))
        .map_err(|e| CliError::failed("touching memory before the run", e))?;
    let (outcome, counters) = match engine {
        EngineKind::Udax => {
            let budget = workload.budget(plan.size, plan.budget, variant.tracking.value);
            let export = match nbd {
                Some(nbd) => Some(nbd.before_run(store.path())?),
                None => None,
            };
            let map = match &export {
                Some(export) => UdaxMap::over(export.store(), plan.size, variant, budget)?,
                None => UdaxMap::new(store.path(), plan.size, variant, budget)?,
            };
            // Over a remote store the local file's page cache is not the mapping's.
            let cache_of = export.is_none().then(|| store.file());
            let outcome = workload.run(&map, plan.threads, seed, cache_of)?;
            let counters = map.counters();
            map.close()?;
            if let (Some(nbd), Some(export)) = (nbd.as_mut(), export) {
                let label = variant.label();
                nbd.after_run(
                    store.path(),
                    &export,
                    workload.writes(),
                    workload.name(),
                    &label,
                )?;
            }
            (outcome, counters)
        }
        EngineKind::Kernel => {
            let map = KernelMap::new(store.file(), plan.size as usize)
                .map_err(|e| CliError::failed("mmap of the store (kernel baseline)", e))?;
            let outcome = workload.run(&map, plan.threads, seed, Some(store.file()))?;
            map.flush()?;
            (outcome, None)
        }
    };
    workload.verify(store.file(), plan.size, seed)?;
    store.settle();
    let per_page = |d: Duration| d.as_nanos() as f64 / plan.pages() as f64;
    Ok(Sample {
        ns_per_page: per_page(outcome.timed),
        phases: outcome
            .phases
            .iter()
            .map(|&(name, took, timed)| (name, per_page(took), timed))
            .collect(),
        rss_peak: outcome.rss_peak,
        cache_peak: outcome.cache_peak,
        cost_peak: outcome.cost_peak,
        ran_first: false,
        allocated: store.allocated_bytes()?,
        counters,
    })
}

/// One bar over every run of the bench (workloads x modes x repeats x engines), with the
/// elapsed time and an ETA; drawn on stderr when `show`, else hidden.
fn progress_bar(show: bool, plan: &Plan) -> ProgressBar {
    let runs = plan.run_count();
    let target = if show {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(runs as u64), target);
    let style = ProgressStyle::with_template(
        "[{bar:24}] {pos}/{len} runs, {elapsed} elapsed, ETA {eta} {msg}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    if show {
        // Keeps the elapsed time moving during long runs; hidden bars need no ticker thread.
        bar.enable_steady_tick(Duration::from_millis(500));
    }
    bar
}

/// Prints the table (unless the JSON goes to stdout), writes the JSON and the chart.
fn output(plan: &Plan, machine: Machine, results: Vec<ResultRow>) -> Result<(), CliError> {
    let ratios = report::ratios(&results);
    // A closed stdout (`| head`) ends the output quietly.
    let stdout_error = |e: io::Error| CliError::failed("writing to stdout", e);
    let quiet_pipe = |r: io::Result<()>| match r {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(stdout_error),
    };
    if plan.json != Some(JsonOut::Stdout) {
        let stdout = io::stdout();
        quiet_pipe(report::write_table(&mut stdout.lock(), &results, &ratios))?;
    }
    if let Some(path) = &plan.plot {
        let title = format!(
            "udax / kernel time, {} store, {} thread(s)",
            crate::size::format_bytes(plan.size),
            plan.threads
        );
        crate::plot::draw(path, &ratios, &title)?;
    }
    let Some(json) = &plan.json else {
        return Ok(());
    };
    let report = Report {
        machine,
        config: Config {
            size_bytes: plan.size,
            repeat: plan.repeat,
            threads: plan.threads,
            engines: plan.engines.iter().map(|e| e.name()).collect(),
            budget_bytes: plan.budget,
            store: plan.store.as_ref().map(|p| p.display().to_string()),
        },
        results,
        ratios,
    };
    let text = serde_json::to_string_pretty(&report)
        .map_err(|e| CliError::failed("encoding the JSON report", e))?;
    match json {
        JsonOut::Stdout => {
            let stdout = io::stdout();
            let mut out = stdout.lock();
            quiet_pipe(writeln!(out, "{text}"))
        }
        JsonOut::File(path) => std::fs::write(path, text + "\n")
            .map_err(|e| CliError::failed(format!("writing {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_engine_alternates() {
        let both = [EngineKind::Udax, EngineKind::Kernel];
        let firsts: Vec<EngineKind> = (0..4).map(|r| engine_order(&both, r)[0].1).collect();
        use EngineKind::{Kernel, Udax};
        assert_eq!(firsts, [Udax, Kernel, Udax, Kernel]);
        // Slots stay the engines' places in the plan, whatever the order.
        assert_eq!(engine_order(&both, 1), [(1, Kernel), (0, Udax)]);
        assert_eq!(engine_order(&[Kernel], 1), [(0, Kernel)]);
    }
}
