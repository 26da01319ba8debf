//! The 2 MiB path and fault-around: one fault per range or window, the kernel's fallback
//! rules (each with correct data), exact 4 KiB dirty tracking inside huge ranges, and the
//! window between moving a huge page in and write-protecting it.

mod common;

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use udax::{
    FileStore, Granularity, Mapping, MemStore, Options, Resolution, Stats, Store, StoreError,
};

const PAGE: usize = 4096;
const HUGE: usize = 2 << 20;
const HUGE_PAGES: usize = HUGE / PAGE;

/// The byte the written stores hold at `offset`: different in every page.
fn pattern(offset: usize) -> u8 {
    ((offset / PAGE) * 31 + offset % 253) as u8
}

/// Writes `pattern` over `range` of the file at `path`.
fn write_pattern(path: &Path, range: std::ops::Range<usize>) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    let mut at = range.start;
    while at < range.end {
        let end = (at + HUGE).min(range.end);
        let bytes: Vec<u8> = (at..end).map(pattern).collect();
        file.write_all_at(&bytes, at as u64).expect("write");
        at = end;
    }
}

/// A sparse file store of `len` bytes with `pattern` written over the `data` ranges.
fn file_store(
    dir: &Path,
    len: usize,
    data: impl IntoIterator<Item = std::ops::Range<usize>>,
) -> Arc<FileStore> {
    let path = dir.join("store.img");
    drop(FileStore::create(&path, len as u64).expect("create"));
    for range in data {
        write_pattern(&path, range);
    }
    Arc::new(FileStore::open(&path).expect("open"))
}

fn huge() -> Options {
    Options::default().granularity(Granularity::Huge)
}

/// Reads one byte of every page with a volatile load.
fn touch_every_page(mapping: &Mapping) {
    for page in 0..mapping.len() / PAGE {
        // SAFETY: inside the live mapping.
        unsafe { std::ptr::read_volatile(mapping.as_ptr().add(page * PAGE)) };
    }
}

/// Stores one byte (atomically: the handler may race it) at `offset` of the mapping.
fn poke(mapping: &Mapping, offset: usize, value: u8) {
    assert!(offset < mapping.len());
    // SAFETY: inside the live mapping; AtomicU8 has no alignment needs.
    let byte = unsafe { &*(mapping.as_ptr().add(offset) as *const AtomicU8) };
    byte.store(value, Ordering::Relaxed);
}

/// Asserts that the mapping reads `expected(offset)` everywhere.
fn assert_reads(mapping: &Mapping, expected: impl Fn(usize) -> u8) {
    // SAFETY: no thread writes the mapping while the slice lives.
    let bytes = unsafe { mapping.as_slice() };
    if let Some(at) = (0..bytes.len()).find(|&i| bytes[i] != expected(i)) {
        panic!(
            "byte {at} (page {}) reads {:#x}, expected {:#x}",
            at / PAGE,
            bytes[at],
            expected(at)
        );
    }
}

/// Faults served, of any kind.
fn faults(stats: &Stats) -> u64 {
    stats.zero_faults
        + stats.read_faults
        + stats.write_faults
        + stats.mkwrite_faults
        + stats.zero_to_dirty
}

/// Sums a `field:` (in KiB) of /proc/self/smaps over the VMAs overlapping `ptr..ptr+len`.
fn smaps_kib(ptr: *const u8, len: usize, field: &str) -> u64 {
    let (start, end) = (ptr as usize, ptr as usize + len);
    let mut text = String::new();
    File::open("/proc/self/smaps")
        .and_then(|mut f| f.read_to_string(&mut text))
        .expect("read smaps");
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
            total += kib.trim().parse::<u64>().expect("smaps number");
        }
    }
    total
}

/// Whether each of `pages` pages from `address` is uffd-write-protected (pagemap bit 57).
fn write_protected(address: usize, pages: usize) -> Vec<bool> {
    let file = File::open("/proc/self/pagemap").expect("open pagemap");
    let mut words = vec![0u8; pages * 8];
    file.read_exact_at(&mut words, (address / PAGE * 8) as u64)
        .expect("read pagemap");
    words
        .chunks_exact(8)
        .map(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) & (1 << 57) != 0)
        .collect()
}

#[test]
fn reading_a_hole_store_takes_one_fault_per_2mib_and_no_memory() {
    if !common::require_uffd() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let len = 64 << 20;
    let store = file_store(dir.path(), len, None);
    let mapping = Mapping::new(store, huge()).expect("map");
    touch_every_page(&mapping);
    let stats = mapping.stats();
    let pages = (len / PAGE) as u64;
    assert_eq!(faults(&stats), pages / 512, "{stats:?}");
    assert_eq!(
        (stats.zero_faults, stats.huge_faults, stats.huge_fallbacks),
        (pages / 512, pages / 512, 0),
        "{stats:?}"
    );
    let rss = common::mapping_rss_kib(mapping.as_ptr(), mapping.len());
    assert!(rss < 1024, "Rss {rss} KiB after reading 64 MiB of holes");
    assert_reads(&mapping, |_| 0);
    mapping.close().expect("close");
}

/// The default granularity (DESIGN.md, section 4): 2 MiB for a mapping without a budget,
/// 64 KiB for a scan under its own budget, 4 KiB under a shared one, whatever else the options say; set, it is kept.
#[test]
fn the_default_granularity_is_2mib_without_a_budget_and_narrower_under_one() {
    if !common::require_uffd() {
        return;
    }
    let len = 4 << 20;
    let huge_faults = |options: Options| {
        let store: Arc<dyn Store> = Arc::new(MemStore::new(len as u64));
        let mapping = Mapping::new(store, options).expect("map");
        touch_every_page(&mapping);
        let stats = mapping.stats();
        mapping.close().expect("close");
        (stats.huge_faults, stats.zero_faults)
    };
    let ranges = (len / udax::HUGE_PAGE_SIZE) as u64;
    assert_eq!(huge_faults(Options::default()), (ranges, ranges), "default");
    // Under its own budget: no 2 MiB fault, and a scan takes 64 KiB a fault
    // (`Granularity::SequentialAround`); under a shared one 4 KiB (no room is reserved).
    let (huge, zero) = huge_faults(Options::default().budget(1 << 20));
    assert!(
        huge == 0 && zero <= (len / PAGE / 8) as u64,
        "under a budget: {huge} huge faults, {zero} zero faults"
    );
    let shared = udax::SharedBudget::new(1 << 20).expect("budget");
    let shared = Options::default().shared_budget(&shared);
    assert_eq!(
        huge_faults(shared),
        (0, (len / PAGE) as u64),
        "shared budget"
    );
    // Without read-ahead, whose ranges would spare the scan most of its faults.
    let set = Options::default()
        .granularity(Granularity::Page)
        .read_ahead(false);
    assert_eq!(huge_faults(set), (0, (len / PAGE) as u64), "set to 4 KiB");
}

/// Reads a written 64 MiB store at 2 MiB; returns the AnonHugePages (KiB) afterwards.
fn read_written_store(options: Options) -> u64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let len = 64 << 20;
    let store = file_store(dir.path(), len, Some(0..len));
    let mapping = Mapping::new(store, options).expect("map");
    touch_every_page(&mapping);
    let stats = mapping.stats();
    let pages = (len / PAGE) as u64;
    assert_eq!(faults(&stats), pages / 512, "{stats:?}");
    assert_eq!(
        (stats.read_faults, stats.huge_faults, stats.huge_fallbacks),
        (pages / 512, pages / 512, 0),
        "{stats:?}"
    );
    assert_reads(&mapping, pattern);
    let anon_huge = smaps_kib(mapping.as_ptr(), mapping.len(), "AnonHugePages");
    // Reading changed nothing: a flush writes nothing back.
    mapping.flush().expect("flush");
    assert_eq!(mapping.stats().pages_written_back, 0);
    mapping.close().expect("close");
    anon_huge
}

