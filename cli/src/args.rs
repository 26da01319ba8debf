//! Command-line arguments (clap) and their validation into a [`Plan`].
//!
//! Values that need a one-line "cause: fix" error on bad input (sizes, workload and
//! granularity lists, counts) are taken as text and checked here, not by clap.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use udax::{DirtyTracking, Granularity, Resolution};

use crate::engine::EngineKind;
use crate::error::CliError;
use crate::size::parse_size;
use crate::workload::Workload;

/// udax: a DAX-style memory-mapped view of any store, page faults served in user space.
#[derive(Debug, Parser)]
#[command(name = "udax", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Benchmark udax against the kernel's own mmap of the same file.
    #[command(after_long_help = bench_help())]
    Bench(Box<BenchArgs>),
    /// Show a store file's or an NBD export's size, allocated bytes and extents (data and
    /// holes).
    Inspect(InspectArgs),
    /// Serve a Firecracker microVM's snapshot restore (its page-fault handler socket).
    #[command(after_long_help = FIRECRACKER_HELP)]
    Firecracker(FirecrackerArgs),
    /// Punch a file's all-zero 4 KiB pages into holes (like fallocate --dig-holes).
    Dig(DigArgs),
}

const FIRECRACKER_HELP: &str = "\
Start it before the VMM loads the snapshot, and give Firecracker the socket:
  PUT /snapshot/load {\"snapshot_path\": ..., \"mem_backend\": {\"backend_type\": \"Uffd\",
  \"backend_path\": \"PATH\"}, \"resume_vm\": true}
udax serves the guest memory's faults from --mem-file (with --diff layers on top: the
top-most data wins, a hole looks below): holes and all-zero pages get the zero page (no
memory), data is copied; 2 MiB (hugetlbfs) regions are filled in 2 MiB units. Balloon
removes come back as zeros. When the VMM closes the socket (or exits), udax prints its
counters on stdout and exits 0 (1 if some fault could not be served: its page was
poisoned, the VMM got SIGBUS). Bad input (a malformed message, no uffd, a region outside
the file, overlapping regions) exits 2 and kills the VMM, which would otherwise hang.";

