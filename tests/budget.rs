//! The resident budget: mappings larger than the budget read and write correctly, Rss of
//! the mapping stays at or under the budget plus the documented slack (one page per
//! handler thread), and no write racing an eviction is lost.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use rayon::slice::ParallelSliceMut;
use udax::{Error, FileStore, Granularity, Mapping, MemStore, Options, Resolution, Store};

const PAGE: usize = 4096;
const MIB: usize = 1 << 20;

/// The slack the docs promise: one page per handler thread (4 KiB faults).
fn slack_kib(handler_threads: usize) -> u64 {
    (handler_threads * PAGE / 1024) as u64
}

/// What a sampler on a thread of its own may read above the true Rss. The smaps walk is
/// not atomic: pages faulted in ahead of the walk after it counted pages since evicted
/// behind it are counted twice. The sampler runs at real-time priority where it may, so
/// that its walk (tens of microseconds) is not preempted by the threads under test; a
/// walk preempted for milliseconds on this 2-CPU machine would count tens of pages twice.
/// Samples taken by the only thread that touches the mapping have no skew at all.
const WALK_SKEW_KIB: u64 = 16 * PAGE as u64 / 1024;

/// Samples the mapping's Rss on a thread of its own until finished; keeps the highest.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<RssPeak>>,
}

/// What an [`RssSampler`] saw.
#[derive(Debug)]
struct RssPeak {
    /// The highest Rss sampled (KiB).
    kib: u64,
    /// How many samples were taken.
    samples: usize,
    /// Whether the sampler ran at real-time priority (else its walks may be skewed more).
    realtime: bool,
}

impl RssPeak {
    /// Asserts the peak is at most `limit_kib` plus the sampling skew. Without real-time
    /// priority the skew is unbounded, and only a gross excess fails.
    #[track_caller]
    fn assert_within(&self, limit_kib: u64) {
        let skew = if self.realtime {
            WALK_SKEW_KIB
        } else {
            limit_kib / 8
        };
        assert!(self.samples > 10, "too few Rss samples: {self:?}");
        assert!(
            self.kib <= limit_kib + skew,
            "Rss reached {} KiB, over budget + slack {limit_kib} KiB + sampling skew {skew} KiB",
            self.kib
        );
    }
}

impl RssSampler {
    fn start(mapping: &Mapping) -> RssSampler {
        let (ptr, len) = (mapping.as_ptr() as usize, mapping.len());
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let param = libc::sched_param { sched_priority: 1 };
            // SAFETY: sets this thread's own policy; `param` is a valid sched_param.
            let realtime = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0;
            if !realtime {
                eprintln!("the Rss sampler runs without real-time priority: looser bound");
            }
            let mut peak = RssPeak {
                kib: 0,
                samples: 0,
                realtime,
            };
            while !stopped.load(Ordering::Relaxed) {
                peak.kib = peak.kib.max(common::mapping_rss_kib(ptr as *const u8, len));
                peak.samples += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            peak
        });
        RssSampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling and returns what it saw.
    fn finish(mut self) -> RssPeak {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("sampler thread");
        thread.join().expect("sampler")
    }
}