#[test]
fn reading_a_written_store_takes_one_fault_per_2mib_with_the_right_bytes() {
    if !common::require_uffd() {
        return;
    }
    let anon_huge = read_written_store(huge());
    // Whether the kernel let us map true huge pages is recorded, not required.
    eprintln!(
        "2 MiB data path: AnonHugePages {anon_huge} KiB of 65536 KiB: true huge mappings {}",
        if anon_huge > 0 {
            "achieved"
        } else {
            "not achieved (copied)"
        }
    );
}

/// In-thread resolution fills a 2 MiB data range as handler threads do: read into its
/// mapping's staging buffer, then moved in as one huge page (or copied where none can be
/// had): one fault per 2 MiB (without the buffer, a signal handler had a page of scratch
/// and every data fault fell back to 4 KiB: 512 faults a range).
#[test]
fn in_thread_a_written_store_is_one_fault_per_2mib() {
    if !common::require_uffd() {
        return;
    }
    let in_thread = huge().resolution(udax::Resolution::InThread);
    let anon_huge = read_written_store(in_thread);
    // As for handler threads, whether the kernel gave true huge mappings is recorded.
    eprintln!("in-thread 2 MiB data path: AnonHugePages {anon_huge} KiB of 65536 KiB");
}

/// Where no huge page can be had, a 2 MiB range is still one fault, copied in.
#[test]
fn without_huge_pages_a_range_is_copied_in_one_fault() {
    if !common::require_uffd() {
        return;
    }
    let anon_huge = read_written_store(huge().huge_move(false));
    assert_eq!(anon_huge, 0, "copies make no huge mappings");
}

#[test]
fn mixed_extents_fall_back_to_4k() {
    if !common::require_uffd() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Range 0: one data page in holes. Range 1: all data.
    let data = [7 * PAGE..8 * PAGE, HUGE..2 * HUGE];
    let store = file_store(dir.path(), 2 * HUGE, data.clone());
    let mapping = Mapping::new(store, huge()).expect("map");
    touch_every_page(&mapping);
    let stats = mapping.stats();
    // Range 0: the first fault finds mixed extents, each later one a present entry.
    assert_eq!(
        (stats.huge_fallbacks, stats.huge_faults),
        (512, 1),
        "{stats:?}"
    );
    assert_eq!(
        (stats.zero_faults, stats.read_faults),
        (511, 2),
        "{stats:?}"
    );
    assert_reads(&mapping, |i| match data.iter().any(|r| r.contains(&i)) {
        true => pattern(i),
        false => 0,
    });
    mapping.close().expect("close");
}

#[test]
fn a_range_crossing_the_end_of_the_mapping_falls_back_to_4k() {
    if !common::require_uffd() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let len = 3 << 20;
    let store = file_store(dir.path(), len, Some(0..len));
    let mapping = Mapping::new(store, huge()).expect("map");
    touch_every_page(&mapping);
    let stats = mapping.stats();
    assert_eq!(
        (stats.huge_faults, stats.huge_fallbacks, stats.read_faults),
        (1, 256, 257),
        "{stats:?}"
    );
    assert_reads(&mapping, pattern);
    mapping.close().expect("close");
}

/// A range with one 4 KiB entry present stays 4 KiB even once the store is uniform again:
/// a 4 KiB fault never upgrades to 2 MiB.
#[test]
fn a_present_entry_makes_the_range_fall_back() {
    if !common::require_uffd() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = file_store(dir.path(), 2 * HUGE, Some(0..PAGE));
    let mapping = Mapping::new(store.clone(), huge()).expect("map");
    let mut byte = [0u8; 1];
    mapping.read_at(100 * PAGE, &mut byte).expect("read");
    assert_eq!(mapping.stats().huge_fallbacks, 1, "mixed extents");
    store.punch_hole(0, PAGE as u64).expect("punch");
    mapping.read_at(200 * PAGE, &mut byte).expect("read");
    let stats = mapping.stats();
    assert_eq!(
        (stats.huge_fallbacks, stats.huge_faults, stats.zero_faults),
        (2, 0, 2),
        "{stats:?}"
    );
    // The other range is untouched and uniform: 2 MiB.
    mapping.read_at(HUGE + 5, &mut byte).expect("read");
    assert_eq!(mapping.stats().huge_faults, 1);
    assert_reads(&mapping, |_| 0);
    mapping.close().expect("close");
}

/// A store whose reads touching one page wait `delay`, then fail unless `slow_only`
/// (`MemStore` otherwise).
struct FailingReads {
    inner: MemStore,
    bad_page: u64,
    delay: std::time::Duration,
    slow_only: bool,
    /// Reads that failed so far.
    failed: std::sync::atomic::AtomicU64,
}

impl Store for FailingReads {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn extent(&self, offset: u64) -> Result<udax::Extent, StoreError> {
        self.inner.extent(offset)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let bad = self.bad_page * PAGE as u64;
        if offset < bad + PAGE as u64 && offset + buf.len() as u64 > bad {
            std::thread::sleep(self.delay);
        }
        if offset < bad + PAGE as u64 && offset + buf.len() as u64 > bad && !self.slow_only {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let source = std::io::Error::from_raw_os_error(libc::EIO);
            return Err(StoreError::Io {
                op: "read",
                offset,
                source,
            });
        }
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), StoreError> {
        self.inner.write_at(offset, buf)
    }
    fn allocate(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        self.inner.allocate(offset, len)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        self.inner.punch_hole(offset, len)
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync()
    }
}

/// A read error in a neighbour's block falls back, and the faulting page is served alone.
#[test]
fn a_store_error_elsewhere_in_the_range_falls_back_and_serves_the_page() {
    if !common::require_uffd() {
        return;
    }
    let bytes: Vec<u8> = (0..HUGE).map(pattern).collect();
    let store = Arc::new(FailingReads {
        inner: MemStore::with_data(&bytes),
        bad_page: 300,
        delay: std::time::Duration::ZERO,
        slow_only: false,
        failed: Default::default(),
    });
    let mapping = Mapping::new(store, huge()).expect("map");
    let mut page = vec![0u8; PAGE];
    mapping.read_at(10 * PAGE, &mut page).expect("read");
    assert!(
        page.iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(10 * PAGE + i))
    );
    let stats = mapping.stats();
    assert_eq!(
        (stats.huge_fallbacks, stats.huge_faults, stats.read_faults),
        (1, 0, 1),
        "{stats:?}"
    );
    assert_eq!(stats.sigbus_delivered, 0);
    mapping.close().expect("close");
}

/// One-byte writes spread over huge ranges (read first, or written while Empty, data and
/// hole) are written back exactly: one page each, not 512.
#[test]
fn flush_after_one_byte_writes_writes_back_exactly_the_touched_pages() {
    if !common::require_uffd() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Ranges 0..3 data, range 3 hole.
    let store = file_store(dir.path(), 4 * HUGE, Some(0..3 * HUGE));
    let path = store.path().to_path_buf();
    let mapping = Mapping::new(store, huge()).expect("map");
    // Ranges 0 and 1 are read first (Clean, write-protected); 2 and 3 are Empty. Range 1
    // before range 0: not a sequential run, so nothing is read ahead.
    let mut byte = [0u8; 1];
    mapping.read_at(HUGE, &mut byte).expect("read");
    mapping.read_at(0, &mut byte).expect("read");
    let touched = [
        3 * PAGE + 1,
        700 * PAGE + 2,
        1100 * PAGE + 3,
        1600 * PAGE + 4,
    ];
    for &offset in &touched {
        poke(&mapping, offset, 0xee);
    }
    let stats = mapping.stats();
    assert_eq!(stats.huge_faults, 4, "{stats:?}");
    // Data ranges: one write-protect fault per page written. The hole range: one write
    // fault, the range installed writable (write-around), its other 511 pages unwritten.
    assert_eq!(
        (
            stats.mkwrite_faults,
            stats.write_faults,
            stats.zero_to_dirty
        ),
        (3, 1, 0),
        "{stats:?}"
    );
    assert_eq!(stats.write_around_pages, 511, "{stats:?}");
    mapping.flush().expect("flush");
    let stats = mapping.stats();
    assert_eq!(stats.pages_written_back, touched.len() as u64, "{stats:?}");
    assert_eq!(stats.unwritten_skipped, 511, "{stats:?}");
    let mut file = vec![0u8; 4 * HUGE];
    File::open(&path)
        .expect("open")
        .read_exact_at(&mut file, 0)
        .expect("read");
    let expected = |i: usize| match (touched.contains(&i), i < 3 * HUGE) {
        (true, _) => 0xee,
        (false, true) => pattern(i),
        (false, false) => 0,
    };
    if let Some(at) = (0..file.len()).find(|&i| file[i] != expected(i)) {
        panic!(
            "file byte {at} is {:#x}, expected {:#x}",
            file[at],
            expected(at)
        );
    }
    assert_reads(&mapping, expected);
    mapping.close().expect("close");
}