/// `udax firecracker` arguments.
#[derive(Debug, Args)]
pub struct FirecrackerArgs {
    /// The Unix socket to listen on (the snapshot load's mem_backend.backend_path).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// The snapshot's memory file (a Full snapshot, or the base of the --diff files).
    #[arg(long, value_name = "FILE")]
    pub mem_file: PathBuf,
    /// A Diff snapshot's memory file, layered over the ones before (repeatable; the last
    /// is top-most).
    #[arg(long, value_name = "FILE")]
    pub diff: Vec<PathBuf>,
    /// Write the memory-file offsets of this restore's first faults, in order, to FILE.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Install the pages a --record FILE lists right after the handshake, in batches.
    #[arg(long, value_name = "FILE")]
    pub prefetch: Option<PathBuf>,
    /// Fault-around window for 4 KiB regions: 4KiB (none) up to 2MiB (default 64KiB;
    /// 4KiB with --record, so that every page of the working set faults and is recorded).
    #[arg(long, value_name = "SIZE")]
    pub fault_around: Option<String>,
    /// Handler threads (default: one per CPU, at most 4).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

/// `udax dig` arguments.
#[derive(Debug, Args)]
pub struct DigArgs {
    /// The file (a snapshot's memory file, say).
    pub path: PathBuf,
}

/// The long help of `udax bench`: the workloads (from [`Workload::about`]) and the rest.
fn bench_help() -> String {
    let mut text = String::from(
        "Workloads (each on udax and on the kernel's MAP_SHARED mmap of the same file, alternating):\n",
    );
    for w in Workload::ALL {
        text.push_str(&format!("  {:<17} {}\n", w.name(), w.about()));
    }
    text.push('\n');
    text.push_str(BENCH_HELP);
    text
}

const BENCH_HELP: &str = "\
The store: without --store, a sparse file under $TMPDIR (or /tmp), removed afterwards.
With --store PATH, that file is used and kept. A file that did not exist is created.
An existing file is never modified by sparse-read, seq-read, rand-read and
rand-read-budget, which read it as it is; the writing workloads (seq-write, rand-write,
write-after-read, mkwrite, flush, sort) punch holes in or fill its first SIZE bytes as
they need and OVERWRITE ITS DATA.

Every run starts cold: the store is put back in the state its workload starts from
(holes punched, or filled with data and fdatasync'ed) and the file's page cache is dropped
with posix_fadvise(DONTNEED); after the timed phases each run is flushed (msync for the
kernel) and unmapped, untimed. Right before every run, twice SIZE (at most 2 GiB) of
anonymous MADV_HUGEPAGE memory is touched (a byte every 4 KiB) and freed, so first-touch
costs of the virtual machine (memory its host took back) do not land in the timings. The
engines alternate: in repeat r udax runs first if r is even, the kernel first if odd.

Measured: ns per 4 KiB page of the timed phases (median, min-max over --repeat runs; a
`!` marks a row whose spread (max-min)/median exceeds 30%), peak Rss of the mapping
(sampled from /proc/self/smaps at the end of each phase), rss+cache: the peak of that Rss
plus the store file's page cache (cachestat(2), else mincore(2)), what the mapping costs
the machine (the kernel's Rss is its page cache, counted once), store bytes allocated
afterwards (st_blocks*512), and the udax counters. udax/kernel is udax's median time over
the kernel's: below 1, udax is faster. The kernel baseline ignores --granularity and
--budget; its rows are paired with each granularity. --engine udax (or kernel) runs one
engine only, e.g. under strace. Progress, with an ETA, goes to stderr when it is a
terminal.

The resident budget: --budget caps the udax mapping's resident memory in every workload.
sort and rand-read-budget run under a budget even without it, a quarter of SIZE (the
store is four times the budget), except with --dirty-tracking async, which cannot run
under a budget; the kernel baseline never has one and caches what it touches, which its
peak Rss shows. Under a budget the default granularity is 256 KiB for sequential faults
and 4k for the others; --granularity 2m there thrashes: every random 4 KiB read reads and
evicts a whole 2 MiB range (rand-read-budget measured 663x the kernel at 2m, 21x at the
default), so a run of all workloads leaves them out at an explicit 2m (and says so) unless
--budget is given: name them with --workload to run them there. sort checks the file
after each run (sorted, same values), untimed; with --threads N it sorts on N threads.

With --store nbd://host[:port]/export (or nbd+unix:///export?socket=PATH), udax maps the
NBD export and the kernel maps the temporary file: before each udax run the file's state
is copied into the export, and after a writing run copied back (untimed), so THE EXPORT'S
FIRST SIZE BYTES ARE OVERWRITTEN. The NBD requests of each workload follow the table.
With --store rbd:POOL/IMAGE[?conf=PATH] (a build with --features rbd) the same holds for
the Ceph RBD image.

lazy-restore (only with --store nbd://... or rbd:..., not part of all): the export becomes a sparse
image of SIZE with --data of it written (1 MiB runs at random places); then --touch of its
pages, at random, are read (a restored VM's first accesses), on udax over NBD, and on the
kernel's mmap of a local copy made first with nbdcopy (libnbd-bin; rbd export for an RBD
image), the copy included in
its time. Reported: both times, bytes moved over the network, READ requests, the peak of
requests in flight.";

/// `udax bench` arguments.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Bytes to map: 4096, 64KiB, 256MiB, 1GiB (a multiple of 4096).
    #[arg(long, value_name = "SIZE", default_value = "1GiB")]
    pub size: String,
    /// Store file to use and keep (default: a temporary sparse file, removed afterwards),
    /// or an NBD or RBD URI. Writing workloads overwrite its data; see --help.
    #[arg(long, value_name = "PATH|URI")]
    pub store: Option<PathBuf>,
    /// lazy-restore: the fraction of pages touched, 0 to 1.
    #[arg(long, value_name = "FRACTION", default_value = "0.1")]
    pub touch: String,
    /// lazy-restore: the fraction of the image that holds data, 0 to 1.
    #[arg(long, value_name = "FRACTION", default_value = "0.5")]
    pub data: String,
    /// Workloads to run, comma-separated (default: all).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub workload: Vec<String>,
    /// udax fault granularities, comma-separated: default (the library's choice: 2m, or
    /// under a budget 256 KiB for sequential faults and 4k for the others), 4k, 64k
    /// (fault-around), 2m (huge; under a small budget it thrashes: a random 4 KiB read
    /// reads and evicts 2 MiB).
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub granularity: Vec<String>,
    /// Who serves udax faults, comma-separated: handler (handler threads), in-thread
    /// (the faulting thread, through SIGBUS).
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "handler"
    )]
    pub resolution: Vec<String>,
    /// How udax notices first writes to clean pages, comma-separated: sync
    /// (write-protect faults, DAX semantics), async (WP_ASYNC, found at flush).
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "sync"
    )]
    pub dirty_tracking: Vec<String>,
    /// udax without read-ahead into the mapping (`Options::read_ahead(false)`): every
    /// fault reads only what its granularity says, one fault a page at 4k (the per-fault
    /// costs, e.g. under strace).
    #[arg(long)]
    pub no_read_ahead: bool,
    /// Application threads running each workload (the pages split in contiguous shares).
    #[arg(long, value_name = "N", default_value = "1")]
    pub threads: String,
    /// Resident-memory budget of the udax mapping, at least 64KiB (default: none; a quarter
    /// of SIZE for sort and rand-read-budget).
    #[arg(long, value_name = "SIZE")]
    pub budget: Option<String>,
    /// Runs of each workload on each engine.
    #[arg(long, value_name = "N", default_value = "3")]
    pub repeat: String,
    /// Which engines run: udax, kernel or both (one engine: no ratios; e.g. to count
    /// udax's syscalls alone with strace).
    #[arg(long, value_name = "udax|kernel|both", default_value = "both")]
    pub engine: String,
    /// Write the results as JSON to FILE, or to stdout with "-" (then no table).
    #[arg(long, value_name = "FILE|-")]
    pub json: Option<String>,
    /// Draw the udax/kernel ratios per workload as an SVG bar chart, min-max as error bars.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

