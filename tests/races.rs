//! Fault races: threads released together onto a few Empty pages, over and over, so that
//! first touches meet the windows inside fault resolution (zero page then write-protect;
//! copy then protect; a huge page moved in then protected). Every byte has one owning
//! thread, so the final file is known exactly; a write that lands in a page udax believes
//! clean shows up as a mismatch. Run at each granularity, over a store shaped for it.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Barrier};

use udax::{DirtyTracking, FileStore, Granularity, Mapping, Options, Resolution, Store};

const PAGE: usize = 4096;
const PAGES: usize = 16;
const THREADS: usize = 4;
const OPS_PER_ROUND: usize = 192;

/// The store a run maps: its size, the pages the threads touch, and which pages start
/// every round as data (the rest are punched back to holes before each round).
struct Shape {
    pages: usize,
    hot: Vec<usize>,
    is_data: fn(usize) -> bool,
    /// Thread `t` starts `t` times this late, so that some first touches come while
    /// another thread's fault is half done rather than all at once.
    stagger: std::time::Duration,
}

impl Shape {
    /// 64 KiB, every page hot, data and holes alternating page by page.
    fn small() -> Shape {
        Shape {
            pages: PAGES,
            hot: (0..PAGES).collect(),
            is_data: |page| page % 2 == 0,
            stagger: std::time::Duration::ZERO,
        }
    }

    /// 256 KiB, every page hot, data and holes alternating every 32 KiB, so a 64 KiB
    /// fault-around window holds a run of each.
    fn windows() -> Shape {
        Shape {
            pages: 64,
            hot: (0..64).collect(),
            is_data: |page| (page / 8) % 2 == 0,
            stagger: std::time::Duration::ZERO,
        }
    }

    /// 4 MiB: a 2 MiB range of data and one of holes, 16 hot pages spread over both
    /// (both ends of each range and some in between).
    fn huge() -> Shape {
        Shape {
            pages: 1024,
            hot: vec![
                0, 1, 2, 200, 255, 256, 510, 511, 512, 513, 514, 700, 767, 768, 1022, 1023,
            ],
            is_data: |page| page < 512,
            stagger: std::time::Duration::ZERO,
        }
    }
}