/// A write to one page of a huge Clean range lifts the protection of that page only: the
/// other 511 stay protected and Clean (each later write is its own fault). Same for Zero
/// without write-around.
#[test]
fn a_write_into_a_huge_range_unprotects_only_its_page() {
    if !common::require_uffd() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = file_store(dir.path(), 2 * HUGE, Some(0..HUGE));
    let mapping = Mapping::new(store, huge().write_around(false)).expect("map");
    let base = mapping.as_ptr() as usize;
    touch_every_page(&mapping);
    let huge_before = smaps_kib(mapping.as_ptr(), mapping.len(), "AnonHugePages");
    assert!(write_protected(base, 2 * HUGE_PAGES).iter().all(|&wp| wp));
    poke(&mapping, 5 * PAGE, 1);
    poke(&mapping, HUGE + 9 * PAGE, 2);
    for (range, page) in [(0, 5), (1, 9)] {
        let bits = write_protected(base + range * HUGE, HUGE_PAGES);
        let open: Vec<usize> = (0..HUGE_PAGES).filter(|&p| !bits[p]).collect();
        assert_eq!(open, vec![page], "range {range}: unprotected pages");
    }
    let stats = mapping.stats();
    assert_eq!(
        (stats.mkwrite_faults, stats.zero_to_dirty),
        (1, 1),
        "{stats:?}"
    );
    poke(&mapping, 6 * PAGE, 3);
    assert_eq!(
        mapping.stats().mkwrite_faults,
        2,
        "page 6 was still protected"
    );
    mapping.flush().expect("flush");
    assert_eq!(mapping.stats().pages_written_back, 3);
    eprintln!(
        "AnonHugePages {huge_before} KiB before the write, {} KiB after (the split)",
        smaps_kib(mapping.as_ptr(), mapping.len(), "AnonHugePages")
    );
    mapping.close().expect("close");
}

/// With huge dirty tracking, a write dirties its whole range (one writable huge mapping),
/// flush writes back 512 pages, and the next write re-dirties the whole range in one fault.
#[test]
fn huge_dirty_tracking_dirties_whole_ranges() {
    if !common::require_uffd() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = file_store(dir.path(), 3 * HUGE, Some(0..HUGE));
    let path = store.path().to_path_buf();
    let mapping = Mapping::new(store, huge().huge_dirty(true)).expect("map");
    poke(&mapping, 7, 0xaa); // data range, Empty
    poke(&mapping, HUGE + 8, 0xbb); // hole range, Empty
    let mut byte = [0u8; 1];
    mapping.read_at(2 * HUGE, &mut byte).expect("read"); // hole range, read: Zero
    poke(&mapping, 2 * HUGE + PAGE, 0xcc); // ...then written
    let stats = mapping.stats();
    assert_eq!(
        (stats.huge_faults, stats.write_faults, stats.mkwrite_faults),
        (4, 3, 0),
        "{stats:?}"
    );
    // A writable install of a hole allocates it first, whole (2 MiB each for the two hole
    // ranges), so that a full disk fails the access rather than the flush.
    let allocated = std::fs::metadata(&path).expect("stat").blocks() * 512;
    assert!(
        allocated >= 3 * HUGE as u64,
        "{allocated} bytes allocated before the flush"
    );
    let anon_huge = smaps_kib(mapping.as_ptr(), mapping.len(), "AnonHugePages");
    eprintln!("huge dirty: AnonHugePages {anon_huge} KiB for 3 written ranges");
    mapping.flush().expect("flush");
    assert_eq!(mapping.stats().pages_written_back, 3 * 512);
    poke(&mapping, 9 * PAGE, 0xdd);
    let stats = mapping.stats();
    assert_eq!(
        (stats.mkwrite_faults, stats.huge_faults),
        (1, 5),
        "{stats:?}"
    );
    mapping.flush().expect("flush");
    assert_eq!(mapping.stats().pages_written_back, 4 * 512);
    let expected = |i: usize| match i {
        7 => 0xaa,
        i if i == HUGE + 8 => 0xbb,
        i if i == 2 * HUGE + PAGE => 0xcc,
        i if i == 9 * PAGE => 0xdd,
        i if i < HUGE => pattern(i),
        _ => 0,
    };
    let mut file = vec![0u8; 3 * HUGE];
    File::open(&path)
        .expect("open")
        .read_exact_at(&mut file, 0)
        .expect("read");
    assert!((0..file.len()).all(|i| file[i] == expected(i)), "file");
    assert_reads(&mapping, expected);
    mapping.close().expect("close");
}