/// The u64 word `word` of page `page` in pass `pass`.
fn pattern(pass: u64, page: usize, word: usize) -> u64 {
    ((page * 512 + word) as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (pass << 56)
}

fn fill_page(buf: &mut [u64; 512], pass: u64, page: usize) {
    for (word, slot) in buf.iter_mut().enumerate() {
        *slot = pattern(pass, page, word);
    }
}

/// Runs `body` in a re-executed child (this test alone): in-thread resolution installs a
/// process-wide SIGBUS handler, which must not reach the other tests of this binary.
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

/// Writes (pass 1), reads back, rewrites every third page (pass 2) and reads again all of
/// a 64 MiB store through a mapping with an 8 MiB budget, sampling Rss all along; Rss
/// may exceed the budget by `slack_pages` (one fault's pages: the test has one thread).
fn read_write_64_mib(label: &str, options: Options, slack_pages: usize) {
    if !common::require_uffd() {
        return;
    }
    const SIZE: usize = 64 * MIB;
    const BUDGET: usize = 8 * MIB;
    let pages = SIZE / PAGE;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("budget.img");
    let store = Arc::new(FileStore::create(&path, SIZE as u64).expect("create"));
    let options = options.budget(BUDGET as u64);
    let mapping = Mapping::new(store, options.clone()).expect("map");
    let base = mapping.as_ptr();
    // Sampled by the one thread that touches the mapping, every 16 pages: the smaps walk
    // is not atomic, and a sampler racing a sequential scan sees pages faulted in ahead
    // of it after counting pages since evicted behind it (a few pages too many).
    let rss_peak = std::cell::Cell::new(0);
    let samples = std::cell::Cell::new(0);
    let sample = |page: usize| {
        if page % 16 == 0 {
            let rss = common::mapping_rss_kib(base, SIZE);
            rss_peak.set(rss_peak.get().max(rss));
            samples.set(samples.get() + 1);
        }
    };
    let expected_pass = |page: usize| if page % 3 == 0 { 2 } else { 1 };
    let mut buf = [0u64; 512];
    let mut check = |pass_of: &dyn Fn(usize) -> u64| {
        let mut got = [0u64; 512];
        for page in 0..pages {
            // SAFETY: the page lies inside the mapping, which outlives the loop; only this
            // thread accesses the mapping.
            unsafe {
                std::ptr::copy_nonoverlapping(base.add(page * PAGE), got.as_mut_ptr().cast(), PAGE)
            };
            fill_page(&mut buf, pass_of(page), page);
            assert!(got == buf, "page {page} reads wrong through the mapping");
            sample(page);
        }
    };
    let write = |buf: &mut [u64; 512], pass: u64, page: usize| {
        fill_page(buf, pass, page);
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr().cast(), base.add(page * PAGE), PAGE) };
        sample(page);
    };
    let mut wbuf = [0u64; 512];
    for page in 0..pages {
        write(&mut wbuf, 1, page);
    }
    check(&|_| 1);
    for page in (0..pages).step_by(3) {
        write(&mut wbuf, 2, page);
    }
    check(&expected_pass);
    let (rss_peak, samples) = (rss_peak.get(), samples.get());
    let stats = mapping.stats();
    mapping.close().expect("close");

    let limit = ((BUDGET + slack_pages * PAGE) / 1024) as u64;
    eprintln!(
        "64 MiB under 8 MiB, {label}: Rss peak {rss_peak} KiB over {samples} samples; {stats:?}"
    );
    assert!(samples > 10, "too few Rss samples: {samples}");
    assert!(
        rss_peak <= limit,
        "Rss reached {rss_peak} KiB, over budget + slack {limit} KiB"
    );
    assert!(
        stats.resident_pages_peak <= (BUDGET / PAGE + slack_pages) as u64,
        "{stats:?}"
    );
    assert!(stats.evictions > 0 && stats.evicted_dirty > 0, "{stats:?}");

    // After reopening: the file itself, then a fresh mapping under the same budget.
    let file = std::fs::File::open(&path).expect("open");
    let mut got = [0u64; 512];
    for page in 0..pages {
        // SAFETY: u64 has no invalid bit patterns; the buffer is 4096 bytes.
        let bytes = unsafe { std::slice::from_raw_parts_mut(got.as_mut_ptr().cast(), PAGE) };
        file.read_exact_at(bytes, (page * PAGE) as u64)
            .expect("read");
        fill_page(&mut buf, expected_pass(page), page);
        assert!(got == buf, "page {page} is wrong in the file");
    }
    let store = Arc::new(FileStore::open(&path).expect("reopen"));
    let mapping = Mapping::new(store, options).expect("map");
    let mut bytes = vec![0u8; PAGE];
    for page in 0..pages {
        mapping.read_at(page * PAGE, &mut bytes).expect("read_at");
        fill_page(&mut buf, expected_pass(page), page);
        // SAFETY: `buf` is 4096 bytes of plain integers.
        let want = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), PAGE) };
        assert!(bytes == want, "page {page} reads wrong after reopening");
    }
    let stats = mapping.stats();
    assert!(stats.evictions > 0 && stats.evicted_dirty == 0, "{stats:?}");
    mapping.close().expect("close");
}

#[test]
fn reads_and_writes_64_mib_under_an_8_mib_budget() {
    let options = Options::default().handler_threads(1);
    read_write_64_mib("one handler thread", options, 1);
}

#[test]
fn reads_and_writes_64_mib_under_an_8_mib_budget_in_thread() {
    in_child(
        "reads_and_writes_64_mib_under_an_8_mib_budget_in_thread",
        || {
            let options = Options::default().resolution(Resolution::InThread);
            read_write_64_mib("in-thread", options, 1);
        },
    );
}

/// With 2 MiB faults, a read of data installs 512 pages at once: the slack is 512 pages,
/// and the clock evicts whole 2 MiB ranges.
#[test]
fn reads_and_writes_64_mib_under_an_8_mib_budget_huge() {
    let options = Options::default()
        .handler_threads(1)
        .granularity(Granularity::Huge);
    read_write_64_mib("2 MiB granularity", options, 512);
}