/// `udax inspect` arguments.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The store file, an NBD URI (nbd://host[:port]/export,
    /// nbd+unix:///export?socket=PATH) or an RBD image (rbd:POOL/IMAGE[?conf=PATH], in a
    /// build with --features rbd).
    pub path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// List every extent, even when there are many.
    #[arg(long)]
    pub all: bool,
}

/// Where the JSON report goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonOut {
    /// Standard output (no table then).
    Stdout,
    /// A file.
    File(PathBuf),
}

/// A command-line name and the library value it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice<T> {
    /// The name on the command line and in reports.
    pub name: &'static str,
    /// What it means for the library.
    pub value: T,
}

/// The granularities `--granularity` accepts.
/// `default`: whatever the library chooses for the mapping (`Options::granularity_for`:
/// 2 MiB, or under a budget 256 KiB for sequential faults and 4 KiB for the others).
pub const GRANULARITIES: [Choice<Option<Granularity>>; 4] = [
    Choice {
        name: "default",
        value: None,
    },
    Choice {
        name: "4k",
        value: Some(Granularity::Page),
    },
    Choice {
        name: "64k",
        value: Some(Granularity::FaultAround(64 << 10)),
    },
    Choice {
        name: "2m",
        value: Some(Granularity::Huge),
    },
];

/// The fault resolutions `--resolution` accepts.
pub const RESOLUTIONS: [Choice<Resolution>; 2] = [
    Choice {
        name: "handler",
        value: Resolution::HandlerThreads,
    },
    Choice {
        name: "in-thread",
        value: Resolution::InThread,
    },
];

/// The dirty-tracking modes `--dirty-tracking` accepts.
pub const TRACKINGS: [Choice<DirtyTracking>; 2] = [
    Choice {
        name: "sync",
        value: DirtyTracking::Sync,
    },
    Choice {
        name: "async",
        value: DirtyTracking::Async,
    },
];

