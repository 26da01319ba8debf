//! Concurrency stress: several application threads read and write one mapping while
//! flushes run, with 1, 2 and 3 handler threads; every byte's final value is known, so a
//! lost write shows up.
//!
//! Each round maps a fresh 16 MiB file whose pages are ~25% data and ~75% holes:
//! - the sweep phase walks every thread over the same pages in the same order, so first
//!   reads and writes of fresh pages collide;
//! - the random phase mixes reads and writes (three in four inside a 2 MiB hot window)
//!   while the main thread flushes in a loop and each worker, every few thousand ops,
//!   writes one byte, calls `flush()` itself and then reads the file directly: every byte
//!   it wrote before that call must be there (invariant 4: a store completed before a
//!   flush is durable when the flush returns, whatever other flushes run meanwhile);
//! - the `OnlyClose` variant never flushes: `close()` alone must write everything back.
//!
//! The budget variants run the same under a 2 MiB resident budget (an eighth of the
//! store, the size of the hot window), so eviction writes back and drops pages all the
//! time, racing the workers' writes and the flushes.
//!
//! Thread `t` writes only bytes whose index is `t` modulo 4, so each thread's own model is
//! exact, every read of an own byte is checked at once, and at the end the whole file must
//! equal the merged models.
//!
//! The first-touch tests race one reader and one writer on every fresh page, each page
//! written exactly once so nothing masks a lost write: a write that slips between
//! installing a page and write-protecting it lands in a page udax believes clean, and
//! close() then leaves it out of the file. The natural window (zero page, then protect)
//! is about a microsecond and rarely hit; the widened variant uses the hidden
//! `Options::zero_window_delay` hook and asserts that writes did land inside it.
//!
//! Set `UDAX_STRESS_SEED` to replay a seed.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

use common::{PAGE, TempStore, XorShift, assert_bytes_eq, read_file};
use udax::{DirtyTracking, FileStore, Mapping, Options, Resolution, Stats, Store};

const LEN: usize = 16 << 20;
const PAGES: usize = LEN / PAGE;
const THREADS: usize = 4;
const ROUNDS: u64 = 2;
const RANDOM_OPS: u64 = 30_000;
/// Pages in the hot window of the random phase.
const HOT_PAGES: usize = 512;
/// With concurrent writeback, each worker also flushes after this many random ops.
const WORKER_FLUSH_EVERY: u64 = 3_000;

/// How the main thread drives writeback while the workers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Writeback {
    /// `flush()` in a loop while the workers run, then a final flush before `close()`.
    Concurrent,
    /// Never flush: `close()` alone must write everything back.
    OnlyClose,
}

fn seed() -> u64 {
    std::env::var("UDAX_STRESS_SEED")
        .ok()
        .map(|s| s.parse().expect("UDAX_STRESS_SEED must be a u64"))
        .unwrap_or(0x5eed_0001)
}

/// The byte at `offset` of the mapping at `base`, as an atomic.
///
/// # Safety
/// `base + offset` must lie in a mapping live for `'a`, and every access to it by Rust
/// code during `'a` must be atomic.
unsafe fn byte<'a>(base: usize, offset: usize) -> &'a AtomicU8 {
    // SAFETY: per the caller's contract the address is inside a live mapping for 'a and
    // only accessed atomically; AtomicU8 has the size and alignment of u8.
    unsafe { &*((base + offset) as *const AtomicU8) }
}

/// One worker's result: its bytes' final values and how many operations it did.
struct Worker {
    own: Vec<u8>,
    ops: u64,
}

/// Thread `t`'s accesses. `own[i]` is the expected value of mapping byte `4 * i + t`.
struct Ops<'a> {
    base: usize,
    t: usize,
    rng: XorShift,
    own: Vec<u8>,
    ops: u64,
    round: u64,
    /// With concurrent writeback: the mapping (this worker flushes too) and the store
    /// file, read directly to check that each flush made this worker's writes durable.
    flush: Option<(&'a Mapping, std::fs::File)>,
    /// Bytes this worker wrote since its last flush.
    unflushed: Vec<usize>,
    flushes: u64,
}