/// Zero pages hold no memory: reading all of a hole store never evicts.
#[test]
fn zero_pages_do_not_count_against_the_budget() {
    if !common::require_uffd() {
        return;
    }
    let store: Arc<dyn Store> = Arc::new(MemStore::new((16 * MIB) as u64));
    let mapping = Mapping::new(store, Options::default().budget(MIB as u64)).expect("map");
    let mut byte = [0u8; 1];
    for page in 0..16 * MIB / PAGE {
        mapping.read_at(page * PAGE, &mut byte).expect("read");
    }
    let stats = mapping.stats();
    assert_eq!(
        (stats.evictions, stats.resident_pages_peak),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(common::mapping_rss_kib(mapping.as_ptr(), mapping.len()), 0);
    mapping.close().expect("close");
}

#[test]
fn a_budget_under_16_pages_is_refused() {
    if !common::require_uffd() {
        return;
    }
    let store: Arc<dyn Store> = Arc::new(MemStore::new(MIB as u64));
    match Mapping::new(store, Options::default().budget(15 * PAGE as u64)) {
        Err(Error::BudgetTooSmall { minimum, .. }) => assert_eq!(minimum, 16 * PAGE as u64),
        Err(other) => panic!("expected BudgetTooSmall, got {other:?}"),
        Ok(_) => panic!("a 15-page budget was accepted"),
    }
}

/// xorshift64*: a small seeded generator, so a failure can be replayed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// The stress test under a 2 MiB budget: four threads read and write bytes they own all
/// over a 16 MiB store (half data, half holes; half the accesses in a hot 1 MiB), while a
/// fifth flushes now and then and two handler threads serve faults and evict. Each thread
/// checks every byte it reads against its own last write, and the file must equal the
/// model at the end: zero lost writes.
fn stress(handler_threads: usize, ops_per_thread: usize) {
    if !common::require_uffd() {
        return;
    }
    const SIZE: usize = 16 * MIB;
    const THREADS: usize = 4;
    const BUDGET: usize = 2 * MIB;
    let pages = SIZE / PAGE;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("stress.img");
    let model: Vec<AtomicU8> = (0..SIZE).map(|_| AtomicU8::new(0)).collect();
    {
        let store = FileStore::create(&path, SIZE as u64).expect("create");
        let data = vec![0x5au8; 64 * PAGE];
        for chunk in (0..pages).step_by(128) {
            store.write_at((chunk * PAGE) as u64, &data).expect("write");
            for byte in &model[chunk * PAGE..(chunk + 64) * PAGE] {
                byte.store(0x5a, Ordering::Relaxed);
            }
        }
    }
    let store = Arc::new(FileStore::open(&path).expect("open"));
    let options = Options::default()
        .budget(BUDGET as u64)
        .handler_threads(handler_threads);
    let mapping = Mapping::new(store, options).expect("map");
    let base = mapping.as_ptr() as usize;
    let sampler = RssSampler::start(&mapping);
    let barrier = Barrier::new(THREADS + 1);
    let done = AtomicBool::new(false);
    let flushes = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let (barrier, model) = (&barrier, &model);
                scope.spawn(move || {
                    let mut rng = (thread as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    barrier.wait();
                    for op in 0..ops_per_thread {
                        let r = next(&mut rng);
                        let page = if r & 1 == 0 {
                            (r >> 8) as usize % (MIB / PAGE)
                        } else {
                            (r >> 8) as usize % pages
                        };
                        // Thread `thread` owns the bytes at index % THREADS == thread.
                        let slot = (r >> 40) as usize % (PAGE / THREADS);
                        let index = page * PAGE + slot * THREADS + thread;
                        // SAFETY: `index` lies inside the mapping, which outlives the scope;
                        // atomic accesses make racing threads data-race free.
                        let byte = unsafe { &*((base + index) as *const AtomicU8) };
                        let expected = model[index].load(Ordering::Relaxed);
                        if r >> 63 == 0 {
                            let found = byte.load(Ordering::Relaxed);
                            assert_eq!(
                                found,
                                expected,
                                "thread {thread} op {op}: byte {index} (page {}) reads {found:#x}, \
                             its owner last wrote {expected:#x}: a write was lost",
                                index / PAGE
                            );
                        } else {
                            let value = (op as u8).wrapping_mul(2) | 1;
                            byte.store(value, Ordering::Relaxed);
                            model[index].store(value, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        let flusher = scope.spawn(|| {
            let mut flushes = 0;
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
                mapping.flush().expect("flush");
                flushes += 1;
            }
            flushes
        });
        barrier.wait();
        for worker in workers {
            worker.join().expect("worker");
        }
        done.store(true, Ordering::Relaxed);
        flusher.join().expect("flusher")
    });
    let rss = sampler.finish();
    let stats = mapping.stats();
    let mut memory = vec![0u8; SIZE];
    mapping.read_at(0, &mut memory).expect("read");
    mapping.close().expect("close");
    let model: Vec<u8> = model.into_iter().map(AtomicU8::into_inner).collect();
    common::assert_bytes_eq(&memory, &model, "the mapping after the stress");
    common::assert_bytes_eq(&common::read_file(&path), &model, "the file after close");
    eprintln!(
        "stress under 2 MiB, {handler_threads} handlers: {flushes} flushes, {rss:?}; {stats:?}"
    );
    assert!(stats.evictions > 0 && stats.evicted_dirty > 0, "{stats:?}");
    let limit = (BUDGET / PAGE + handler_threads) as u64;
    assert!(stats.resident_pages_peak <= limit, "{stats:?}");
    rss.assert_within((BUDGET / 1024) as u64 + slack_kib(handler_threads));
}

#[test]
fn stress_under_a_2_mib_budget_loses_no_write_two_handlers() {
    stress(2, 50_000);
}

/// The race the design names: a thread keeps writing a few pages while eviction writes
/// them back and drops them, each eviction holding its window (written back, not yet
/// dropped) open for 5 ms. Writes that arrive then take a write-protect fault, wait for
/// the entry lock, find the page Empty, and on retry fault it back in from the store.
/// Every slot is written with a distinct counter, so any lost write shows.
#[test]
fn writes_racing_the_eviction_of_their_page_are_kept() {
    if !common::require_uffd() {
        return;
    }
    const PAGES: usize = 64;
    const HOT: usize = 4;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("evict-race.img");
    let store = FileStore::create(&path, (PAGES * PAGE) as u64).expect("create");
    store
        .write_at(0, &vec![0xa5u8; PAGES * PAGE])
        .expect("fill");
    let options = Options::default()
        .budget((16 * PAGE) as u64)
        .handler_threads(2)
        .evict_delay(Duration::from_millis(5));
    let mapping = Mapping::new(Arc::new(store), options).expect("map");
    let base = mapping.as_ptr() as usize;
    let stop = AtomicBool::new(false);
    let words = HOT * PAGE / 8;
    let written = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut count = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let word = (count as usize * 67) % words;
                // SAFETY: the word lies in the first HOT pages of the mapping, which
                // outlives the scope; only this thread writes them.
                let slot = unsafe { &*((base + word * 8) as *const AtomicU64) };
                slot.store(count + 1, Ordering::Relaxed);
                count += 1;
            }
            count
        });
        // Read the other pages round and round: their faults run the eviction.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut byte = [0u8; 1];
        let mut page = HOT;
        while mapping.stats().evicted_dirty < 200 && Instant::now() < deadline {
            mapping.read_at(page * PAGE, &mut byte).expect("read");
            assert_eq!(byte[0], 0xa5);
            page = if page + 1 == PAGES { HOT } else { page + 1 };
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().expect("writer")
    });
    // First, that the writer got far enough for every word to have a last value: a word
    // it never reached reads as the file's old bytes, which is no lost write.
    assert!(
        written > words as u64 * 2,
        "the writer wrote too little: {written} writes over {words} words"
    );
    // The last value written to each word: the largest count with that word.
    let mut expected = vec![0u64; words];
    for count in written.saturating_sub(words as u64 * 2)..written {
        expected[(count as usize * 67) % words] = count + 1;
    }
    let check = |bytes: &[u8], what: &str| {
        for (word, want) in expected.iter().enumerate() {
            let got = u64::from_ne_bytes(bytes[word * 8..word * 8 + 8].try_into().expect("8"));
            assert_eq!(
                got, *want,
                "{what}: word {word} of the hot pages lost a write"
            );
        }
    };
    let mut memory = vec![0u8; HOT * PAGE];
    mapping.read_at(0, &mut memory).expect("read");
    check(&memory, "the mapping");
    let stats = mapping.stats();
    mapping.close().expect("close");
    check(&common::read_file(&path)[..HOT * PAGE], "the file");
    eprintln!("eviction race: {written} writes; {stats:?}");
    assert!(stats.evicted_dirty >= 200, "{stats:?}");
}