/// Deterministic form of the move window: while the handler holds it open (the huge page
/// moved in, writable, not yet protected), another thread's store lands without a fault.
/// The compare after the protection must see it, and flush must write it back.
#[test]
fn a_store_inside_the_move_window_is_flushed() {
    if !common::require_uffd() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = file_store(dir.path(), HUGE, Some(0..HUGE));
    let path = store.path().to_path_buf();
    let delay = std::time::Duration::from_millis(300);
    let mapping = Mapping::new(store, huge().zero_window_delay(delay)).expect("map");
    let base = mapping.as_ptr() as usize;
    std::thread::scope(|scope| {
        // SAFETY: inside the mapping, which outlives the scope.
        let reader = scope.spawn(|| unsafe { std::ptr::read_volatile(base as *const u8) });
        // Wait until the range is mapped (the move is done) but the window still open.
        let started = std::time::Instant::now();
        while smaps_kib(base as *const u8, HUGE, "Rss") == 0 {
            assert!(
                started.elapsed() < 10 * delay,
                "the range was never moved in"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // Moved in and not yet protected: the store below lands in the window (unless
        // this thread stalls for the whole delay right here).
        let moved_in = smaps_kib(base as *const u8, HUGE, "AnonHugePages") > 0
            && write_protected(base + 3 * PAGE, 1) == [false];
        poke(&mapping, 3 * PAGE + 5, 0x77);
        mapping.flush().expect("flush");
        assert_eq!(reader.join().expect("reader"), pattern(0));
        if moved_in {
            // The store landed while the huge page was writable: no fault served it.
            assert_eq!(
                mapping.stats().mkwrite_faults,
                0,
                "the store missed the window"
            );
        } else {
            eprintln!("no huge page in its window: the window was not exercised");
        }
    });
    let stats = mapping.stats();
    let mut found = [0u8; 1];
    File::open(&path)
        .expect("open")
        .read_exact_at(&mut found, (3 * PAGE + 5) as u64)
        .expect("read");
    assert_eq!(found[0], 0x77, "the store into the move window was lost");
    assert_eq!(stats.pages_written_back, 1, "{stats:?}");
    mapping.close().expect("close");
}

#[test]
fn fault_around_reads_a_window_per_fault() {
    if !common::require_uffd() {
        return;
    }
    let in_thread = udax::Resolution::InThread;
    for resolution in [udax::Resolution::HandlerThreads, in_thread] {
        fault_around_reads_a_window_per_fault_with(resolution);
    }
}

/// The test above, with faults served by `resolution` (in-thread: through the mapping's
/// staging buffer; without it, data windows fell back to one page per fault).
fn fault_around_reads_a_window_per_fault_with(resolution: udax::Resolution) {
    let dir = tempfile::tempdir().expect("tempdir");
    let len = 4 << 20;
    // Alternate 64 KiB of data and 64 KiB of hole.
    let data: Vec<_> = (0..len)
        .step_by(128 << 10)
        .map(|at| at..at + (64 << 10))
        .collect();
    let store = file_store(dir.path(), len, data.clone());
    let options = Options::default()
        .granularity(Granularity::FaultAround(64 << 10))
        .resolution(resolution);
    let mapping = Mapping::new(store, options).expect("map");
    assert_eq!(mapping.resolution(), resolution);
    touch_every_page(&mapping);
    let stats = mapping.stats();
    let pages = (len / PAGE) as u64;
    assert_eq!(faults(&stats), pages / 16, "{resolution:?}: {stats:?}");
    assert_eq!(stats.zero_faults, stats.read_faults, "{stats:?}");
    assert_eq!(stats.fault_around_pages, pages - pages / 16, "{stats:?}");
    let rss = common::mapping_rss_kib(mapping.as_ptr(), mapping.len());
    assert!(rss <= 2048 + 64, "Rss {rss} KiB: holes must cost nothing");
    assert_reads(&mapping, |i| match data.iter().any(|r| r.contains(&i)) {
        true => pattern(i),
        false => 0,
    });
    mapping.close().expect("close");
}

/// Fault-around never hands a present page to a batched ioctl: it stops there.
#[test]
fn fault_around_stops_at_present_pages() {
    if !common::require_uffd() {
        return;
    }
    let store = Arc::new(MemStore::new(32 * PAGE as u64));
    let options = Options::default().granularity(Granularity::FaultAround(64 << 10));
    let mapping = Mapping::new(store, options).expect("map");
    poke(&mapping, 3 * PAGE, 9); // a 4 KiB write fault: page 3 present
    let mut byte = [0u8; 1];
    mapping.read_at(0, &mut byte).expect("read"); // installs 0..3
    assert_eq!(mapping.stats().fault_around_pages, 2);
    mapping.read_at(8 * PAGE, &mut byte).expect("read"); // installs 4..16
    let stats = mapping.stats();
    assert_eq!(
        (
            stats.fault_around_pages,
            stats.zero_faults,
            stats.write_faults
        ),
        (2 + 11, 2, 1),
        "{stats:?}"
    );
    touch_every_page(&mapping);
    assert_eq!(
        mapping.stats().zero_faults,
        3,
        "the second window: one fault"
    );
    assert_reads(&mapping, |i| if i == 3 * PAGE { 9 } else { 0 });
    mapping.flush().expect("flush");
    assert_eq!(mapping.stats().pages_written_back, 1);
    mapping.close().expect("close");
}

/// PAGEMAP_SCAN (include/uapi/linux/fs.h): the regions of `address..address+len` that
/// have every category of `required`, as (first page, pages) relative to `address`.
fn scan(address: usize, len: usize, required: u64) -> Vec<(usize, usize)> {
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct PageRegion {
        start: u64,
        end: u64,
        categories: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct PmScanArg {
        size: u64,
        flags: u64,
        start: u64,
        end: u64,
        walk_end: u64,
        vec: u64,
        vec_len: u64,
        max_pages: u64,
        category_inverted: u64,
        category_mask: u64,
        category_anyof_mask: u64,
        return_mask: u64,
    }
    const PAGEMAP_SCAN: u64 = 0xc060_6610;
    let mut out = [PageRegion::default(); 512];
    let mut arg = PmScanArg {
        size: size_of::<PmScanArg>() as u64,
        start: address as u64,
        end: (address + len) as u64,
        vec: out.as_mut_ptr() as u64,
        vec_len: out.len() as u64,
        category_mask: required,
        return_mask: required,
        ..Default::default()
    };
    let pagemap = File::open("/proc/self/pagemap").expect("open pagemap");
    use std::os::fd::AsRawFd;
    // SAFETY: PAGEMAP_SCAN reads and writes `arg` and at most `vec_len` regions of `out`.
    let found = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
    assert!(
        found >= 0,
        "PAGEMAP_SCAN: {}",
        std::io::Error::last_os_error()
    );
    out[..found as usize]
        .iter()
        .map(|r| {
            let first = (r.start as usize - address) / PAGE;
            (first, (r.end - r.start) as usize / PAGE)
        })
        .collect()
}

const PRESENT: u64 = 1 << 3;
const PFNZERO: u64 = 1 << 5;
const IS_HUGE: u64 = 1 << 6;

/// Reads a 2 MiB hole store, writes one page of it, flushes and checks the file;
/// `counted` is the expected (`huge_zero_faults`, `huge_zero_fallbacks`): (1, 0) when the
/// range must be the huge zero page, else the 512 zero pages of the fallback.
fn one_hole_range(options: Options, counted: (u64, u64)) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.img");
    drop(FileStore::create(&path, HUGE as u64).expect("create"));
    let store = Arc::new(FileStore::open(&path).expect("open"));
    // Without write-around, so that the write below is a write-protect fault on the zero
    // range (splitting a huge zero PMD) and not a whole-range install.
    let options = options.granularity(Granularity::Huge).write_around(false);
    let mapping = Mapping::new(store, options).expect("map");
    let base = mapping.as_ptr() as usize;
    for page in 0..HUGE_PAGES {
        // SAFETY: inside the live mapping.
        unsafe { std::ptr::read_volatile(mapping.as_ptr().add(page * PAGE)) };
    }
    let stats = mapping.stats();
    assert_eq!(faults(&stats), 1, "{stats:?}");
    assert_eq!((stats.zero_faults, stats.huge_faults), (1, 1), "{stats:?}");
    let huge = match counted {
        (1, 0) => vec![(0, HUGE_PAGES)],
        _ => vec![],
    };
    assert_eq!(
        (stats.huge_zero_faults, stats.huge_zero_fallbacks),
        counted,
        "{stats:?}"
    );
    let zero_huge = scan(base, HUGE, PRESENT | PFNZERO | IS_HUGE);
    assert_eq!(zero_huge, huge, "huge zero PMDs of the mapping");
    assert_eq!(scan(base, HUGE, PFNZERO), vec![(0, HUGE_PAGES)]);
    let rss = common::mapping_rss_kib(mapping.as_ptr(), mapping.len());
    assert_eq!(rss, 0, "Rss of a mapping holding only zero pages");
    assert!(write_protected(base, HUGE_PAGES).iter().all(|&wp| wp));
    // A write to page 7: a write-protect fault that splits the PMD; 511 pages stay Zero.
    poke(&mapping, 7 * PAGE + 3, 0xa5);
    let stats = mapping.stats();
    assert_eq!(
        (stats.zero_to_dirty, stats.resident_pages),
        (1, 1),
        "{stats:?}"
    );
    let open: Vec<usize> = (0..HUGE_PAGES)
        .filter(|&p| !write_protected(base, HUGE_PAGES)[p])
        .collect();
    assert_eq!(open, vec![7], "unprotected pages");
    let zero = scan(base, HUGE, PFNZERO);
    assert_eq!(zero, vec![(0, 7), (8, HUGE_PAGES - 8)], "zero pages");
    assert_reads(&mapping, |at| if at == 7 * PAGE + 3 { 0xa5 } else { 0 });
    mapping.flush().expect("flush");
    assert_eq!(mapping.stats().pages_written_back, 1);
    let stats = mapping.stats();
    assert_eq!(faults(&stats), 2, "no fault beyond the write: {stats:?}");
    mapping.close().expect("close");
    let store = FileStore::open(&path).expect("reopen");
    let extents: Vec<(bool, u64)> = [0, 7 * PAGE, 8 * PAGE]
        .into_iter()
        .map(|at| {
            let extent = store.extent(at as u64).expect("extent");
            (extent.kind == udax::ExtentKind::Data, extent.len)
        })
        .collect();
    let rest = (HUGE - 8 * PAGE) as u64;
    assert_eq!(
        extents,
        vec![(false, 7 * PAGE as u64), (true, PAGE as u64), (false, rest)],
        "the file's extents: one block allocated"
    );
    let mut byte = [0u8; 1];
    store.read_at(7 * PAGE as u64 + 3, &mut byte).expect("read");
    assert_eq!(byte[0], 0xa5);
}

/// With the huge zero page off (`Options::huge_zero_page(false)`), a 2 MiB hole range is
/// 512 zero pages in one fault, counted in `huge_zero_fallbacks`; a write dirties one page.
#[test]
fn a_hole_range_is_512_zero_pages_and_a_write_dirties_one_page() {
    if !common::require_uffd() {
        return;
    }
    let off = Options::default().huge_zero_page(false);
    one_hole_range(off.clone(), (0, 0));
    // In-thread mappings take the same 2 MiB path (huge-page moves too): counted alike.
    one_hole_range(off.resolution(udax::Resolution::InThread), (0, 0));
}

/// By default a 2 MiB hole range is one huge zero PMD (no memory, one fault) on a kernel
/// that moves it right; a write splits it and dirties exactly its page. On a kernel that
/// the gate or the self-test refuses, the fallback holds instead (counted).
#[test]
fn a_hole_range_is_one_huge_zero_page_and_a_write_dirties_one_page() {
    if !common::require_uffd() {
        return;
    }
    let available = udax::huge_zero_available();
    eprintln!("huge zero page available: {available}");
    let counted = if available { (1, 0) } else { (0, 1) };
    one_hole_range(Options::default(), counted);
    let in_thread = Options::default().resolution(udax::Resolution::InThread);
    one_hole_range(in_thread, counted);
}

/// Eviction over 2 MiB hole ranges: pages written into them are evicted (written back,
/// dropped 4 KiB at a time), the zero pages around them stay, and every byte reads back
/// right, in memory and in the file.
#[test]
fn eviction_of_pages_written_into_huge_zero_ranges_keeps_every_byte() {
    if !common::require_uffd() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let len = 8 * HUGE;
    let store = file_store(dir.path(), len, None);
    let options = huge().budget(64 << 10);
    let mapping = Mapping::new(store.clone(), options).expect("map");
    touch_every_page(&mapping);
    let written = |at: usize| at % (HUGE / 8) == 0;
    let value = |at: usize| (at / (HUGE / 8)) as u8 | 1;
    for at in (0..len).filter(|&at| written(at)) {
        poke(&mapping, at, value(at));
    }
    let stats = mapping.stats();
    assert!(stats.evicted_dirty > 0, "{stats:?}");
    assert!(stats.resident_pages <= 32, "{stats:?}");
    // A 2 MiB range does not fit a 64 KiB budget: no write-around, a fault per page.
    assert_eq!(stats.write_around_pages, 0, "{stats:?}");
    assert_reads(&mapping, |at| if written(at) { value(at) } else { 0 });
    mapping.flush().expect("flush");
    let mut bytes = vec![0u8; len];
    store.read_at(0, &mut bytes).expect("read");
    if let Some(at) = (0..len).find(|&at| bytes[at] != if written(at) { value(at) } else { 0 }) {
        panic!("store byte {at} is {:#x}", bytes[at]);
    }
    mapping.close().expect("close");
}

/// Write-around (the default at 2 MiB): a first write into a hole range, Empty or read as
/// zero pages, is one fault that installs the whole range writable and allocates only the
/// faulting page; the range's other pages are then written with no fault. Flush writes
/// back exactly the pages written with something other than zeros, leaves the rest a
/// hole in the file, and leaves those writable for the next flush to look at again.
#[test]
fn a_first_write_into_a_hole_range_writes_the_range_without_more_faults() {
    if !common::require_uffd() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = file_store(dir.path(), 3 * HUGE, None);
    let path = store.path().to_path_buf();
    let mapping = Mapping::new(store, huge()).expect("map");
    // Range 0 Empty, range 1 read first (zero pages), range 2 never touched.
    let mut byte = [0u8; 1];
    mapping.read_at(HUGE, &mut byte).expect("read");
    let written: Vec<usize> = (3..=100).chain([HUGE_PAGES + 9, HUGE_PAGES + 10]).collect();
    let value = |page: usize| (page % 251) as u8 | 1;
    for &page in &written {
        poke(&mapping, page * PAGE + 5, value(page));
    }
    poke(&mapping, 200 * PAGE, 0); // a store of zeros: the hole reads the same
    let stats = mapping.stats();
    assert_eq!(
        (faults(&stats), stats.zero_faults, stats.write_faults),
        (3, 1, 2),
        "a write fault per range written (and the read of range 1), none per page: {stats:?}"
    );
    assert_eq!(stats.write_around_pages, 2 * 511, "{stats:?}");
    // Only the two faulting pages were allocated (ext4 counts 4 KiB blocks).
    let allocated = std::fs::metadata(&path).expect("stat").blocks() * 512;
    assert!(
        allocated <= 4 * PAGE as u64,
        "{allocated} bytes allocated before the flush"
    );

    mapping.flush().expect("flush");
    let stats = mapping.stats();
    assert_eq!(stats.pages_written_back, written.len() as u64, "{stats:?}");
    assert_eq!(
        stats.unwritten_skipped,
        2 * HUGE_PAGES as u64 - written.len() as u64,
        "{stats:?}"
    );
    let reopened = FileStore::open(&path).expect("open");
    for (page, data) in [(3, true), (100, true), (101, false), (200, false)] {
        let extent = reopened.extent((page * PAGE) as u64).expect("extent");
        assert_eq!(extent.kind == udax::ExtentKind::Data, data, "page {page}");
    }
    // A page written back is protected again (its next write faults); an unwritten one is
    // still writable, and the next flush writes it.
    poke(&mapping, 5 * PAGE, 0xee);
    poke(&mapping, 300 * PAGE, 0xdd);
    let stats = mapping.stats();
    assert_eq!((faults(&stats), stats.mkwrite_faults), (4, 1), "{stats:?}");
    mapping.flush().expect("flush");
    assert_eq!(mapping.stats().pages_written_back, written.len() as u64 + 2);
    let expected = |at: usize| match (at / PAGE, at % PAGE) {
        (5, 0) => 0xee,
        (300, 0) => 0xdd,
        (page, 5) if written.contains(&page) => value(page),
        _ => 0,
    };
    assert_reads(&mapping, expected);
    mapping.close().expect("close");
    let mut file = vec![0u8; 3 * HUGE];
    File::open(&path)
        .expect("open")
        .read_exact_at(&mut file, 0)
        .expect("read");
    if let Some(at) = (0..file.len()).find(|&at| file[at] != expected(at)) {
        panic!(
            "file byte {at} is {:#x}, expected {:#x}",
            file[at],
            expected(at)
        );
    }
}

/// Stores into write-around pages racing flushes are never lost: a flush's comparison
/// follows its write-protect, so a store either is in the bytes compared (and written)
/// or faults and waits. A writer stores rising values into pages of two hole ranges and
/// a lifted data range (most of them never written before) while the main thread
/// flushes; the file ends with the last values.
#[test]
fn stores_racing_flushes_into_write_around_pages_are_kept() {
    if !common::require_uffd() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = file_store(dir.path(), 3 * HUGE, Some(2 * HUGE..3 * HUGE));
    let path = store.path().to_path_buf();
    let mapping = Arc::new(Mapping::new(store, huge()).expect("map"));
    poke(&mapping, 0, 1);
    poke(&mapping, HUGE, 1);
    let mut byte = [0u8; 1];
    mapping.read_at(2 * HUGE, &mut byte).expect("read");
    for page in 0..3 {
        poke(&mapping, 2 * HUGE + page * PAGE, 1); // the third lifts the data range
    }
    const ROUNDS: u8 = 120;
    let pages: Vec<usize> = (3..3 * HUGE_PAGES).step_by(7).collect();
    let flushed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (mapping, pages, flushed) = (mapping.clone(), pages.clone(), flushed.clone());
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            for round in 1..=ROUNDS {
                // Each round reaches a few more pages: some are first written mid-flush.
                let reach = pages.len() * round as usize / ROUNDS as usize;
                for &page in &pages[..reach] {
                    poke(&mapping, page * PAGE + 9, round);
                }
                // Paced by the flushes (a flush every two rounds), bounded in time.
                while flushed.load(Ordering::Relaxed) < round as usize / 2
                    && std::time::Instant::now() < deadline
                {
                    std::thread::yield_now();
                }
            }
        })
    };
    let mut flushes = 0;
    while !writer.is_finished() && flushes < 400 {
        mapping.flush().expect("flush");
        flushes += 1;
        flushed.store(flushes, Ordering::Relaxed);
    }
    writer.join().expect("writer");
    mapping.flush().expect("flush");
    let stats = mapping.stats();
    eprintln!("{flushes} flushes raced the writer; {stats:?}");
    assert_eq!(stats.write_around_pages, 3 * 511 - 2, "{stats:?}");
    let mut file = vec![0u8; 3 * HUGE];
    File::open(&path)
        .expect("open")
        .read_exact_at(&mut file, 0)
        .expect("read");
    for &page in &pages {
        let at = page * PAGE + 9;
        assert_eq!(
            file[at], ROUNDS,
            "page {page}: the file lost a store ({stats:?})"
        );
    }
    assert!(
        stats.unwritten_skipped > 0,
        "no flush met an unwritten page: {stats:?}"
    );
    assert!(flushes >= 10, "only {flushes} flushes raced the writer");
    Arc::into_inner(mapping)
        .expect("one owner")
        .close()
        .expect("close");
}

