//! Fault races: threads released together onto a few Empty pages, over and over, so that
//! first touches meet the windows inside fault resolution (zero page then write-protect;
//! copy then protect). Every byte has one owning thread, so the final file is known
//! exactly; a write that lands in a page udax believes clean shows up as a mismatch.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Barrier};

use udax::{DirtyTracking, FileStore, Mapping, Options, Resolution, Store};

const PAGE: usize = 4096;
const PAGES: usize = 16;
const THREADS: usize = 4;
const OPS_PER_ROUND: usize = 192;

/// xorshift64*: a small seeded generator, so a failure can be replayed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// One round on a fresh mapping; returns the number of accesses made.
fn round(path: &std::path::Path, model: &mut [u8], round: usize, options: Options) -> usize {
    let store = Arc::new(FileStore::open(path).expect("open store"));
    let mapping = Mapping::new(store, options).expect("map");
    let base = mapping.as_ptr() as usize;
    let barrier = Barrier::new(THREADS);
    let written: Vec<Vec<(usize, u8)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut rng = (round * THREADS + thread + 1) as u64 * 0x9e37_79b9_7f4a_7c15;
                    let mut writes = Vec::new();
                    barrier.wait();
                    for op in 0..OPS_PER_ROUND {
                        let r = next(&mut rng);
                        let page = (r % PAGES as u64) as usize;
                        // Thread `thread` owns the bytes at index % THREADS == thread.
                        let slot = ((r >> 8) % (PAGE / THREADS) as u64) as usize;
                        let index = page * PAGE + slot * THREADS + thread;
                        // SAFETY: `index` lies inside the mapping, which outlives the scope;
                        // atomic accesses make racing threads data-race free.
                        let byte = unsafe { &*((base + index) as *const AtomicU8) };
                        if r >> 40 & 1 == 0 {
                            byte.load(Ordering::Relaxed);
                        } else {
                            let value = (round * 31 + op) as u8 | 1;
                            byte.store(value, Ordering::Relaxed);
                            writes.push((index, value));
                        }
                    }
                    writes
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect()
    });
    for (index, value) in written.into_iter().flatten() {
        model[index] = value;
    }
    let mut memory = vec![0u8; PAGES * PAGE];
    mapping.read_at(0, &mut memory).expect("read");
    if let Some(at) = (0..memory.len()).find(|&i| memory[i] != model[i]) {
        panic!(
            "round {round}: byte {at} reads {:#x} through the mapping, {:#x} in the model",
            memory[at], model[at]
        );
    }
    mapping.close().expect("close");
    OPS_PER_ROUND * THREADS
}

fn run(rounds: usize, options: Options) {
    if !common::require_uffd() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("races.img");
    let mut model = vec![0u8; PAGES * PAGE];
    {
        // Half the pages start as data, half as holes.
        let store = FileStore::create(&path, (PAGES * PAGE) as u64).expect("create");
        drop(store);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        for page in (0..PAGES).step_by(2) {
            let bytes = vec![0x5a; PAGE];
            file.write_all_at(&bytes, (page * PAGE) as u64)
                .expect("write");
            model[page * PAGE..(page + 1) * PAGE].copy_from_slice(&bytes);
        }
        file.sync_all().expect("sync");
    }
    let mut ops = 0;
    for r in 0..rounds {
        // Odd pages become holes again, so every round has zero-page windows to race.
        let store = FileStore::open(&path).expect("open");
        for page in (1..PAGES).step_by(2) {
            store
                .punch_hole((page * PAGE) as u64, PAGE as u64)
                .expect("punch");
            model[page * PAGE..(page + 1) * PAGE].fill(0);
        }
        drop(store);
        ops += round(&path, &mut model, r, options.clone());
        let mut found = vec![0u8; PAGES * PAGE];
        std::fs::File::open(&path)
            .expect("open")
            .read_exact_at(&mut found, 0)
            .expect("read");
        if let Some(at) = (0..found.len()).find(|&i| found[i] != model[i]) {
            panic!(
                "round {r}: byte {at} (page {}) is {:#x} in the file, {:#x} in the model: a write was lost",
                at / PAGE,
                found[at],
                model[at]
            );
        }
    }
    eprintln!("races: {rounds} rounds, {ops} accesses, {options:?}: file equals model");
}