/// xorshift64*: a small seeded generator, so a failure can be replayed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// One round on a fresh mapping; returns the number of accesses made.
fn round(
    path: &std::path::Path,
    model: &mut [u8],
    round: usize,
    options: Options,
    shape: &Shape,
) -> usize {
    let store = Arc::new(FileStore::open(path).expect("open store"));
    let mapping = Mapping::new(store, options).expect("map");
    let base = mapping.as_ptr() as usize;
    let barrier = Barrier::new(THREADS);
    let written: Vec<Vec<(usize, u8)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let barrier = &barrier;
                let (hot, stagger) = (&shape.hot, shape.stagger);
                scope.spawn(move || {
                    let mut rng =
                        ((round * THREADS + thread + 1) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    let mut writes = Vec::new();
                    barrier.wait();
                    std::thread::sleep(stagger * thread as u32);
                    for op in 0..OPS_PER_ROUND {
                        let r = next(&mut rng);
                        let page = hot[(r % hot.len() as u64) as usize];
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
    let mut memory = vec![0u8; model.len()];
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
    run_shape(rounds, options, &Shape::small());
}

fn run_shape(rounds: usize, options: Options, shape: &Shape) {
    if !common::require_uffd() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("races.img");
    let pages = shape.pages;
    let mut model = vec![0u8; pages * PAGE];
    let holes: Vec<usize> = (0..pages).filter(|&p| !(shape.is_data)(p)).collect();
    {
        let store = FileStore::create(&path, (pages * PAGE) as u64).expect("create");
        drop(store);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        for page in (0..pages).filter(|&p| (shape.is_data)(p)) {
            let bytes = vec![0x5a; PAGE];
            file.write_all_at(&bytes, (page * PAGE) as u64)
                .expect("write");
            model[page * PAGE..(page + 1) * PAGE].copy_from_slice(&bytes);
        }
        file.sync_all().expect("sync");
    }
    let mut ops = 0;
    for r in 0..rounds {
        // The hole pages become holes again, so every round has zero-page windows to race.
        let store = FileStore::open(&path).expect("open");
        for &page in &holes {
            store
                .punch_hole((page * PAGE) as u64, PAGE as u64)
                .expect("punch");
            model[page * PAGE..(page + 1) * PAGE].fill(0);
        }
        drop(store);
        ops += round(&path, &mut model, r, options.clone(), shape);
        let mut found = vec![0u8; pages * PAGE];
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

fn fault_around() -> Options {
    Options::default().granularity(Granularity::FaultAround(64 << 10))
}

fn huge() -> Options {
    Options::default().granularity(Granularity::Huge)
}

#[test]
fn racing_first_touches_lose_no_write_fault_around() {
    run_shape(300, fault_around().handler_threads(1), &Shape::windows());
    run_shape(300, fault_around().handler_threads(2), &Shape::windows());
}

/// The core shape at 2 MiB granularity: its one range crosses the end of the 64 KiB
/// mapping, so every fault takes the fallback path.
#[test]
fn racing_first_touches_lose_no_write_huge_fallback() {
    run(300, huge().handler_threads(2));
}

#[test]
fn racing_first_touches_lose_no_write_huge() {
    run_shape(200, huge().handler_threads(1), &Shape::huge());
    run_shape(200, huge().handler_threads(2), &Shape::huge());
}

/// Whole ranges dirtied by writes, and write-protect faults upgrading whole ranges.
#[test]
fn racing_first_touches_lose_no_write_huge_dirty() {
    run_shape(
        200,
        huge().huge_dirty(true).handler_threads(2),
        &Shape::huge(),
    );
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

/// The windows held open for 2 ms at 2 MiB: the zero-page window over 512 pages, and the
/// window between moving a huge page in and write-protecting it. Stores that land in them
/// must all be found (zero-pfn check; compare with the bytes moved in). Staggered starts
/// put later threads' first touches inside windows that earlier threads' faults opened,
/// and with every page hot most pages are written once: a store lost in a window is not
/// covered up by a later write that dirties its page.
#[test]
fn writes_into_wide_open_huge_windows_are_kept() {
    let (options, shape) = wide_open_huge_windows();
    run_shape(100, options, &shape);
}

/// 2 MiB ranges with their windows held open 2 ms, every page hot, staggered starts.
fn wide_open_huge_windows() -> (Options, Shape) {
    let options = huge()
        .handler_threads(2)
        .zero_window_delay(std::time::Duration::from_millis(2));
    let shape = Shape {
        hot: (0..1024).collect(),
        stagger: std::time::Duration::from_millis(1),
        ..Shape::huge()
    };
    (options, shape)
}

/// Deterministic form of the zero-page race: while the handler holds the window open
/// (zero page mapped, not yet write-protected), another thread's store lands in a private
/// copy without any fault and returns at once. A flush right after must write it back:
/// the zero-pfn check has to see the copy, and flush has to wait for the window to close.
#[test]
fn a_store_inside_the_zero_page_window_is_flushed() {
    store_inside_the_zero_page_window_is_flushed(Options::default(), false);
}

#[test]
fn a_store_inside_the_zero_page_window_is_flushed_in_thread() {
    store_inside_the_zero_page_window_is_flushed(
        Options::default().resolution(Resolution::InThread),
        false,
    );
}

/// At 2 MiB, a write to another page of the range then upgrades the whole range, which
/// drops its zero pages to install 2 MiB writable: it must first find the page holding
/// the store (no longer the zero pfn) and keep it.
#[test]
fn a_store_inside_a_2_mib_zero_window_survives_the_range_upgrade() {
    store_inside_the_zero_page_window_is_flushed(
        Options::default().granularity(Granularity::Huge),
        true,
    );
}

/// The store lands in page 1's zero-page window; with `then_upgrade`, page 2 is written
/// after the window closed (a write to a Zero page of the same range), before the flush.
fn store_inside_the_zero_page_window_is_flushed(options: Options, then_upgrade: bool) {
    if !common::require_uffd() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("window.img");
    let len = if then_upgrade { 4 << 20 } else { 4 * PAGE };
    let store = Arc::new(FileStore::create(&path, len as u64).expect("create"));
    let delay = std::time::Duration::from_millis(200);
    let mapping = Mapping::new(store, options.zero_window_delay(delay)).expect("map");
    let base = mapping.as_ptr() as usize;
    let page = base + PAGE;
    std::thread::scope(|scope| {
        // SAFETY: `page` lies inside the mapping, which outlives the scope.
        let reader = scope.spawn(|| unsafe { std::ptr::read_volatile(page as *const u8) });
        // Wait for the reader's fault to be served (counted just before the ZEROPAGE), not
        // for a fixed time: on a loaded machine the reader thread may not have run yet, and
        // the store would then be a plain write fault, not the race. A few milliseconds
        // more let the ZEROPAGE finish; the window stays open `delay` after it.
        let started = std::time::Instant::now();
        while mapping.stats().zero_faults == 0 {
            assert!(started.elapsed() < 10 * delay, "the reader never faulted");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let served = std::time::Instant::now();
        std::thread::sleep(delay / 20);
        assert!(
            served.elapsed() < delay / 2,
            "the store must land inside the window"
        );
        // SAFETY: as above; the atomic store is data-race free.
        unsafe { &*((page + 100) as *const AtomicU8) }.store(0xab, Ordering::Relaxed);
        let read = if then_upgrade {
            let read = reader.join();
            mapping.write_at(2 * PAGE, &[0xcd]).expect("write page 2");
            mapping.flush().expect("flush");
            read
        } else {
            mapping.flush().expect("flush");
            reader.join()
        };
        assert_eq!(read.expect("reader"), 0, "the read saw a hole");
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
    if then_upgrade {
        let mut written = [0u8; 1];
        mapping
            .read_at(2 * PAGE, &mut written)
            .expect("read page 2");
        assert_eq!(written[0], 0xcd, "{stats:?}");
    } else {
        assert_eq!(
            (stats.zero_faults, stats.pages_written_back),
            (1, 1),
            "{stats:?}"
        );
    }
    mapping.close().expect("close");
    if then_upgrade {
        std::fs::File::open(&path)
            .expect("open")
            .read_exact_at(&mut found, (2 * PAGE) as u64)
            .expect("read");
        assert_eq!(
            found[0], 0xcd,
            "the write after the window reached the store"
        );
    }
}

/// In-thread resolution at 2 MiB: ranges come in whole in the faulting thread's SIGBUS
/// handler (data through the mapping's one staging buffer: a thread that finds it taken
/// falls back to 4 KiB).
#[test]
fn racing_first_touches_lose_no_write_huge_in_thread() {
    let in_thread = huge().resolution(Resolution::InThread);
    run_shape(200, in_thread, &Shape::huge());
    let around = fault_around().resolution(Resolution::InThread);
    run_shape(200, around, &Shape::windows());
}

/// Issue 11 item 1: the plain race shapes with the huge zero page on, in one child process
/// (the huge zero page is on by default), the windows of the last held open 2 ms.
/// Not a reproducer of the lost store (alone in its child it passed 4 of 4 runs before the
/// fix); `huge_zero_page_on_parallel_mappings_lose_no_write` is. Ignored: it takes minutes.
#[test]
#[ignore = "the huge zero page on, the plain race shapes: minutes long"]
fn huge_zero_page_on_racing_first_touches_lose_no_write() {
    common::run_case(
        "huge-zero-race",
        "huge_zero_page_on_racing_first_touches_lose_no_write",
        std::time::Duration::from_secs(240),
        || {
            if !udax::huge_zero_available() {
                eprintln!("huge zero page refused by the gate or the self-test: fallback only");
            }
            run_shape(200, huge().handler_threads(1), &Shape::huge());
            run_shape(200, huge().handler_threads(2), &Shape::huge());
            let (wide, shape) = wide_open_huge_windows();
            run_shape(100, wide, &shape);
        },
    );
}

/// Issue 11 item 1: the huge zero page on, several mappings at once. The four
/// `racing_first_touches_lose_no_write_huge*` shapes run on parallel threads of one child
/// process (each its own mapping, all sharing the process-wide huge zero source), over and
/// over for a minute. Without the fix in `install::strays_of` (a move of the huge zero
/// PMD failing with EEXIST having installed the range's first page, which the entries
/// then called Empty) it lost a store at page 512 in about 2 runs of 3 (a race: not
/// every run); with it, 10 of 10 passed.
#[test]
fn huge_zero_page_on_parallel_mappings_lose_no_write() {
    common::run_case(
        "huge-zero-parallel",
        "huge_zero_page_on_parallel_mappings_lose_no_write",
        std::time::Duration::from_secs(240),
        || {
            if !udax::huge_zero_available() {
                eprintln!("huge zero page refused by the gate or the self-test: fallback only");
            }
            // Staggered starts put later threads' first touches of a hole range into an
            // earlier thread's fault of it, between the MADV_DONTNEED and the UFFDIO_MOVE.
            let staggered = |micros| Shape {
                stagger: std::time::Duration::from_micros(micros),
                ..Shape::huge()
            };
            let runs: [&(dyn Fn() + Sync); 4] = [
                &|| run_shape(100, huge().handler_threads(1), &staggered(0)),
                &|| run_shape(100, huge().handler_threads(2), &staggered(20)),
                &|| run_shape(100, huge().handler_threads(1), &staggered(50)),
                &|| {
                    run_shape(
                        100,
                        huge().huge_dirty(true).handler_threads(2),
                        &staggered(100),
                    )
                },
            ];
            let started = std::time::Instant::now();
            while started.elapsed() < std::time::Duration::from_secs(60) {
                std::thread::scope(|scope| {
                    let runs: Vec<_> = runs.iter().map(|&run| scope.spawn(run)).collect();
                    for run in runs {
                        if let Err(panic) = run.join() {
                            std::panic::resume_unwind(panic);
                        }
                    }
                });
            }
        },
    );
}