/// Write-around over data: a write that continues a sequential write (the two pages
/// before it Dirty) lifts the protection of the rest of its Clean 2 MiB range in one
/// fault; flush then writes only the lifted pages whose bytes differ from the store's,
/// and the others become Clean again (protected: their next write faults). Sparse writes
/// lift nothing: one fault per page, as without write-around.
#[test]
fn a_sequential_write_over_data_lifts_the_rest_of_the_range_and_flush_writes_what_changed() {
    if !common::require_uffd() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = file_store(dir.path(), 2 * HUGE, Some(0..2 * HUGE));
    let path = store.path().to_path_buf();
    let mapping = Mapping::new(store, huge()).expect("map");
    touch_every_page(&mapping);
    let changed = |at: usize| pattern(at) ^ 0xff;
    for page in 0..300 {
        poke(&mapping, page * PAGE + 1, changed(page * PAGE + 1));
    }
    poke(&mapping, 400 * PAGE + 1, pattern(400 * PAGE + 1)); // a store of the same byte
    for page in [HUGE_PAGES + 10, HUGE_PAGES + 20] {
        poke(&mapping, page * PAGE + 1, changed(page * PAGE + 1));
    }
    let stats = mapping.stats();
    assert_eq!(
        (stats.mkwrite_faults, stats.write_around_pages),
        (3 + 2, 509),
        "pages 0 and 1 fault alone, page 2 lifts 3..512 with it; range 1's sparse writes: {stats:?}"
    );
    mapping.flush().expect("flush");
    let stats = mapping.stats();
    assert_eq!(stats.pages_written_back, 300 + 2, "{stats:?}");
    assert_eq!(stats.unwritten_skipped, 512 - 300, "{stats:?}");
    poke(&mapping, 450 * PAGE + 1, changed(450 * PAGE + 1));
    assert_eq!(
        mapping.stats().mkwrite_faults,
        6,
        "page 450 is protected again"
    );
    mapping.flush().expect("flush");
    assert_eq!(mapping.stats().pages_written_back, 303);
    let written =
        |page: usize| page < 300 || [450, HUGE_PAGES + 10, HUGE_PAGES + 20].contains(&page);
    let expected = |at: usize| match at % PAGE {
        1 if written(at / PAGE) => changed(at),
        _ => pattern(at),
    };
    assert_reads(&mapping, expected);
    mapping.close().expect("close");
    let mut file = vec![0u8; 2 * HUGE];
    File::open(&path)
        .expect("open")
        .read_exact_at(&mut file, 0)
        .expect("read");
    if let Some(at) = (0..file.len()).find(|&at| file[at] != expected(at)) {
        panic!(
            "file byte {at} is {:#x}, expected {:#x}",
            file[at],
            expected(at)
        );
    }
}