impl Ops<'_> {
    /// A random byte of page `p` that this thread owns.
    fn own_byte(&mut self, p: usize) -> usize {
        p * PAGE + 4 * self.rng.below((PAGE / 4) as u64) as usize + self.t
    }

    fn write_own(&mut self, p: usize) {
        let i = self.own_byte(p);
        let value = self.own[i / 4] ^ (1 + self.rng.below(255) as u8);
        // SAFETY: `i < LEN`; the mapping outlives the worker scope and is accessed only
        // atomically by the test while it runs.
        unsafe { byte(self.base, i) }.store(value, Relaxed);
        self.own[i / 4] = value;
        self.unflushed.push(i);
        self.ops += 1;
    }

    /// Writes one byte (most pages are clean after a flush, so this faults), flushes
    /// at once, and checks every byte this worker wrote before the flush is in the file:
    /// a store completed before flush() must be durable when it returns (invariant 4),
    /// even if the fault that let it in is still finishing its bookkeeping.
    fn write_then_flush(&mut self, p: usize) {
        if self.flush.is_none() {
            return;
        }
        self.write_own(p);
        let Some((mapping, file)) = &self.flush else {
            return;
        };
        mapping.flush().expect("flush from a worker");
        self.flushes += 1;
        self.unflushed.sort_unstable();
        self.unflushed.dedup();
        for &i in &self.unflushed {
            let mut got = [0u8];
            file.read_exact_at(&mut got, i as u64)
                .expect("pread of the store file");
            let want = self.own[i / 4];
            assert_eq!(
                got[0],
                want,
                "round {} thread {}: byte {i} (page {}, offset {}) written before flush #{} \
                 is {:#04x} in the file after it returned, expected {want:#04x}",
                self.round,
                self.t,
                i / PAGE,
                i % PAGE,
                self.flushes,
                got[0]
            );
        }
        self.unflushed.clear();
        self.ops += 1;
    }

    fn check_own(&mut self, p: usize, phase: &str) {
        let i = self.own_byte(p);
        // SAFETY: as in `write_own`.
        let got = unsafe { byte(self.base, i) }.load(Relaxed);
        let want = self.own[i / 4];
        assert_eq!(
            got,
            want,
            "round {} thread {} {phase}: byte {i} (page {p}, offset {}) reads {got:#04x}, \
             but this thread last wrote {want:#04x}: a write was lost",
            self.round,
            self.t,
            i % PAGE
        );
        self.ops += 1;
    }

    fn read_any(&mut self, p: usize) {
        let i = p * PAGE + self.rng.below(PAGE as u64) as usize;
        // SAFETY: as in `write_own`.
        std::hint::black_box(unsafe { byte(self.base, i) }.load(Relaxed));
        self.ops += 1;
    }

    /// Every thread visits the pages in the same order, so first accesses collide.
    fn sweep(&mut self, order: &[usize]) {
        for &p in order {
            match self.rng.below(4) {
                0 => {
                    self.read_any(p);
                    self.write_own(p);
                }
                1 => {
                    self.write_own(p);
                    self.check_own(p, "sweep");
                }
                2 => self.read_any(p),
                _ => self.check_own(p, "sweep"),
            }
        }
    }

    /// Random ops; three in four go to a hot window of `HOT_PAGES` pages (so flushes,
    /// which cost a store write per dirty page, stay cheap while pages see many
    /// write / writeback races), the rest anywhere.
    fn random(&mut self, ops: u64, hot_start: usize) {
        for op in 0..ops {
            let p = if self.rng.below(4) == 0 {
                self.rng.below(PAGES as u64) as usize
            } else {
                (hot_start + self.rng.below(HOT_PAGES as u64) as usize) % PAGES
            };
            if op % WORKER_FLUSH_EVERY == WORKER_FLUSH_EVERY - 1 {
                self.write_then_flush(p);
                continue;
            }
            match self.rng.below(3) {
                0 => self.write_own(p),
                1 => self.check_own(p, "random"),
                _ => self.read_any(p),
            }
        }
    }
}