/// One udax configuration the benchmark compares with the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variant {
    /// Fault granularity.
    pub granularity: Choice<Option<Granularity>>,
    /// Who serves faults.
    pub resolution: Choice<Resolution>,
    /// How first writes are noticed.
    pub tracking: Choice<DirtyTracking>,
    /// Whether sequential runs of read faults are read ahead (`--no-read-ahead`: not).
    pub read_ahead: bool,
}

impl Variant {
    /// A short label: the granularity, then whichever mode is not the default
    /// ("4k", "2m in-thread", "64k in-thread async").
    pub fn label(&self) -> String {
        let mut label = self.granularity.name.to_string();
        for (choice, default) in [
            (self.resolution.name, RESOLUTIONS[0].name),
            (self.tracking.name, TRACKINGS[0].name),
        ] {
            if choice != default {
                label.push(' ');
                label.push_str(choice);
            }
        }
        if !self.read_ahead {
            label.push_str(" no-read-ahead");
        }
        label
    }
}

/// The lazy-restore workload's fractions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LazyRestore {
    /// Of the pages, how many are touched.
    pub touch: f64,
    /// Of the image, how much holds data.
    pub data: f64,
}

/// The name of the lazy-restore workload (not a [`Workload`]: it has its own driver).
pub const LAZY_RESTORE: &str = "lazy-restore";

/// A validated `udax bench` invocation.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Bytes mapped (a page multiple, > 0).
    pub size: u64,
    /// The `--store` path, if given (and not a URI).
    pub store: Option<PathBuf>,
    /// The `--store` URI of an NBD export or RBD image, if given.
    pub remote: Option<String>,
    /// lazy-restore, if asked for.
    pub lazy_restore: Option<LazyRestore>,
    /// Workloads, in the order given.
    pub workloads: Vec<Workload>,
    /// Whether `--workload` named them (else: all, by default).
    pub named_workloads: bool,
    /// udax configurations: every granularity x resolution x dirty tracking given.
    pub variants: Vec<Variant>,
    /// Application threads (>= 1).
    pub threads: usize,
    /// udax resident budget in bytes.
    pub budget: Option<u64>,
    /// Runs per workload, engine and granularity (>= 1).
    pub repeat: usize,
    /// The engines that run (one or both, udax first in this list).
    pub engines: Vec<EngineKind>,
    /// Where to write JSON.
    pub json: Option<JsonOut>,
    /// Where to draw the chart.
    pub plot: Option<PathBuf>,
}

impl Plan {
    /// Pages mapped.
    pub fn pages(&self) -> u64 {
        self.size / udax::PAGE_SIZE as u64
    }

    /// Whether `workload` runs at `variant`. Not when it would thrash for hours unasked:
    /// a budget workload (sort, rand-read-budget) under its own budget at an explicit 2m,
    /// where every random 4 KiB access reads and evicts a whole 2 MiB range, in a run of
    /// all workloads. Named with `--workload`, or with `--budget` given, it runs.
    pub fn runs(&self, workload: Workload, variant: &Variant) -> bool {
        let own_budget = self.budget.is_none()
            && workload
                .budget(self.size, None, variant.tracking.value)
                .is_some();
        let huge = variant.granularity.value == Some(Granularity::Huge);
        self.named_workloads || !(own_budget && huge)
    }

    /// The variants `workload` runs at (see [`Plan::runs`]).
    pub fn variants_of(&self, workload: Workload) -> impl Iterator<Item = &Variant> {
        self.variants.iter().filter(move |v| self.runs(workload, v))
    }

    /// Runs of the whole bench: workloads x their variants x repeats x engines.
    pub fn run_count(&self) -> usize {
        let variants: usize = self
            .workloads
            .iter()
            .map(|&w| self.variants_of(w).count())
            .sum();
        variants * self.repeat * self.engines.len()
    }
}