/// The `umapsort` workload in small: 32 MiB of seeded pseudo-random u64 sorted in place
/// through a mapping with a 4 MiB budget by rayon's parallel sort; the file must come out
/// sorted with the same multiset (sum and xor). `slack_pages`: threads serving faults.
fn sort_32_mib(label: &str, options: Options, slack_pages: usize) {
    if !common::require_uffd() {
        return;
    }
    const SIZE: usize = 32 * MIB;
    const BUDGET: usize = 4 * MIB;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sort.img");
    let (mut sum, mut xor) = (0u64, 0u64);
    {
        let store = FileStore::create(&path, SIZE as u64).expect("create");
        let mut rng = 0x5eed_u64;
        let mut chunk = vec![0u8; MIB];
        for offset in (0..SIZE).step_by(MIB) {
            for word in chunk.chunks_exact_mut(8) {
                let value = next(&mut rng);
                (sum, xor) = (sum.wrapping_add(value), xor ^ value);
                word.copy_from_slice(&value.to_ne_bytes());
            }
            store.write_at(offset as u64, &chunk).expect("fill");
        }
    }
    let store = Arc::new(FileStore::open(&path).expect("open"));
    let options = options.budget(BUDGET as u64);
    let mut mapping = Mapping::new(store, options).expect("map");
    let sampler = RssSampler::start(&mapping);
    let started = Instant::now();
    {
        let bytes = mapping.as_mut_slice();
        // SAFETY: the mapping is 2 MiB aligned and SIZE bytes long, so it holds exactly
        // SIZE / 8 aligned u64, and any bit pattern is a valid u64; `bytes` is not used
        // while `words` lives.
        let words: &mut [u64] =
            unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast(), SIZE / 8) };
        words.par_sort_unstable();
    }
    mapping.flush().expect("flush");
    let elapsed = started.elapsed();
    let rss = sampler.finish();
    let stats = mapping.stats();
    mapping.close().expect("close");
    let file = common::read_file(&path);
    let values: Vec<u64> = file
        .chunks_exact(8)
        .map(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")))
        .collect();
    assert!(values.is_sorted(), "the file is not sorted");
    let found = values
        .iter()
        .fold((0u64, 0u64), |(s, x), v| (s.wrapping_add(*v), x ^ v));
    assert_eq!(found, (sum, xor), "the sort changed the multiset");
    eprintln!("sort 32 MiB under 4 MiB, {label}: {elapsed:?}, {rss:?}; {stats:?}");
    assert!(stats.evictions > 0 && stats.evicted_dirty > 0, "{stats:?}");
    assert!(
        stats.resident_pages_peak <= (BUDGET / PAGE + slack_pages) as u64,
        "{stats:?}"
    );
    rss.assert_within(((BUDGET + slack_pages * PAGE) / 1024) as u64);
}