/// Pages of `file` the page cache holds, by cachestat(2) (Linux 6.5+; `None` before).
fn cached_pages(file: &File) -> Option<u64> {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    let range = Range { off: 0, len: 0 }; // len 0: to the end of the file
    let mut stat = [0u64; 5];
    // SAFETY: cachestat(451) reads `range` and writes the five u64 of `stat`, both live and
    // laid out as <linux/mman.h>'s structs; the fd is open while `file` is borrowed.
    let ret = unsafe {
        libc::syscall(
            451,
            file.as_raw_fd(),
            &range as *const Range,
            stat.as_mut_ptr(),
            0,
        )
    };
    (ret == 0).then_some(stat[0])
}

/// Whether direct I/O can be tested in `dir`: a file there opens with O_DIRECT, read and
/// write, and its page cache can be dropped (cachestat saying so); not where the file
/// system is the page cache (tmpfs), where nothing goes around it.
fn direct_io_testable(dir: &Path) -> bool {
    let path = dir.join("cache-probe");
    let file = File::create(&path).expect("create");
    file.write_all_at(&[1; PAGE], 0).expect("write");
    file.sync_all().expect("fsync");
    // SAFETY: advice on an open descriptor; it touches no memory of ours.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path);
    let testable = direct.is_ok() && cached_pages(&file) == Some(0);
    std::fs::remove_file(&path).expect("remove");
    testable
}

/// A 2 MiB data fault of a range the page cache does not hold reads it around the cache
/// (O_DIRECT): the mapping holds the range, the store's file gains no cached page, so the
/// mapping costs the machine its own memory, not twice it. In handler mode and in-thread:
/// each reads into a page-aligned buffer, which a direct read needs.
#[test]
fn a_2_mib_read_fault_of_an_uncached_range_fills_no_page_cache() {
    if !common::require_uffd() {
        return;
    }
    let in_thread = huge().resolution(udax::Resolution::InThread);
    for options in [huge(), in_thread] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = file_store(dir.path(), 4 * HUGE, Some(0..4 * HUGE));
        let file = File::open(store.path()).expect("open");
        file.sync_all().expect("fsync");
        // SAFETY: advice on an open descriptor; it touches no memory of ours.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if !direct_io_testable(dir.path()) || cached_pages(&file) != Some(0) {
            eprintln!("skipped: no O_DIRECT or cachestat here, or the cache stays");
            return;
        }
        let mapping = Mapping::new(store, options).expect("map");
        // SAFETY: inside the live mapping.
        let byte = unsafe { std::ptr::read_volatile(mapping.as_ptr().add(2 * HUGE + 5)) };
        assert_eq!(byte, pattern(2 * HUGE + 5));
        let stats = mapping.stats();
        assert_eq!(
            (stats.huge_faults, stats.bytes_read),
            (1, HUGE as u64),
            "{stats:?}"
        );
        assert_eq!(
            cached_pages(&file),
            Some(0),
            "the fault filled the page cache"
        );
        assert_eq!(smaps_kib(mapping.as_ptr(), mapping.len(), "Rss"), 2048);
        mapping.close().expect("close");
    }
}