impl BenchArgs {
    /// Checks every argument; the first bad one is the error.
    pub fn plan(&self) -> Result<Plan, CliError> {
        let size = parse_page_size("--size", &self.size)?;
        if size / udax::PAGE_SIZE as u64 > u32::MAX as u64 {
            return Err(CliError::bad(
                format!("--size {} is too large", self.size),
                "pass at most 16TiB",
            ));
        }
        let budget = match &self.budget {
            Some(text) => Some(parse_page_size("--budget", text)?),
            None => None,
        };
        if let Some(bytes) = budget.filter(|&b| b < MIN_BUDGET) {
            return Err(CliError::bad(
                format!("--budget {bytes} bytes is below udax's minimum of 64KiB"),
                "pass --budget 64KiB or more",
            ));
        }
        let json = match self.json.as_deref() {
            None => None,
            Some("-") => Some(JsonOut::Stdout),
            Some(path) => {
                let path = PathBuf::from(path);
                check_parent("--json", &path)?;
                Some(JsonOut::File(path))
            }
        };
        if let Some(plot) = &self.plot {
            check_parent("--plot", plot)?;
        }
        let granularities = parse_choices("granularity", &self.granularity, &GRANULARITIES)?;
        let resolutions = parse_choices("resolution", &self.resolution, &RESOLUTIONS)?;
        let trackings = parse_choices("dirty tracking", &self.dirty_tracking, &TRACKINGS)?;
        if budget.is_some() && trackings.iter().any(|t| t.value == DirtyTracking::Async) {
            return Err(CliError::bad(
                "--budget cannot be combined with --dirty-tracking async",
                "drop one of them (async tracking finds written pages only at flush)",
            ));
        }
        let remote = self
            .store
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|text| crate::remote::is_uri(text));
        let is_lazy = |name: &String| name.trim() == LAZY_RESTORE;
        let lazy_restore = match self.workload.iter().any(is_lazy) {
            false => None,
            true if remote.is_none() => {
                return Err(CliError::bad(
                    "lazy-restore maps an NBD export or an RBD image",
                    "pass --store nbd://host[:port]/export, nbd+unix:///export?socket=PATH or rbd:POOL/IMAGE[?conf=PATH]",
                ));
            }
            true => Some(LazyRestore {
                touch: parse_fraction("--touch", &self.touch)?,
                data: parse_fraction("--data", &self.data)?,
            }),
        };
        let others: Vec<String> = self
            .workload
            .iter()
            .filter(|n| !is_lazy(n))
            .cloned()
            .collect();
        let workloads = match lazy_restore {
            Some(_) if others.is_empty() => Vec::new(),
            _ => parse_workloads(&others)?,
        };
        let named_workloads = !others.iter().all(|n| n.trim() == "all");
        let mut variants = Vec::new();
        for &granularity in &granularities {
            for &resolution in &resolutions {
                for &tracking in &trackings {
                    variants.push(Variant {
                        granularity,
                        resolution,
                        tracking,
                        read_ahead: !self.no_read_ahead,
                    });
                }
            }
        }
        Ok(Plan {
            size,
            store: self.store.clone().filter(|_| remote.is_none()),
            remote,
            lazy_restore,
            workloads,
            named_workloads,
            variants,
            threads: parse_count("--threads", &self.threads)?,
            budget,
            repeat: parse_count("--repeat", &self.repeat)?,
            engines: parse_engines(&self.engine)?,
            json,
            plot: self.plot.clone(),
        })
    }
}

/// The smallest budget the library accepts (16 pages).
const MIN_BUDGET: u64 = 64 << 10;

/// A SIZE that must be a non-zero multiple of 4096.
fn parse_page_size(flag: &str, text: &str) -> Result<u64, CliError> {
    let fix = "pass a whole number of bytes, a multiple of 4096, like 4096, 64KiB, 256MiB or 1GiB";
    let size = parse_size(text).map_err(|why| CliError::bad(format!("{flag} {why}"), fix))?;
    if size == 0 {
        return Err(CliError::bad(format!("{flag} {text:?} is zero"), fix));
    }
    if size % udax::PAGE_SIZE as u64 != 0 {
        return Err(CliError::bad(
            format!("{flag} {text:?} ({size} bytes) is not a multiple of 4096"),
            fix,
        ));
    }
    Ok(size)
}

/// `--engine`: udax, kernel or both.
fn parse_engines(text: &str) -> Result<Vec<EngineKind>, CliError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "udax" => Ok(vec![EngineKind::Udax]),
        "kernel" => Ok(vec![EngineKind::Kernel]),
        "both" => Ok(vec![EngineKind::Udax, EngineKind::Kernel]),
        _ => Err(CliError::bad(
            format!("unknown engine {text:?}"),
            "pick from udax, kernel, both",
        )),
    }
}