/// Creates the round's file: random bytes in ~25% of the pages, holes elsewhere.
fn initial_file(tmp: &TempStore, rng: &mut XorShift) -> Vec<u8> {
    let mut initial = vec![0u8; LEN];
    let file = std::fs::File::create(&tmp.path).expect("creating the stress file");
    file.set_len(LEN as u64).expect("sizing the stress file");
    let mut data_pages = 0;
    for p in 0..PAGES {
        if rng.below(4) == 0 {
            let page = &mut initial[p * PAGE..(p + 1) * PAGE];
            page.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
            file.write_all_at(page, (p * PAGE) as u64)
                .expect("writing initial data");
            data_pages += 1;
        }
    }
    file.sync_all().expect("fsync of the initial data");
    assert!(
        (PAGES / 8..PAGES / 2).contains(&data_pages),
        "{data_pages} data pages"
    );
    initial
}

/// Runs the workers over `mapping` while the main thread flushes (or not); returns the
/// merged model, the op count and the flushes the main thread issued.
fn run_round(
    mapping: &Mapping,
    path: &std::path::Path,
    initial: &[u8],
    seed: u64,
    round: u64,
    writeback: Writeback,
) -> (Vec<u8>, u64, u64) {
    let base = mapping.as_ptr() as usize;
    let mut order_rng = XorShift::new(seed ^ round.wrapping_mul(0xA24B_AED4_963E_E407));
    let stride = (order_rng.below(PAGES as u64) as usize) | 1;
    let order: Vec<usize> = (0..PAGES).map(|k| (k * stride + 17) % PAGES).collect();
    let hot_start = order_rng.below(PAGES as u64) as usize;
    let mut flushes = 0u64;
    let workers: Vec<Worker> = thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let order = &order;
                let flush = (writeback == Writeback::Concurrent).then(|| {
                    let file = std::fs::File::open(path).expect("opening the store file");
                    (mapping, file)
                });
                s.spawn(move || {
                    let mut ops = Ops {
                        base,
                        t,
                        rng: XorShift::new(seed ^ (round << 8) ^ t as u64),
                        own: initial.iter().skip(t).step_by(THREADS).copied().collect(),
                        ops: 0,
                        round,
                        flush,
                        unflushed: Vec::new(),
                        flushes: 0,
                    };
                    ops.sweep(order);
                    ops.random(RANDOM_OPS, hot_start);
                    Worker {
                        own: ops.own,
                        ops: ops.ops,
                    }
                })
            })
            .collect();
        if writeback == Writeback::Concurrent {
            while !handles.iter().all(|h| h.is_finished()) {
                mapping.flush().expect("flush while the workers run");
                flushes += 1;
                thread::sleep(Duration::from_millis(2));
            }
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("a worker failed (see its panic above)"))
            .collect()
    });
    let ops = workers.iter().map(|w| w.ops).sum();
    let mut expected = vec![0u8; LEN];
    for (t, worker) in workers.iter().enumerate() {
        for (k, &value) in worker.own.iter().enumerate() {
            expected[4 * k + t] = value;
        }
    }
    (expected, ops, flushes)
}

/// Adds the counters this test reports.
fn add(totals: &mut Stats, s: &Stats) {
    totals.zero_faults += s.zero_faults;
    totals.read_faults += s.read_faults;
    totals.write_faults += s.write_faults;
    totals.mkwrite_faults += s.mkwrite_faults;
    totals.zero_to_dirty += s.zero_to_dirty;
    totals.pages_written_back += s.pages_written_back;
    totals.flushes += s.flushes;
    totals.evictions += s.evictions;
    totals.evicted_dirty += s.evicted_dirty;
    totals.resident_pages_peak = totals.resident_pages_peak.max(s.resident_pages_peak);
}