/// A flush writes a dirty 2 MiB range back around the page cache (O_DIRECT): the store's
/// file has no cached page after it, so the written range costs the machine the mapping's
/// memory only, and the file holds the bytes written. In handler mode and in-thread.
#[test]
fn a_flush_of_a_dirty_2_mib_range_fills_no_page_cache() {
    if !common::require_uffd() {
        return;
    }
    let in_thread = huge().resolution(udax::Resolution::InThread);
    for options in [huge(), in_thread] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = file_store(dir.path(), 4 * HUGE, None);
        let file = File::open(store.path()).expect("open");
        if !direct_io_testable(dir.path()) {
            eprintln!("skipped: no O_DIRECT or cachestat here, or the cache stays (tmpfs)");
            return;
        }
        let mapping = Mapping::new(store, options).expect("map");
        for offset in (HUGE..2 * HUGE).step_by(PAGE / 2) {
            poke(&mapping, offset, pattern(offset));
        }
        mapping.flush().expect("flush");
        let stats = mapping.stats();
        assert_eq!(stats.pages_written_back, HUGE_PAGES as u64, "{stats:?}");
        assert_eq!(
            cached_pages(&file),
            Some(0),
            "the flush filled the page cache"
        );
        mapping.close().expect("close");
        let mut bytes = Vec::new();
        (&file).read_to_end(&mut bytes).expect("read the file");
        assert!(
            (0..4 * HUGE).all(|i| {
                let poked = i / HUGE == 1 && i % (PAGE / 2) == 0;
                bytes[i] == if poked { pattern(i) } else { 0 }
            }),
            "the file holds other bytes"
        );
    }
}

/// Runs `access` on another thread, which holds the mapping meanwhile, and returns what
/// it returned; panics if that does not end within 20 s (a fault nobody wakes would hang
/// it).
fn within<T: Send + 'static>(
    mapping: &Arc<Mapping>,
    access: impl FnOnce(&Mapping) -> T + Send + 'static,
) -> T {
    let (done, finished) = std::sync::mpsc::channel();
    let mapping = Arc::clone(mapping);
    std::thread::spawn(move || {
        let result = access(&mapping);
        drop(mapping); // before saying so: the caller then owns the mapping alone
        let _ = done.send(result);
    });
    finished
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the access did not return: a fault was never woken")
}

/// Reads one byte of every page of ranges `ranges` in order, `within` 20 s.
fn touch_ranges_within(mapping: &Arc<Mapping>, ranges: std::ops::Range<usize>) {
    within(mapping, move |mapping| {
        for page in ranges.start * HUGE_PAGES..ranges.end * HUGE_PAGES {
            // SAFETY: inside the live mapping (`within` holds it).
            unsafe { std::ptr::read_volatile(mapping.as_ptr().add(page * PAGE)) };
        }
    });
}

