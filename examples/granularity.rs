//! Fault cost per 4 KiB page at each granularity, beside the kernel's own MAP_SHARED mmap
//! of the same file, in one process run (ratios are what carry over between machines).
//!
//! ```sh
//! cargo run --release --example granularity -- [MiB, default 1024] [runs, default 3] [dir]
//! ```
//!
//! `UDAX_BENCH_ONLY=seq-read` (a pattern name, or a pattern and granularity like
//! `seq-read/2m`) runs just those rows.
//!
//! Three access patterns, one byte per page in address order:
//! - sparse-read: reading a file that is all hole;
//! - seq-read: reading a file that is all written (in the page cache for both);
//! - seq-write: writing a file that is all hole (the flush after it is timed apart).
//!
//! Each figure is the median of the runs. Two traps of the virtual machines this runs on
//! (PERF-NOTES.md) are avoided, and the choice printed:
//! - free memory is handed back to the hypervisor (free page reporting, 2 MiB blocks,
//!   ~2 s after it is freed) and costs ~25 µs a page on its next first touch, which would
//!   swamp every allocating figure (a fresh huge page: ~12 ms). So right before every
//!   timed run, 2 GiB of anonymous memory (huge pages) is touched and freed;
//! - waking a thread on the other vCPU costs ~55 µs. So the process is pinned to one CPU:
//!   the handler thread shares it with the faulting thread (udax's in-thread resolution
//!   mode, or a handler per CPU, are the ways to get this without pinning).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use udax::{FileStore, Granularity, Mapping, Options, Stats};

const PAGE: usize = 4096;

#[derive(Clone, Copy, PartialEq)]
enum Pattern {
    SparseRead,
    SeqRead,
    SeqWrite,
}

impl Pattern {
    fn name(self) -> &'static str {
        match self {
            Pattern::SparseRead => "sparse-read",
            Pattern::SeqRead => "seq-read",
            Pattern::SeqWrite => "seq-write",
        }
    }
}

/// A udax configuration under test.
struct Config {
    name: &'static str,
    options: fn() -> Options,
}