fn stress(handler_threads: usize, writeback: Writeback) {
    let options = Options::default().handler_threads(handler_threads);
    stress_with(
        &format!("handler_threads={handler_threads}"),
        options,
        ROUNDS,
        writeback,
    );
}

/// Runs `rounds` rounds; returns the counters added up over them (zero when skipped).
fn stress_with(label: &str, options: Options, rounds: u64, writeback: Writeback) -> Stats {
    let mut totals = Stats::default();
    if !common::require_uffd() {
        return totals;
    }
    let seed = seed() ^ label.len() as u64;
    let started = Instant::now();
    let mut total_ops = 0;
    for round in 0..rounds {
        let tmp = TempStore::new("stress.img");
        let mut rng = XorShift::new(seed.wrapping_add(round));
        let initial = initial_file(&tmp, &mut rng);
        let store: Arc<dyn Store> = Arc::new(FileStore::open(&tmp.path).expect("FileStore::open"));
        let mapping = Mapping::new(store, options.clone()).expect("Mapping::new");
        let (expected, ops, _) = run_round(&mapping, &tmp.path, &initial, seed, round, writeback);
        total_ops += ops;

        // SAFETY: the workers are joined; the mapping is alive and nobody writes to it.
        let in_memory = unsafe { std::slice::from_raw_parts(mapping.as_ptr(), LEN) };
        assert_bytes_eq(
            in_memory,
            &expected,
            "mapping after the workers (seed {seed})",
        );
        if writeback == Writeback::Concurrent {
            mapping.flush().expect("final flush");
        }
        let stats = mapping.stats();
        assert_eq!(stats.sigbus_delivered, 0, "{stats:?}");
        if writeback == Writeback::Concurrent {
            assert!(
                stats.flushes >= 2,
                "the flusher never overlapped the workers: {stats:?}"
            );
        } else {
            // Nobody flushed: only eviction (under a budget) wrote anything back. A handler
            // thread evicts after it has woken the faulting worker, so the last eviction may
            // still be running when the workers are joined: its pages written (and counted)
            // before they are dropped and counted evicted. Wait for it, bounded.
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut stats = stats;
            while stats.pages_written_back != stats.evicted_dirty && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
                stats = mapping.stats();
            }
            assert_eq!(
                stats.pages_written_back, stats.evicted_dirty,
                "nobody flushed: {stats:?}"
            );
        }
        assert!(stats.zero_faults + stats.write_faults > 0, "{stats:?}");
        mapping.close().expect("close");
        assert_bytes_eq(
            &read_file(&tmp.path),
            &expected,
            &format!("file after close, round {round} (replay with UDAX_STRESS_SEED={seed})"),
        );
        add(&mut totals, &stats);
    }
    eprintln!(
        "stress {label} {writeback:?}: {total_ops} ops in {rounds} \
         rounds, {:.1?}, seed {seed}; zero_faults {} read_faults {} write_faults {} \
         mkwrite_faults {} zero_to_dirty {} pages_written_back {} flushes {} evictions {} \
         evicted_dirty {} resident_pages_peak {}",
        started.elapsed(),
        totals.zero_faults,
        totals.read_faults,
        totals.write_faults,
        totals.mkwrite_faults,
        totals.zero_to_dirty,
        totals.pages_written_back,
        totals.flushes,
        totals.evictions,
        totals.evicted_dirty,
        totals.resident_pages_peak
    );
    totals
}

#[test]
fn stress_one_handler_thread_with_concurrent_flush() {
    stress(1, Writeback::Concurrent);
}

#[test]
fn stress_two_handler_threads_with_concurrent_flush() {
    stress(2, Writeback::Concurrent);
}

#[test]
fn stress_three_handler_threads_with_concurrent_flush() {
    stress(3, Writeback::Concurrent);
}

#[test]
fn stress_two_handler_threads_written_back_only_by_close() {
    stress(2, Writeback::OnlyClose);
}