/// Waits (at most 10 s) until `ready` holds of the mapping's counters; returns them.
fn stats_when(mapping: &Mapping, ready: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stats = mapping.stats();
        if ready(&stats) || std::time::Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Handler threads read a sequential run of 2 MiB read faults ahead
/// (`engine::read_ahead`), two ranges past its last fault and no further, installed as
/// read faults install them: data Clean and write-protected (a write is one mkwrite
/// fault, a flush writes that page only), with the store's bytes; a hole as zero pages,
/// nothing allocated. Without the read-ahead, nothing is ever read ahead and the first
/// wait below times out.
#[test]
fn a_sequential_run_is_read_ahead_two_ranges_past_its_last_fault() {
    if !common::require_uffd() {
        return;
    }
    for resolution in [Resolution::HandlerThreads, Resolution::InThread] {
        sequential_run_read_ahead(resolution);
    }
}

fn sequential_run_read_ahead(resolution: Resolution) {
    let dir = tempfile::tempdir().expect("tempdir");
    let len = 8 * HUGE;
    // Ranges 0..6 data, 6 and 7 holes.
    let store = file_store(dir.path(), len, Some(0..6 * HUGE));
    let path = store.path().to_path_buf();
    let options = huge().resolution(resolution);
    let mapping = Arc::new(Mapping::new(store, options).expect("map"));
    touch_ranges_within(&mapping, 0..2);
    // The fault on range 1 continued the run of range 0's: ranges 2 and 3 come in.
    let stats = stats_when(&mapping, |stats| stats.read_ahead_ranges >= 2);
    assert_eq!(
        stats.read_ahead_ranges, 2,
        "{resolution:?}: ranges 2 and 3 read ahead: {stats:?}"
    );
    std::thread::sleep(std::time::Duration::from_millis(50));
    let stats = mapping.stats();
    assert_eq!(
        (stats.read_ahead_ranges, stats.resident_pages),
        (2, 4 * HUGE_PAGES as u64),
        "{resolution:?}: nothing past two ranges ahead of the last fault: {stats:?}"
    );
    touch_ranges_within(&mapping, 2..8);
    let expected = |at: usize| if at < 6 * HUGE { pattern(at) } else { 0 };
    assert_reads(&mapping, expected);
    let stats = mapping.stats();
    assert_eq!(
        (stats.read_faults, stats.zero_faults),
        (6, 2),
        "{resolution:?}: each range once, by its fault or ahead of it: {stats:?}"
    );
    assert_eq!(
        (stats.huge_faults, stats.huge_fallbacks),
        (8, 0),
        "{stats:?}"
    );
    assert!(stats.read_ahead_ranges >= 2, "{stats:?}");
    let allocated = std::fs::metadata(&path).expect("stat").blocks() * 512;
    assert!(
        allocated <= 6 * HUGE as u64,
        "the hole ranges read ahead allocated"
    );
    // Read ahead means Clean and protected: one write is one mkwrite fault, one page back.
    poke(&mapping, 2 * HUGE + 7 * PAGE + 1, 0xa5);
    assert_eq!(mapping.stats().mkwrite_faults, 1);
    mapping.flush().expect("flush");
    assert_eq!(mapping.stats().pages_written_back, 1);
    Arc::into_inner(mapping)
        .expect("one owner")
        .close()
        .expect("close");
    let bytes = common::read_file(&path);
    let expected = |at: usize| {
        if at == 2 * HUGE + 7 * PAGE + 1 {
            0xa5
        } else {
            expected(at)
        }
    };
    if let Some(at) = (0..len).find(|&at| bytes[at] != expected(at)) {
        panic!("byte {at} of the store reads {:#x} after reopen", bytes[at]);
    }
}

/// Pages a mapping's read faults installed: their own, and the neighbours of their
/// windows and stretches read ahead.
fn installed_by_reads(stats: &Stats) -> u64 {
    stats.read_faults + stats.zero_faults + stats.fault_around_pages
}

/// At 4 KiB and 64 KiB granularity a sequential run of faults is read ahead too: the
/// fault on the page (window) after the first continues the run, and its handler
/// installs the rest of their 2 MiB range and the two ranges past it, as read faults
/// install them (data Clean and write-protected, holes as zero pages, nothing allocated),
/// and nothing past them. Two faults in one range that are not adjacent read nothing
/// ahead. Without the read-ahead at these granularities, the wait for ranges read ahead
/// times out (`read_ahead_ranges` 0); taking two faults in one range for a run reads
/// ahead after the first two (`read_ahead_ranges` 2 at the first check).
#[test]
fn a_sequential_run_of_pages_or_windows_is_read_ahead_two_ranges_past_its_own() {
    if !common::require_uffd() {
        return;
    }
    for resolution in [Resolution::HandlerThreads, Resolution::InThread] {
        for (granularity, step) in [
            (Granularity::Page, PAGE),
            (Granularity::FaultAround(64 << 10), 64 << 10),
        ] {
            run_of_pages_read_ahead(resolution, granularity, step);
        }
    }
}

fn run_of_pages_read_ahead(resolution: Resolution, granularity: Granularity, step: usize) {
    let case = format!("{resolution:?}, {granularity:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let len = 8 * HUGE;
    // Ranges 0 and 1 and the first half of range 2 data, the rest holes.
    let store = file_store(dir.path(), len, Some(0..5 * HUGE / 2));
    let path = store.path().to_path_buf();
    let blocks = || std::fs::metadata(&path).expect("stat").blocks();
    let allocated = blocks();
    let options = Options::default()
        .granularity(granularity)
        .resolution(resolution);
    let mapping = Arc::new(Mapping::new(store, options).expect("map"));
    let touch = |offsets: Vec<usize>| {
        within(&mapping, move |mapping| {
            for at in offsets {
                // SAFETY: inside the live mapping (`within` holds it).
                unsafe { std::ptr::read_volatile(mapping.as_ptr().add(at)) };
            }
        })
    };
    let window = (step / PAGE) as u64;
    // Not adjacent, in one range (a hole): no run.
    touch(vec![6 * HUGE, 6 * HUGE + 5 * step]);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let stats = mapping.stats();
    assert_eq!(
        (stats.read_ahead_ranges, installed_by_reads(&stats)),
        (0, 2 * window),
        "{case}: two faults apart read nothing ahead: {stats:?}"
    );
    // The next page (window) after the first: a run.
    touch(vec![0, step]);
    let stats = stats_when(&mapping, |stats| stats.read_ahead_ranges >= 3);
    assert_eq!(stats.read_ahead_ranges, 3, "{case}: {stats:?}");
    std::thread::sleep(std::time::Duration::from_millis(50));
    let stats = mapping.stats();
    assert_eq!(
        (stats.read_ahead_ranges, installed_by_reads(&stats)),
        (3, 3 * HUGE_PAGES as u64 + 2 * window),
        "{case}: ranges 0 to 2 in, nothing past them: {stats:?}"
    );
    assert_eq!(
        stats.resident_pages,
        5 * HUGE_PAGES as u64 / 2,
        "{case}: the data pages only are resident: {stats:?}"
    );
    assert_eq!(stats.huge_faults, 0, "{case}: {stats:?}");
    touch((0..len / PAGE).map(|page| page * PAGE).collect());
    let expected = |at: usize| if at < 5 * HUGE / 2 { pattern(at) } else { 0 };
    assert_reads(&mapping, expected);
    let stats = mapping.stats();
    assert_eq!(
        installed_by_reads(&stats),
        (len / PAGE) as u64,
        "{case}: every page installed once: {stats:?}"
    );
    assert_eq!(blocks(), allocated, "{case}: a read allocated");
    // Read ahead means Clean and protected: one write is one mkwrite fault, one page back.
    let at = HUGE + 7 * PAGE + 1;
    poke(&mapping, at, 0xa5);
    let stats = mapping.stats();
    assert_eq!(
        (stats.mkwrite_faults, stats.write_faults),
        (1, 0),
        "{case}: {stats:?}"
    );
    mapping.flush().expect("flush");
    assert_eq!(mapping.stats().pages_written_back, 1, "{case}");
    Arc::into_inner(mapping)
        .expect("one owner")
        .close()
        .expect("close");
    let bytes = common::read_file(&path);
    let expected = |i: usize| if i == at { 0xa5 } else { expected(i) };
    if let Some(i) = (0..len).find(|&i| bytes[i] != expected(i)) {
        panic!(
            "{case}: byte {i} of the store reads {:#x} after reopen",
            bytes[i]
        );
    }
}

/// A fault on a range being read ahead is left to the reader, who wakes it: with the
/// read of range 2 held up 300 ms, the run's access to range 2 faults while the range is
/// being read, and returns with the store's bytes once it is in. A failed read-ahead
/// installs nothing and the range's own fault serves the access (here: range 2's read
/// fails at page 300, so the fault falls back to 4 KiB and serves its page). Without the
/// reader's wake, the access never returns (20 s limit).
#[test]
fn a_fault_on_a_range_being_read_ahead_is_woken_by_the_reader() {
    if !common::require_uffd() {
        return;
    }
    for slow_only in [true, false] {
        let bytes: Vec<u8> = (0..4 * HUGE).map(pattern).collect();
        let store = Arc::new(FailingReads {
            inner: MemStore::with_data(&bytes),
            bad_page: (2 * HUGE_PAGES + 300) as u64,
            delay: std::time::Duration::from_millis(300),
            slow_only,
            failed: Default::default(),
        });
        let mapping = Arc::new(Mapping::new(store, huge()).expect("map"));
        touch_ranges_within(&mapping, 0..2);
        // Range 2 is being read ahead now (300 ms); its first page faults meanwhile.
        let page = within(&mapping, |mapping| {
            let mut page = vec![0u8; PAGE];
            mapping.read_at(2 * HUGE, &mut page).map(|()| page)
        })
        .expect("read");
        assert!(
            page.iter()
                .enumerate()
                .all(|(i, &b)| b == pattern(2 * HUGE + i))
        );
        let stats = mapping.stats();
        let (ahead, fallbacks) = if slow_only { (1, 0) } else { (0, 1) };
        assert_eq!(
            (stats.huge_fallbacks, stats.sigbus_delivered),
            (fallbacks, 0),
            "slow only: {slow_only}: {stats:?}"
        );
        assert!(
            stats.read_ahead_ranges >= ahead,
            "slow only: {slow_only}: {stats:?}"
        );
        Arc::into_inner(mapping)
            .expect("one owner")
            .close()
            .expect("close");
    }
}

/// At 4 KiB granularity a read-ahead whose stretch fails (a store error) gives up the
/// rest of its range, whose faults then report the error each on its own page, and the
/// range's other pages read right. Without the stop, the reader asks the failing store
/// again from every page of the stretch up to the bad one (301 failed reads, not 1).
#[test]
fn a_failed_read_ahead_stretch_is_not_read_again_page_by_page() {
    if !common::require_uffd() {
        return;
    }
    let bytes: Vec<u8> = (0..4 * HUGE).map(pattern).collect();
    let store = Arc::new(FailingReads {
        inner: MemStore::with_data(&bytes),
        bad_page: (2 * HUGE_PAGES + 300) as u64,
        delay: std::time::Duration::ZERO,
        slow_only: false,
        failed: Default::default(),
    });
    let options = Options::default().granularity(Granularity::Page);
    let served: Arc<dyn Store> = store.clone();
    let mapping = Arc::new(Mapping::new(served, options).expect("map"));
    // Pages 0 and 1: a run; ranges 0 (its rest), 1 and 2 are read ahead, and 2 fails.
    within(&mapping, |mapping| {
        for page in 0..2 {
            // SAFETY: inside the live mapping (`within` holds it).
            unsafe { std::ptr::read_volatile(mapping.as_ptr().add(page * PAGE)) };
        }
    });
    let stats = stats_when(&mapping, |stats| stats.read_ahead_ranges >= 2);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        stats.read_ahead_ranges, 2,
        "ranges 0 and 1 went in: {stats:?}"
    );
    assert_eq!(
        store.failed.load(Ordering::Relaxed),
        1,
        "the failed stretch was read once"
    );
    let at = 2 * HUGE + 10 * PAGE;
    let page = within(&mapping, move |mapping| {
        let mut page = vec![0u8; PAGE];
        mapping.read_at(at, &mut page).map(|()| page)
    })
    .expect("a page of the failed range away from the bad one");
    assert!(page.iter().enumerate().all(|(i, &b)| b == pattern(at + i)));
    Arc::into_inner(mapping)
        .expect("one owner")
        .close()
        .expect("close");
}

/// A run of writes is not read ahead: each range's first write installs it writable in
/// one fault (write-around), where a range read ahead would take a write-protect fault
/// more. Without the rule (writes continuing runs), ranges are read ahead as zero pages
/// first (3 of them: `read_ahead_ranges` and `zero_faults` 3, `huge_faults` 9), which each
/// first write then drops again.
#[test]
fn a_run_of_writes_is_not_read_ahead() {
    if !common::require_uffd() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = file_store(dir.path(), 6 * HUGE, None);
    let mapping = Mapping::new(store, huge()).expect("map");
    for page in 0..6 * HUGE_PAGES {
        poke(&mapping, page * PAGE, 1);
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    let stats = mapping.stats();
    assert_eq!(
        (
            stats.read_ahead_ranges,
            stats.write_faults,
            stats.zero_to_dirty
        ),
        (0, 6, 0),
        "{stats:?}"
    );
    mapping.close().expect("close");
}