/// A fraction from 0 to 1 (`0.1`).
fn parse_fraction(flag: &str, text: &str) -> Result<f64, CliError> {
    match text.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(CliError::bad(
            format!("{flag} {text:?} is not a fraction from 0 to 1"),
            format!("pass e.g. {flag} 0.1"),
        )),
    }
}

/// A count of at least 1.
fn parse_count(flag: &str, text: &str) -> Result<usize, CliError> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(CliError::bad(
            format!("{flag} {text:?} is not a whole number of at least 1"),
            format!("pass e.g. {flag} 1"),
        )),
    }
}

fn names_of<T>(all: &[T], name: impl Fn(&T) -> &'static str) -> String {
    all.iter().map(name).collect::<Vec<_>>().join(", ")
}

/// The workload list; empty means all.
fn parse_workloads(list: &[String]) -> Result<Vec<Workload>, CliError> {
    if list.is_empty() || list.iter().all(|n| n.trim() == "all") {
        return Ok(Workload::ALL.to_vec());
    }
    let mut out: Vec<Workload> = Vec::new();
    for name in list.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let workload = Workload::parse(name).ok_or_else(|| {
            CliError::bad(
                format!("unknown workload {name:?}"),
                format!(
                    "pick from {} (or all)",
                    names_of(&Workload::ALL, |w| w.name())
                ),
            )
        })?;
        if !out.contains(&workload) {
            out.push(workload);
        }
    }
    Ok(out)
}

/// A list of names from `all` (never empty: the first of `all` is the default).
fn parse_choices<T: Copy + PartialEq>(
    what: &str,
    list: &[String],
    all: &[Choice<T>],
) -> Result<Vec<Choice<T>>, CliError> {
    let mut out: Vec<Choice<T>> = Vec::new();
    for name in list.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let lower = name.to_ascii_lowercase();
        let choice = all
            .iter()
            .copied()
            .find(|c| c.name == lower)
            .ok_or_else(|| {
                CliError::bad(
                    format!("unknown {what} {name:?}"),
                    format!("pick from {}", names_of(all, |c| c.name)),
                )
            })?;
        if !out.contains(&choice) {
            out.push(choice);
        }
    }
    if out.is_empty() {
        out.push(all[0]);
    }
    Ok(out)
}