/// The stress workload under a 2 MiB budget with `threads` handler threads: zero lost
/// writes, evictions all along (dirty ones too without a flusher), resident pages at most
/// budget + threads.
fn stress_under_budget(options: Options, threads: u64, writeback: Writeback) {
    const BUDGET: u64 = 2 << 20;
    let label = format!("budget=2MiB threads={threads}");
    let totals = stress_with(&label, options.budget(BUDGET), ROUNDS, writeback);
    if totals == Stats::default() {
        return; // skipped
    }
    // Dirty evictions are certain only without a flusher: a concurrent one may clean every
    // page before the clock comes back to it (a written page is referenced: second chance),
    // the more so as pages come back from the disk under a budget (the page cache is
    // bounded too). The `OnlyClose` runs cover dirty evictions.
    let dirty_evictions = writeback == Writeback::Concurrent || totals.evicted_dirty > 0;
    assert!(totals.evictions > 0 && dirty_evictions, "{totals:?}");
    let limit = BUDGET / PAGE as u64 + threads;
    assert!(totals.resident_pages_peak <= limit, "{totals:?}");
}

#[test]
fn stress_under_a_2_mib_budget_two_handler_threads_with_concurrent_flush() {
    let options = Options::default().handler_threads(2);
    stress_under_budget(options, 2, Writeback::Concurrent);
}

#[test]
fn stress_under_a_2_mib_budget_written_back_only_by_eviction_and_close() {
    let options = Options::default().handler_threads(2);
    stress_under_budget(options, 2, Writeback::OnlyClose);
}

/// Pages of the first-touch race test.
const RACE_PAGES: usize = 2048;