const CONFIGS: [Config; 5] = [
    Config {
        name: "4k",
        options: Options::default,
    },
    Config {
        name: "64k",
        options: || Options::default().granularity(Granularity::FaultAround(64 << 10)),
    },
    Config {
        name: "2m",
        options: || Options::default().granularity(Granularity::Huge),
    },
    Config {
        // The 2 MiB path without huge pages: one 2 MiB UFFDIO_COPY instead of a move.
        name: "2m/copy",
        options: || {
            Options::default()
                .granularity(Granularity::Huge)
                .huge_move(false)
        },
    },
    Config {
        name: "2m+dirty",
        options: || {
            Options::default()
                .granularity(Granularity::Huge)
                .huge_dirty(true)
        },
    },
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args.get(1).map_or(Ok(1024), |a| a.parse())?;
    let runs: usize = args.get(2).map_or(Ok(3), |a| a.parse())?;
    let dir = args
        .get(3)
        .map_or_else(std::env::temp_dir, PathBuf::from)
        .join(format!("udax-granularity-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let len = mib << 20;
    let pages = len / PAGE;
    let pinned = pin_to_one_cpu();
    println!(
        "{mib} MiB ({pages} pages), median of {runs} runs, ns per 4 KiB page; \
         2 GiB touched and freed before each run; pinned to one CPU: {pinned}"
    );
    let mut warming = Duration::ZERO;

    let sparse = dir.join("sparse.img");
    let written = dir.join("written.img");
    FileStore::create(&sparse, len as u64)?;
    write_file(&written, len)?;

    println!(
        "{:<12} {:<9} {:>9} {:>9} {:>7} {:>8} {:>7} {:>10} {:>9}",
        "pattern", "gran", "udax", "kernel", "ratio", "faults", "huge", "AnonHuge", "flush ms"
    );
    let only = std::env::var("UDAX_BENCH_ONLY").unwrap_or_default();
    for pattern in [Pattern::SparseRead, Pattern::SeqRead, Pattern::SeqWrite] {
        for config in &CONFIGS {
            let same_as_2m = match pattern {
                Pattern::SparseRead => config.name.starts_with("2m") && config.name != "2m",
                Pattern::SeqRead => config.name == "2m+dirty",
                Pattern::SeqWrite => config.name == "2m/copy",
            };
            if same_as_2m {
                continue; // holes are never moved in; reads dirty nothing
            }
            let row = format!("{}/{}", pattern.name(), config.name);
            if !(only.is_empty() || row == only || pattern.name() == only) {
                continue;
            }
            let mut udax = Vec::new();
            let mut kernel = Vec::new();
            let mut last = None;
            for _ in 0..runs {
                let path = match pattern {
                    Pattern::SparseRead => sparse.clone(),
                    Pattern::SeqRead => written.clone(),
                    Pattern::SeqWrite => {
                        FileStore::create(&sparse, len as u64)?;
                        sparse.clone()
                    }
                };
                warming += touch_and_free(2 << 30);
                kernel.push(run_kernel(&path, len, pattern)?);
                if pattern == Pattern::SeqWrite {
                    FileStore::create(&sparse, len as u64)?;
                }
                warming += touch_and_free(2 << 30);
                let (time, report) = run_udax(&path, pattern, (config.options)())?;
                udax.push(time);
                last = Some(report);
            }
            let (u, k) = (
                median(&mut udax) / pages as f64,
                median(&mut kernel) / pages as f64,
            );
            let report = last.expect("at least one run");
            println!(
                "{:<12} {:<9} {:>9.0} {:>9.0} {:>7.2} {:>8} {:>7} {:>10} {:>9.1}",
                pattern.name(),
                config.name,
                u,
                k,
                u / k,
                faults(&report.stats),
                report.stats.huge_faults,
                format!("{}M", report.anon_huge_kib >> 10),
                report.flush.as_secs_f64() * 1e3,
            );
        }
    }
    std::fs::remove_dir_all(&dir)?;
    println!(
        "(warming memory took {:.1} s in all)",
        warming.as_secs_f64()
    );
    Ok(())
}

/// Pins this process (and the threads it starts later) to the CPU it runs on.
fn pin_to_one_cpu() -> bool {
    // SAFETY: sched_getcpu takes no arguments.
    let cpu = unsafe { libc::sched_getcpu() };
    if cpu < 0 {
        return false;
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it;
    // sched_setaffinity reads `size_of::<cpu_set_t>()` bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// What a udax run leaves to report besides its time.
struct Report {
    stats: Stats,
    anon_huge_kib: u64,
    flush: Duration,
}

fn run_udax(
    path: &Path,
    pattern: Pattern,
    options: Options,
) -> Result<(Duration, Report), Box<dyn std::error::Error>> {
    let store = Arc::new(FileStore::open(path)?);
    let mapping = Mapping::new(store, options)?;
    let time = touch(mapping.as_ptr(), mapping.len(), pattern);
    let anon_huge_kib = smaps_kib(mapping.as_ptr(), mapping.len(), "AnonHugePages");
    let started = Instant::now();
    mapping.flush()?;
    let flush = started.elapsed();
    let stats = mapping.stats();
    mapping.close()?;
    let report = Report {
        stats,
        anon_huge_kib,
        flush,
    };
    Ok((time, report))
}

fn run_kernel(path: &Path, len: usize, pattern: Pattern) -> Result<Duration, std::io::Error> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    // SAFETY: a new shared mapping of the file, checked against MAP_FAILED, unmapped below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    if pattern == Pattern::SparseRead {
        // A read of a hole fills the page cache with zeroed pages, which a later run
        // would then just map: drop them so that every run reads holes.
        // SAFETY: posix_fadvise takes no pointers; the fd belongs to `file`.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    let time = touch(ptr.cast(), len, pattern);
    // SAFETY: unmapping the mapping made above; nothing references it any more.
    unsafe { libc::munmap(ptr, len) };
    Ok(time)
}

/// Reads or writes one byte of every page of `ptr..ptr+len`, in order; returns the time.
fn touch(ptr: *mut u8, len: usize, pattern: Pattern) -> Duration {
    let started = Instant::now();
    for page in 0..len / PAGE {
        // SAFETY: `ptr..ptr+len` is a live mapping owned by the caller.
        unsafe {
            let at = ptr.add(page * PAGE + page % 64);
            match pattern {
                Pattern::SeqWrite => std::ptr::write_volatile(at, page as u8 | 1),
                _ => {
                    std::ptr::read_volatile(at);
                }
            }
        }
    }
    started.elapsed()
}

/// Writes `len` bytes of non-zero data to a new file at `path`.
fn write_file(path: &Path, len: usize) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8 | 1).collect();
    for _ in 0..len / chunk.len() {
        file.write_all(&chunk)?;
    }
    file.sync_all()
}

/// Touches and frees `len` bytes of anonymous memory, as huge pages where it can;
/// returns the time it took.
fn touch_and_free(len: usize) -> Duration {
    let started = Instant::now();
    // SAFETY: a fresh private anonymous mapping, checked, written inside, unmapped below.
    unsafe {
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(ptr, libc::MAP_FAILED, "mmap for warm-up");
        libc::madvise(ptr, len, libc::MADV_HUGEPAGE);
        for page in 0..len / PAGE {
            std::ptr::write_volatile(ptr.cast::<u8>().add(page * PAGE), 1);
        }
        libc::munmap(ptr, len);
    }
    started.elapsed()
}

fn median(times: &mut [Duration]) -> f64 {
    times.sort();
    times[times.len() / 2].as_nanos() as f64
}

fn faults(stats: &Stats) -> u64 {
    stats.zero_faults
        + stats.read_faults
        + stats.write_faults
        + stats.mkwrite_faults
        + stats.zero_to_dirty
}

/// Sums a `field:` (KiB) of /proc/self/smaps over the VMAs overlapping `ptr..ptr+len`.
fn smaps_kib(ptr: *const u8, len: usize, field: &str) -> u64 {
    let (start, end) = (ptr as usize, ptr as usize + len);
    let text = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut inside = false;
    let mut total = 0;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = lo < end && hi > start;
                continue;
            }
        }
        if let (true, Some(rest)) = (inside, line.strip_prefix(field)) {
            let kib = rest.trim_start_matches(':').trim().trim_end_matches("kB");
            total += kib.trim().parse::<u64>().unwrap_or(0);
        }
    }
    total
}