#[test]
fn racing_first_touches_lose_no_write_one_handler() {
    run(300, Options::default().handler_threads(1));
}

#[test]
fn racing_first_touches_lose_no_write_two_handlers() {
    run(300, Options::default().handler_threads(2));
}

#[test]
fn racing_first_touches_lose_no_write_in_thread() {
    run(300, Options::default().resolution(Resolution::InThread));
}

#[test]
fn racing_first_touches_lose_no_write_async_tracking() {
    run(300, Options::default().dirty_tracking(DirtyTracking::Async));
}

#[test]
fn racing_first_touches_lose_no_write_in_thread_async_tracking() {
    let options = Options::default()
        .resolution(Resolution::InThread)
        .dirty_tracking(DirtyTracking::Async);
    run(300, options);
}

/// The zero-page window held open for 2 ms: writes from other threads land in private
/// copies of the zero page before it is write-protected, and the zero-pfn check must see
/// every one of them.
#[test]
fn writes_into_a_wide_open_zero_page_window_are_kept() {
    let delay = std::time::Duration::from_millis(2);
    run(
        100,
        Options::default()
            .handler_threads(2)
            .zero_window_delay(delay),
    );
    let in_thread = Options::default().resolution(Resolution::InThread);
    run(100, in_thread.zero_window_delay(delay));
}

/// Deterministic form of the zero-page race: while the handler holds the window open
/// (zero page mapped, not yet write-protected), another thread's store lands in a private
/// copy without any fault and returns at once. A flush right after must write it back:
/// the zero-pfn check has to see the copy, and flush has to wait for the window to close.
#[test]
fn a_store_inside_the_zero_page_window_is_flushed() {
    store_inside_the_zero_page_window_is_flushed(Options::default());
}

#[test]
fn a_store_inside_the_zero_page_window_is_flushed_in_thread() {
    store_inside_the_zero_page_window_is_flushed(
        Options::default().resolution(Resolution::InThread),
    );
}

fn store_inside_the_zero_page_window_is_flushed(options: Options) {
    if !common::require_uffd() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("window.img");
    let store = Arc::new(FileStore::create(&path, (4 * PAGE) as u64).expect("create"));
    let delay = std::time::Duration::from_millis(50);
    let mapping = Mapping::new(store, options.zero_window_delay(delay)).expect("map");
    let base = mapping.as_ptr() as usize;
    let page = base + PAGE;
    std::thread::scope(|scope| {
        // SAFETY: `page` lies inside the mapping, which outlives the scope.
        let reader = scope.spawn(|| unsafe { std::ptr::read_volatile(page as *const u8) });
        // Give the reader's fault time to map the zero page and enter the window.
        let started = std::time::Instant::now();
        std::thread::sleep(delay / 5);
        assert!(
            started.elapsed() < delay / 2,
            "the store must land inside the window"
        );
        // SAFETY: as above; the atomic store is data-race free.
        unsafe { &*((page + 100) as *const AtomicU8) }.store(0xab, Ordering::Relaxed);
        mapping.flush().expect("flush");
        assert_eq!(reader.join().expect("reader"), 0, "the read saw a hole");
    });
    let mut found = [0u8; 1];
    std::fs::File::open(&path)
        .expect("open")
        .read_exact_at(&mut found, (PAGE + 100) as u64)
        .expect("read");
    assert_eq!(
        found[0], 0xab,
        "the store into the zero-page window was lost"
    );
    let stats = mapping.stats();
    assert_eq!(
        (stats.zero_faults, stats.pages_written_back),
        (1, 1),
        "{stats:?}"
    );
    mapping.close().expect("close");
}