/// Busy-waits `ns` nanoseconds (a sleep would be far too coarse).
fn spin_for(ns: u64) {
    let until = Instant::now() + Duration::from_nanos(ns);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// Polls /proc/self/pagemap until the page at `addr` is present (bounded: a few
/// milliseconds at most, then returns anyway).
fn wait_present(pagemap: &std::fs::File, addr: usize) {
    let mut word = [0u8; 8];
    for _ in 0..5_000 {
        pagemap
            .read_exact_at(&mut word, (addr / PAGE * 8) as u64)
            .expect("reading pagemap");
        if u64::from_ne_bytes(word) & (1 << 63) != 0 {
            return;
        }
    }
}

/// Waits until `arrived` reaches `target`, spinning briefly, then yielding.
fn rendezvous(arrived: &std::sync::atomic::AtomicUsize, target: usize) {
    let mut spins = 0u32;
    while arrived.load(std::sync::atomic::Ordering::Acquire) < target {
        spins += 1;
        if spins < 1_000 {
            std::hint::spin_loop();
        } else {
            thread::yield_now();
        }
    }
}

/// The first access to every page is a read by one thread racing a write by another,
/// the write delayed by a random fraction of a fault's latency, and no page is ever
/// written again (nothing masks a lost write). Half the pages are holes (the read maps
/// the zero page, which has no atomic write-protected install) and half data (the read
/// must copy and write-protect in one step). A write that slips into the window between
/// install and protect lands in a page udax believes clean; close() must still write it.
///
/// `widen` uses the testing hook that sleeps between mapping a zero page and protecting
/// it, so that many writes do land in that window; the test then also asserts they did.
fn first_touch_race(handler_threads: usize, widen: Option<Duration>) {
    let options = Options::default().handler_threads(handler_threads);
    let label = format!("handler_threads={handler_threads}");
    first_touch_race_with(&label, options, widen, widen.is_some());
}

/// `expect_window_hits`: assert some writes landed in the zero-page window (meaningful
/// with synchronous dirty tracking, where such a write is the only one that takes no fault).
fn first_touch_race_with(
    label: &str,
    options: Options,
    widen: Option<Duration>,
    expect_window_hits: bool,
) {
    if !common::require_uffd() {
        return;
    }
    let len = RACE_PAGES * PAGE;
    let seed = seed() ^ 0xface ^ label.len() as u64;
    let mut rng = XorShift::new(seed);
    let tmp = TempStore::new("race.img");
    let mut expected = vec![0u8; len];
    {
        let file = std::fs::File::create(&tmp.path).expect("creating the race file");
        file.set_len(len as u64).expect("sizing the race file");
        for p in (0..RACE_PAGES).filter(|p| p % 2 == 1) {
            let page = &mut expected[p * PAGE..(p + 1) * PAGE];
            page.fill((p % 255) as u8 + 1);
            file.write_all_at(page, (p * PAGE) as u64)
                .expect("writing a data page");
        }
        file.sync_all().expect("fsync");
    }
    let store: Arc<dyn Store> = Arc::new(FileStore::open(&tmp.path).expect("FileStore::open"));
    let mut options = options;
    if let Some(delay) = widen {
        options = options.zero_window_delay(delay);
    }
    let mapping = Mapping::new(store, options).expect("Mapping::new");
    let base = mapping.as_ptr() as usize;

    // Calibrate the delay range: time read faults on the first pages, which stay out of
    // the race.
    const WARM: usize = 64;
    let started = Instant::now();
    for p in 0..WARM {
        // SAFETY: inside the live mapping; no other thread runs yet.
        std::hint::black_box(unsafe { byte(base, p * PAGE) }.load(Relaxed));
    }
    let fault_ns = (started.elapsed().as_nanos() as u64 / WARM as u64).max(1_000);

    let delays: Vec<u64> = (0..RACE_PAGES).map(|_| rng.below(2 * fault_ns)).collect();
    let offsets: Vec<usize> = (0..RACE_PAGES)
        .map(|_| rng.below(PAGE as u64) as usize)
        .collect();
    for p in WARM..RACE_PAGES {
        expected[p * PAGE + offsets[p]] ^= 0x5A;
    }
    let arrived = std::sync::atomic::AtomicUsize::new(0);
    thread::scope(|s| {
        let arrived = &arrived;
        let (delays, offsets) = (&delays, &offsets);
        s.spawn(move || {
            for p in WARM..RACE_PAGES {
                arrived.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                rendezvous(arrived, 2 * (p - WARM + 1));
                // SAFETY: inside the mapping; accessed only atomically while the scope runs.
                std::hint::black_box(unsafe { byte(base, p * PAGE + PAGE / 2) }.load(Relaxed));
            }
        });
        s.spawn(move || {
            let pagemap = std::fs::File::open("/proc/self/pagemap").expect("open pagemap");
            for p in WARM..RACE_PAGES {
                arrived.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                rendezvous(arrived, 2 * (p - WARM + 1));
                if p % 2 == 0 {
                    // Hole pages: write as soon as the reader's zero page is present,
                    // which is the moment the install window opens.
                    wait_present(&pagemap, base + p * PAGE);
                } else {
                    spin_for(delays[p]);
                }
                // SAFETY: as above.
                let b = unsafe { byte(base, p * PAGE + offsets[p]) };
                b.fetch_xor(0x5A, Relaxed);
            }
        });
    });
    let stats = mapping.stats();
    // Each raced page took exactly one of: a write fault (the write came first), a
    // zero->dirty or mkwrite fault (the read came first), or no fault for the write at
    // all: it landed inside the zero page's install window.
    let in_window = ((RACE_PAGES - WARM) as u64)
        .saturating_sub(stats.write_faults + stats.zero_to_dirty + stats.mkwrite_faults);
    // SAFETY: the threads are joined; the mapping is alive and nobody writes to it.
    let in_memory = unsafe { std::slice::from_raw_parts(mapping.as_ptr(), len) };
    assert_bytes_eq(in_memory, &expected, "mapping after the race");
    mapping.close().expect("close");
    assert_bytes_eq(
        &read_file(&tmp.path),
        &expected,
        &format!("file after close (replay with UDAX_STRESS_SEED; seed {seed})"),
    );
    if expect_window_hits {
        assert!(
            in_window > 0,
            "no write landed inside the widened zero-page window, so this run proved \
             nothing: {stats:?}"
        );
    }
    eprintln!(
        "first-touch race {label} widen={widen:?}: {} pages, \
         fault ~{fault_ns} ns, {in_window} writes inside the zero-page window; zero_faults {} \
         read_faults {} write_faults {} mkwrite_faults {} zero_to_dirty {}",
        RACE_PAGES - WARM,
        stats.zero_faults,
        stats.read_faults,
        stats.write_faults,
        stats.mkwrite_faults,
        stats.zero_to_dirty
    );
}

#[test]
fn first_read_racing_first_write_loses_nothing_one_handler_thread() {
    first_touch_race(1, None);
}

#[test]
fn first_read_racing_first_write_loses_nothing_two_handler_threads() {
    first_touch_race(2, None);
}

/// The natural zero-page window is a microsecond or so and rarely hit; widened, hundreds
/// of writes land in it, and every one must survive (DESIGN.md, section 7, hard part 2).
#[test]
fn writes_inside_a_widened_zero_page_window_lose_nothing() {
    first_touch_race(2, Some(Duration::from_micros(20)));
}

/// Runs `body` in a re-executed child (this test alone): the modes below install a
/// process-wide SIGBUS handler or can kill the process with SIGBUS when a fault fails,
/// and either must not take the other tests of this binary down with them.
fn in_child(test_name: &str, body: fn()) {
    if common::child_case().as_deref() == Some("run") {
        body();
        common::say("CHILD-PASSED");
        return;
    }
    if !common::require_uffd() {
        return;
    }
    let output = common::run_child(test_name, "run");
    common::assert_child_passed(&output, "CHILD-PASSED");
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
}

/// The same workload with faults resolved in the faulting thread's SIGBUS handler.
#[test]
fn stress_in_thread_resolution_with_concurrent_flush() {
    in_child("stress_in_thread_resolution_with_concurrent_flush", || {
        let options = Options::default().resolution(Resolution::InThread);
        stress_with("resolution=InThread", options, 1, Writeback::Concurrent);
    });
}

/// The budget workload with faults resolved (and eviction run) in the faulting threads'
/// SIGBUS handlers: four workers, so at most four pages over the budget.
#[test]
fn stress_under_a_2_mib_budget_in_thread_resolution() {
    in_child("stress_under_a_2_mib_budget_in_thread_resolution", || {
        let options = Options::default().resolution(Resolution::InThread);
        stress_under_budget(options, THREADS as u64, Writeback::Concurrent);
    });
}

/// The same workload with first writes tracked by WP_ASYNC and PAGEMAP_SCAN.
#[test]
fn stress_async_dirty_tracking_with_concurrent_flush() {
    in_child("stress_async_dirty_tracking_with_concurrent_flush", || {
        let options = Options::default()
            .handler_threads(2)
            .dirty_tracking(DirtyTracking::Async);
        stress_with("dirty_tracking=Async", options, 1, Writeback::Concurrent);
    });
}

#[test]
fn writes_inside_a_widened_zero_page_window_lose_nothing_in_thread() {
    in_child(
        "writes_inside_a_widened_zero_page_window_lose_nothing_in_thread",
        || {
            let options = Options::default().resolution(Resolution::InThread);
            let widen = Some(Duration::from_micros(20));
            first_touch_race_with("resolution=InThread", options, widen, true);
        },
    );
}

#[test]
fn writes_inside_a_widened_zero_page_window_lose_nothing_async_tracking() {
    in_child(
        "writes_inside_a_widened_zero_page_window_lose_nothing_async_tracking",
        || {
            // WP_ASYNC resolves writes in the kernel, so no write takes a fault and the
            // window count means nothing here; the file must still be exact.
            let options = Options::default().dirty_tracking(DirtyTracking::Async);
            let widen = Some(Duration::from_micros(20));
            first_touch_race_with("dirty_tracking=Async", options, widen, false);
        },
    );
}