#[test]
fn sort_of_32_mib_under_a_4_mib_budget() {
    let options = Options::default().handler_threads(1);
    sort_32_mib("one handler thread", options, 1);
}

/// Resolved in the faulting threads: rayon's threads each serve their own faults.
#[test]
fn sort_of_32_mib_under_a_4_mib_budget_in_thread() {
    in_child("sort_of_32_mib_under_a_4_mib_budget_in_thread", || {
        let options = Options::default().resolution(Resolution::InThread);
        let threads = rayon::current_num_threads() + 1;
        sort_32_mib("in-thread", options, threads);
    });
}

/// The pagemap word of page `page` of the region at `base`: (present, uffd write-protected).
fn page_flags(base: usize, page: usize) -> (bool, bool) {
    let file = std::fs::File::open("/proc/self/pagemap").expect("open pagemap");
    let mut word = [0u8; 8];
    file.read_exact_at(&mut word, ((base / PAGE + page) * 8) as u64)
        .expect("read pagemap");
    let word = u64::from_ne_bytes(word);
    (word & (1 << 63) != 0, word & (1 << 57) != 0)
}

/// A page evicted dirty comes back writable and Dirty on a read (a refill: counted as a
/// write fault, no read fault), so its rewrite takes no write-protect fault, and flush
/// writes it; a page evicted clean comes back Clean and write-protected as before, and
/// its write is an mkwrite fault. The file holds every write after close. With
/// fault-around, the refill brings the neighbours evicted dirty with it, writable too.
/// (The budget, 64 pages, leaves the refilled pages a second chance through the test.)
fn refill_after_dirty_eviction(granularity: Granularity) {
    if !common::require_uffd() {
        return;
    }
    const PAGES: usize = 256;
    const WRITTEN: usize = 8;
    const CLEAN: usize = 160;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("refill.img");
    let store = FileStore::create(&path, (PAGES * PAGE) as u64).expect("create");
    store
        .write_at(0, &vec![0x11u8; PAGES * PAGE])
        .expect("fill");
    let options = Options::default()
        .budget((64 * PAGE) as u64)
        .granularity(granularity);
    let mapping = Mapping::new(Arc::new(store), options).expect("map");
    let base = mapping.as_ptr() as usize;
    let byte = |page: usize| (base + page * PAGE) as *mut u8;
    for page in 0..WRITTEN {
        // SAFETY: the page lies inside the mapping, which outlives this test's accesses.
        unsafe { byte(page).write_volatile(0x20 + page as u8) };
    }
    // Read the other pages round and round until the written ones and page CLEAN are out.
    let gone = |page: usize| !page_flags(base, page).0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut page = WRITTEN;
    // (The counter follows the drop: wait for it too, the eviction may still be finishing.)
    let evicted = || mapping.stats().evicted_dirty >= WRITTEN as u64;
    loop {
        assert!(Instant::now() < deadline, "{:?}", mapping.stats());
        if (0..WRITTEN).all(gone) && gone(CLEAN) {
            if evicted() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        // SAFETY: as above.
        assert_eq!(unsafe { byte(page).read_volatile() }, 0x11);
        page = if page + 1 == PAGES { WRITTEN } else { page + 1 };
        if page == CLEAN && gone(CLEAN) && !(0..WRITTEN).all(gone) {
            page += 1;
        }
    }

    // The page evicted dirty: a read refills it writable; the write takes no fault.
    let before = mapping.stats();
    // SAFETY: as above.
    assert_eq!(unsafe { byte(0).read_volatile() }, 0x20);
    let refilled = mapping.stats();
    assert_eq!(
        page_flags(base, 0),
        (true, false),
        "a page evicted dirty must come back present and writable"
    );
    // SAFETY: as above.
    unsafe { byte(0).write_volatile(0x30) };
    let rewritten = mapping.stats();
    assert_eq!(
        (
            refilled.read_faults - before.read_faults,
            refilled.write_faults - before.write_faults,
            rewritten.mkwrite_faults - before.mkwrite_faults,
        ),
        (0, 1, 0),
        "read, write and mkwrite faults of the refill: {before:?} -> {rewritten:?}"
    );
    if granularity != Granularity::Page {
        // The whole evicted run came back in that one fault, writable: no fault to rewrite it.
        assert_eq!(refilled.fault_around_pages - before.fault_around_pages, 7);
        for page in 1..WRITTEN {
            assert_eq!(page_flags(base, page), (true, false), "neighbour {page}");
            // SAFETY: as above.
            unsafe { byte(page).write_volatile(0x50 + page as u8) };
        }
        let after = mapping.stats();
        assert_eq!(
            (after.write_faults, after.mkwrite_faults),
            (rewritten.write_faults, rewritten.mkwrite_faults),
            "rewriting the refilled neighbours faulted"
        );
    }

    // The page evicted clean: read back Clean and protected; its write is a WP fault.
    // SAFETY: as above.
    assert_eq!(unsafe { byte(CLEAN).read_volatile() }, 0x11);
    let read = mapping.stats();
    assert_eq!(page_flags(base, CLEAN), (true, true));
    // SAFETY: as above.
    unsafe { byte(CLEAN).write_volatile(0x40) };
    let written = mapping.stats();
    assert_eq!(
        (
            read.read_faults - rewritten.read_faults,
            written.mkwrite_faults - read.mkwrite_faults,
        ),
        (1, 1),
        "read and mkwrite faults of the clean page: {rewritten:?} -> {written:?}"
    );
    mapping.flush().expect("flush");
    // Flush (or an eviction since) wrote page 0 and page CLEAN at least.
    let written_back = mapping.stats().pages_written_back - before.pages_written_back;
    assert!(
        written_back >= 2,
        "{written_back} pages written since the refill"
    );
    mapping.close().expect("close");

    let file = common::read_file(&path);
    let first = |page: usize| file[page * PAGE];
    assert_eq!(first(0), 0x30, "the rewrite of the refilled page");
    let rewrite = if granularity == Granularity::Page {
        0x20
    } else {
        0x50
    };
    for page in 1..WRITTEN {
        assert_eq!(
            first(page),
            rewrite + page as u8,
            "page {page}: its last write"
        );
        assert!(
            file[page * PAGE + 1..(page + 1) * PAGE]
                .iter()
                .all(|&b| b == 0x11)
        );
    }
    assert_eq!(first(CLEAN), 0x40, "the write to the page evicted clean");
    assert!(
        file[PAGE * WRITTEN..PAGE * CLEAN]
            .iter()
            .all(|&b| b == 0x11)
    );
}

#[test]
fn a_page_evicted_dirty_comes_back_writable_and_dirty() {
    refill_after_dirty_eviction(Granularity::Page);
}

#[test]
fn a_run_evicted_dirty_comes_back_writable_with_fault_around() {
    refill_after_dirty_eviction(Granularity::FaultAround(64 << 10));
}

/// The KiB of `file` in the page cache: mincore(2) over a shared mapping of it (mapping
/// a file faults nothing in; mincore reports the page cache of a file mapping).
fn cached_kib(file: &std::fs::File, len: usize) -> u64 {
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh read-only shared mapping of `len` bytes of an open file, unmapped
    // below; nothing reads it.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED, "mmap of the store file");
    let mut vec = vec![0u8; len.div_ceil(PAGE)];
    // SAFETY: `addr..addr + len` is the mapping just made; `vec` has a byte per page.
    let ret = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
    // SAFETY: unmaps the mapping made above, which nothing references.
    unsafe { libc::munmap(addr, len) };
    assert_eq!(ret, 0, "mincore: {}", std::io::Error::last_os_error());
    vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * (PAGE as u64 / 1024)
}

/// What a mapping under a budget may cost beyond budget + 10%, and why: the windows read
/// ahead of a sequential run and kept by a trim (the one read in and the one asked ahead,
/// at most 2 x 2 MiB), the bytes read between two trims (1 MiB, the least interval), and
/// what is read while a trim runs on its thread (1 MiB, a generous bound).
const CACHE_SLACK_KIB: u64 = (2 * 2 + 1 + 1) * 1024;

/// Reads all of a 64 MiB file in order, then 16,384 random pages of it, through a mapping
/// with a 16 MiB budget (handler threads: the one reading thread samples, so no skew);
/// the file's page cache plus the mapping's Rss stay within budget + 10% + the slack.
#[test]
fn page_cache_and_rss_stay_within_the_budget() {
    if !common::require_uffd() {
        return;
    }
    const SIZE: usize = 64 * MIB;
    const BUDGET: usize = 16 * MIB;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cached.img");
    {
        let file = std::fs::File::create(&path).expect("create");
        let mut page = [0u64; 512];
        for index in 0..SIZE / PAGE {
            fill_page(&mut page, 1, index);
            // SAFETY: a [u64; 512] is 4096 initialised bytes.
            let bytes: &[u8; PAGE] = unsafe { &*page.as_ptr().cast() };
            file.write_all_at(bytes, (index * PAGE) as u64)
                .expect("fill");
        }
        file.sync_data().expect("fdatasync");
    }
    let store = Arc::new(FileStore::open(&path).expect("open"));
    let file = store.file().try_clone().expect("dup");
    // SAFETY: posix_fadvise on an open fd has no memory effects.
    let dropped = unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    assert_eq!(dropped, 0, "dropping the file's page cache");
    let options = Options::default().budget(BUDGET as u64);
    let mapping = Mapping::new(store, options).expect("map");
    let base = mapping.as_ptr();
    let mut peak = (0u64, 0u64); // (cache + Rss, cache) in KiB
    let read = |index: usize, peak: &mut (u64, u64), sample: bool| {
        // SAFETY: page `index` lies inside the mapping; a volatile read faults it in.
        let word = unsafe { std::ptr::read_volatile(base.add(index * PAGE).cast::<u64>()) };
        assert_eq!(word, pattern(1, index, 0), "page {index}");
        if sample {
            let cache = cached_kib(&file, SIZE);
            let cost = cache + common::mapping_rss_kib(base, SIZE);
            *peak = (peak.0.max(cost), peak.1.max(cache));
        }
    };
    for index in 0..SIZE / PAGE {
        read(index, &mut peak, index % 128 == 127);
    }
    let sequential = peak;
    let mut rng = 0x00ca_c4e5_u64;
    for n in 0..SIZE / PAGE {
        let index = (next(&mut rng) % (SIZE / PAGE) as u64) as usize;
        read(index, &mut peak, n % 128 == 127);
    }
    let stats = mapping.stats();
    mapping.close().expect("close");
    let limit = (BUDGET as u64 / 1024) * 11 / 10 + CACHE_SLACK_KIB;
    eprintln!(
        "page cache + Rss peak {} KiB (cache peak {} KiB; sequential phase {sequential:?}), \
         limit {limit} KiB; {stats:?}",
        peak.0, peak.1
    );
    assert!(stats.evictions > 0, "{stats:?}");
    assert!(
        peak.0 <= limit,
        "page cache + Rss reached {} KiB (cache {} KiB), over budget + 10% + slack {limit} KiB",
        peak.0,
        peak.1
    );
}

/// Under a budget the default reads a sequential scan 256 KiB a fault and random pages
/// 4 KiB a fault (`Granularity::SequentialAround`): a scan costs at most an eighth of the faults
/// (and of the store reads), and random reads bring in no neighbour to evict a page in use.
#[test]
fn under_a_budget_the_default_reads_a_scan_wide_and_random_pages_alone() {
    if !common::require_uffd() {
        return;
    }
    const SIZE: usize = 16 * MIB;
    let store = Arc::new(MemStore::new(SIZE as u64));
    let page = [7u8; PAGE];
    for index in 0..SIZE / PAGE {
        store.write_at((index * PAGE) as u64, &page).expect("fill");
    }
    let options = Options::default().budget((4 * MIB) as u64);
    let mapping = Mapping::new(store, options).expect("map");
    let mut byte = [0u8; 1];
    for index in 0..SIZE / PAGE {
        mapping.read_at(index * PAGE, &mut byte).expect("read");
    }
    let scan = mapping.stats();
    let mut rng = 0x5ca1_ab1e_u64;
    for _ in 0..1024 {
        // Pages 0..SIZE/2 were evicted by the scan's second half (the budget is 4 MiB).
        let index = (next(&mut rng) % (SIZE / PAGE / 2) as u64) as usize;
        mapping.read_at(index * PAGE, &mut byte).expect("read");
    }
    let random = mapping.stats();
    mapping.close().expect("close");
    let pages = (SIZE / PAGE) as u64;
    assert!(
        scan.read_faults <= pages / 8 && scan.fault_around_pages >= pages - pages / 8,
        "a scan reads a window a fault: {scan:?}"
    );
    let faults = random.read_faults - scan.read_faults;
    let around = random.fault_around_pages - scan.fault_around_pages;
    assert!(
        faults > 512 && around <= faults / 8,
        "random reads come in alone: {faults} faults brought {around} neighbours"
    );
}

/// Under a budget (`Granularity::SequentialAround`), a write to a Clean page that
/// continues a sequential write, ascending or descending, lifts the protection of the
/// Clean pages ahead of it to its window's edge: one write-protect fault a window, not a
/// page. Random writes are not lifted. Every page written reaches the store exactly, and
/// a lifted page the writes never reached is written back unchanged. Without the lift,
/// every page written is its own write-protect fault (`mkwrite_faults` 1,536).
#[test]
fn under_a_budget_a_sequential_write_over_clean_pages_is_one_fault_a_window() {
    if !common::require_uffd() {
        return;
    }
    const SIZE: usize = 8 * MIB;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.img");
    let store = Arc::new(FileStore::create(&path, SIZE as u64).expect("create"));
    store.write_at(0, &vec![7u8; SIZE]).expect("fill");
    // A budget the whole store fits under: nothing is evicted, so every write below meets
    // a Clean page.
    let mapping = Mapping::new(store, Options::default().budget((16 * MIB) as u64)).expect("map");
    let mut byte = [0u8; 1];
    for index in 0..SIZE / PAGE {
        mapping.read_at(index * PAGE, &mut byte).expect("read");
    }
    let write = |index: usize| {
        let byte = [index as u8 ^ 0x5a];
        mapping.write_at(index * PAGE + 9, &byte).expect("write");
    };
    // Pages 0..1024 ascending, pages 2048..1536 descending: 24 windows of 64 pages.
    let sequential: Vec<usize> = (0..1024).chain((1536..2048).rev()).collect();
    let random: Vec<usize> = (0..256).map(|i| 1024 + (i * 97) % 512).collect();
    let before = mapping.stats();
    sequential.iter().for_each(|&index| write(index));
    let between = mapping.stats();
    random.iter().for_each(|&index| write(index));
    let after = mapping.stats();
    let faults = between.mkwrite_faults - before.mkwrite_faults;
    // A run's first pages, then one fault a window (its first page lifts the rest).
    assert!(
        faults <= 24 + 4 && between.write_around_pages >= 1536 - 28,
        "{faults} write-protect faults for 1536 sequential writes: {between:?}"
    );
    // Random writes almost never have two written neighbours next to them.
    let faults = after.mkwrite_faults - between.mkwrite_faults;
    assert!(
        faults >= 200,
        "{faults} faults for 256 random writes: {after:?}"
    );
    let written: Vec<usize> = sequential.into_iter().chain(random).collect();
    mapping.flush().expect("flush");
    mapping.close().expect("close");
    let bytes = common::read_file(&path);
    for index in 0..SIZE / PAGE {
        let expected = if written.contains(&index) {
            index as u8 ^ 0x5a
        } else {
            7
        };
        assert_eq!(bytes[index * PAGE + 9], expected, "page {index}");
        assert!(
            bytes[index * PAGE + 10..(index + 1) * PAGE]
                .iter()
                .all(|&b| b == 7)
        );
    }
}