/// Fails unless the directory `path` would be written in exists.
fn check_parent(flag: &str, path: &Path) -> Result<(), CliError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => return Ok(()),
    };
    if dir.is_dir() {
        Ok(())
    } else {
        Err(CliError::bad(
            format!("{flag} directory {} does not exist", dir.display()),
            "create it first or pass a path in an existing directory",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn bench(args: &[&str]) -> Result<Plan, CliError> {
        let cli = Cli::try_parse_from([&["udax", "bench"], args].concat()).expect("clap");
        match cli.command {
            Command::Bench(b) => b.plan(),
            _ => unreachable!("parsed as bench"),
        }
    }

    #[test]
    fn an_nbd_store_and_lazy_restore() {
        let uri = "nbd+unix:///x?socket=/tmp/s";
        let plan = bench(&[
            "--store",
            uri,
            "--workload",
            "lazy-restore",
            "--touch",
            "0.2",
        ])
        .expect("valid");
        assert_eq!((plan.remote.as_deref(), plan.store), (Some(uri), None));
        assert!(plan.workloads.is_empty());
        assert_eq!(plan.lazy_restore.map(|l| l.touch), Some(0.2));
        let error = bench(&["--workload", "lazy-restore"]).expect_err("needs NBD");
        assert!(error.to_string().contains("nbd://"), "{error}");
        let error = bench(&["--store", uri, "--workload", "lazy-restore", "--touch", "2"]);
        assert!(error.is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let plan = bench(&[]).expect("defaults are valid");
        assert_eq!(plan.size, 1 << 30);
        assert_eq!(plan.workloads, Workload::ALL.to_vec());
        assert_eq!(plan.variants.len(), 1);
        assert_eq!(plan.variants[0].label(), "default");
        assert_eq!((plan.threads, plan.repeat), (1, 3));
        assert_eq!(plan.engines, [EngineKind::Udax, EngineKind::Kernel]);
        assert_eq!(plan.json, None);
    }

    #[test]
    fn lists_and_sizes() {
        let plan = bench(&[
            "--size",
            "16MiB",
            "--workload",
            "seq-read,flush",
            "--granularity",
            "4k,2M",
            "--json",
            "-",
            "--budget",
            "1MiB",
        ])
        .expect("valid");
        assert_eq!(plan.size, 16 << 20);
        assert_eq!(plan.workloads, vec![Workload::SeqRead, Workload::Flush]);
        assert_eq!(plan.variants.len(), 2);
        assert_eq!(plan.variants[1].granularity.value, Some(Granularity::Huge));
        assert_eq!(plan.json, Some(JsonOut::Stdout));
        assert_eq!(plan.budget, Some(1 << 20));
    }

    #[test]
    fn all_workloads_at_2m_leave_out_the_budget_ones_unless_named_or_budgeted() {
        let runs = |args: &[&str]| {
            let plan = bench(args).expect("valid");
            let of = |w| plan.variants_of(w).map(|v| v.label()).collect::<Vec<_>>();
            (of(Workload::Sort), of(Workload::SeqRead), plan.run_count())
        };
        let (sort, seq_read, count) = runs(&["--granularity", "4k,2m"]);
        assert_eq!(
            sort,
            ["4k"],
            "sort under its own budget skips an explicit 2m"
        );
        assert_eq!(seq_read, ["4k", "2m"]);
        let workloads = Workload::ALL.len();
        assert_eq!(
            count,
            (2 * workloads - 2) * 3 * 2,
            "the bar counts what runs"
        );
        let (sort, _, _) = runs(&["--granularity", "4k,2m", "--workload", "sort"]);
        assert_eq!(sort, ["4k", "2m"], "named, it runs");
        let (sort, _, _) = runs(&["--granularity", "2m", "--budget", "1GiB"]);
        assert_eq!(sort, ["2m"], "under a budget given, it runs");
        let (sort, _, _) = runs(&["--granularity", "default"]);
        assert_eq!(sort, ["default"], "the default granularity never thrashes");
    }

    #[test]
    fn bad_input_names_the_cause() {
        let msg = |args: &[&str]| bench(args).expect_err("should fail").to_string();
        assert!(msg(&["--workload", "nope"]).contains("unknown workload \"nope\""));
        assert!(msg(&["--size", "0"]).contains("is zero"));
        assert!(msg(&["--size", "lots"]).contains("not a number"));
        assert!(msg(&["--size", "5000"]).contains("not a multiple of 4096"));
        assert!(msg(&["--granularity", "1g"]).contains("unknown granularity"));
        assert!(msg(&["--repeat", "0"]).contains("--repeat"));
        assert!(msg(&["--json", "/nonexistent-dir/x.json"]).contains("does not exist"));
        assert!(msg(&["--resolution", "psychic"]).contains("unknown resolution"));
        assert!(msg(&["--dirty-tracking", "async", "--budget", "1MiB"]).contains("--budget"));
        assert!(msg(&["--budget", "32KiB"]).contains("below udax's minimum"));
        assert!(msg(&["--engine", "both2"]).contains("unknown engine"));
        assert_eq!(
            bench(&["--engine", "udax"]).expect("valid").engines,
            [EngineKind::Udax]
        );
    }

    #[test]
    fn variants_are_the_product() {
        let plan = bench(&[
            "--granularity",
            "4k,2m",
            "--resolution",
            "handler,in-thread",
            "--dirty-tracking",
            "sync,async",
        ])
        .expect("valid");
        let labels: Vec<String> = plan.variants.iter().map(Variant::label).collect();
        assert_eq!(labels.len(), 8);
        assert_eq!(labels[0], "4k");
        assert_eq!(labels[3], "4k in-thread async");
        assert_eq!(labels[5], "2m async");
    }
}
