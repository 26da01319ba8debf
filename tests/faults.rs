//! The 4 KiB fault policy, seen from outside: which fault each first access costs, what
//! it costs in memory and store I/O, and that the bytes land (DESIGN.md section 6,
//! invariants 1, 2, 3, 5 and 6).

mod common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use common::{PAGE, TempStore, assert_bytes_eq, mapping_rss_kib, peek, poke};
use udax::{FileStore, Granularity, Mapping, Options, Stats, Store};

/// 512-byte blocks the file occupies on disk.
fn blocks(path: &Path) -> u64 {
    std::fs::metadata(path)
        .expect("stat of the store file")
        .blocks()
}

/// The fault counters of a snapshot, for "no fault happened" comparisons.
fn faults(s: &Stats) -> [u64; 5] {
    [
        s.zero_faults,
        s.read_faults,
        s.write_faults,
        s.mkwrite_faults,
        s.zero_to_dirty,
    ]
}

/// Copies the mapping out with ordinary loads.
fn contents(mapping: &Mapping) -> Vec<u8> {
    // SAFETY: the mapping is alive and `len()` bytes long for the whole borrow, and no
    // thread writes to it while the slice exists (these tests are single-threaded; the
    // handler only installs pages, which never changes bytes already readable).
    unsafe { std::slice::from_raw_parts(mapping.as_ptr(), mapping.len()) }.to_vec()
}

/// A hole-only file store of `len` bytes in a fresh temporary directory.
fn hole_store(name: &str, len: usize) -> (TempStore, Arc<FileStore>) {
    let tmp = TempStore::new(name);
    let store = FileStore::create(&tmp.path, len as u64).expect("FileStore::create");
    assert_eq!(
        blocks(&tmp.path),
        0,
        "precondition: a freshly created store file allocates nothing"
    );
    (tmp, Arc::new(store))
}

/// The 4 KiB fault table: one page a fault (the default granularity is 2 MiB; tests/huge.rs
/// has that path and the default's choice), no read-ahead (tests/read_ahead.rs has it: a
/// run of faults would be read ahead of and its later pages never fault).
fn map(store: &Arc<FileStore>) -> Mapping {
    let store: Arc<dyn Store> = store.clone();
    let options = Options::default()
        .granularity(Granularity::Page)
        .read_ahead(false);
    Mapping::new(store, options).expect("Mapping::new")
}

/// Test 2. Reading every page of a 256 MiB all-hole file maps the shared zero page: one
/// zero fault per page, no store read, no block allocated, (almost) no resident memory.
#[test]
fn reading_holes_maps_the_zero_page_without_memory_or_allocation() {
    if !common::require_uffd() {
        return;
    }
    const LEN: usize = 256 << 20;
    let pages = LEN / PAGE;
    let (tmp, store) = hole_store("holes.img", LEN);
    let mapping = map(&store);
    assert_eq!(mapping.len(), LEN);
    let ptr = mapping.as_ptr();

    let mut nonzero = 0usize;
    for p in 0..pages {
        // SAFETY: `p * PAGE + (p * 131) % PAGE < LEN`, inside the live mapping.
        let byte = unsafe { peek(ptr, p * PAGE + (p * 131) % PAGE) };
        nonzero += usize::from(byte != 0);
    }
    assert_eq!(nonzero, 0, "holes must read as zeros");

    let stats = mapping.stats();
    assert_eq!(
        stats.zero_faults, pages as u64,
        "one zero fault per page: {stats:?}"
    );
    assert_eq!(
        stats.read_faults, 0,
        "a hole is never read from the store: {stats:?}"
    );
    assert_eq!(stats.write_faults, 0, "{stats:?}");
    assert_eq!(stats.zero_to_dirty, 0, "{stats:?}");
    assert_eq!(
        stats.bytes_read, 0,
        "reading holes must not read the store: {stats:?}"
    );
    assert_eq!(
        stats.resident_pages, 0,
        "zero pages cost no memory: {stats:?}"
    );

    assert!(
        contents(&mapping).iter().all(|&b| b == 0),
        "every byte of a hole reads as zero"
    );
    assert_eq!(
        faults(&mapping.stats()),
        faults(&stats),
        "reading pages already mapped must not fault again"
    );

    let rss = mapping_rss_kib(ptr, LEN);
    assert!(
        rss < 1024,
        "reading 256 MiB of holes made {rss} KiB resident; the zero page costs none"
    );
    assert_eq!(
        blocks(&tmp.path),
        0,
        "reading holes allocated blocks in the store file (invariant 1)"
    );
    assert!(
        matches!(store.allocated_bytes(), None | Some(0)),
        "the store reports {:?} bytes allocated after only reads",
        store.allocated_bytes()
    );

    // Positive control for the Rss reader: 512 written pages (2 MiB) must show up.
    for p in 0..512 {
        // SAFETY: inside the mapping; this thread is the only accessor.
        unsafe { poke(ptr, p * PAGE, 1) };
    }
    assert_eq!(mapping.stats().zero_to_dirty, 512);
    let rss = mapping_rss_kib(ptr, LEN);
    assert!(
        rss >= 2048,
        "2 MiB of written pages show only {rss} KiB Rss: the Rss reader (or the mapping) is wrong"
    );
    mapping.close().expect("close");
}

/// Test 3. The first write to a hole is exactly one fault that leaves the page writable
/// (a second write costs nothing), reads nothing from the store, and flush lands it.
#[test]
fn first_write_to_a_hole_is_one_fault_and_flush_lands_it() {
    if !common::require_uffd() {
        return;
    }
    const LEN: usize = 64 << 20;
    let pages = LEN / PAGE;
    let (tmp, store) = hole_store("writes.img", LEN);
    let mapping = map(&store);
    let ptr = mapping.as_ptr();
    let mut model = common::Model::zeroed(LEN);

    for p in 0..pages {
        let at = p * PAGE + (p * 7) % PAGE;
        let value = (p % 251) as u8 + 1;
        // SAFETY: `at < LEN`; this thread is the only accessor.
        unsafe { poke(ptr, at, value) };
        model.write(at, &[value]);
    }
    let stats = mapping.stats();
    assert_eq!(
        stats.write_faults, pages as u64,
        "one write fault per page: {stats:?}"
    );
    assert_eq!(stats.zero_faults, 0, "{stats:?}");
    assert_eq!(stats.read_faults, 0, "{stats:?}");
    assert_eq!(stats.zero_to_dirty, 0, "{stats:?}");
    assert_eq!(stats.mkwrite_faults, 0, "{stats:?}");
    assert_eq!(
        stats.bytes_read, 0,
        "a write to a hole must not read the store: {stats:?}"
    );
    let rss = mapping_rss_kib(ptr, LEN);
    assert!(
        rss >= (pages * PAGE / 1024) as u64,
        "{pages} written pages but only {rss} KiB resident"
    );

    for p in 0..pages {
        let at = p * PAGE + (p * 7 + 1) % PAGE;
        let value = (p % 253) as u8 + 2;
        // SAFETY: as above.
        unsafe { poke(ptr, at, value) };
        model.write(at, &[value]);
    }
    assert_eq!(
        faults(&mapping.stats()),
        faults(&stats),
        "a second write to a dirty page must not fault (it was installed writable)"
    );
    model.assert_matches(&contents(&mapping), "mapping after writes");

    mapping.flush().expect("flush");
    let after = mapping.stats();
    assert_eq!(after.pages_written_back, pages as u64, "{after:?}");
    assert_eq!(after.flushes, 1, "{after:?}");
    assert_eq!(after.bytes_written, LEN as u64, "{after:?}");
    model.assert_matches(&common::read_file(&tmp.path), "file after flush");
    assert!(
        blocks(&tmp.path) > 0,
        "the written pages must be allocated in the file"
    );
    mapping.close().expect("close");
}

/// Test 4. A write to a page mapped to the zero page is one write-protect fault that
/// replaces the zero page with a private page (zero_to_dirty), never a write into the
/// shared zero page: each page keeps only its own byte, and no written page still maps
/// the zero page's frame (invariant 2).
#[test]
fn write_after_read_of_a_hole_replaces_the_zero_page() {
    if !common::require_uffd() {
        return;
    }
    const LEN: usize = 32 << 20;
    let pages = LEN / PAGE;
    let (tmp, store) = hole_store("zero-to-dirty.img", LEN);
    let mapping = map(&store);
    let ptr = mapping.as_ptr();

    for p in 0..pages {
        // SAFETY: inside the mapping; this thread is the only accessor.
        assert_eq!(unsafe { peek(ptr, p * PAGE) }, 0);
    }
    assert_eq!(mapping.stats().zero_faults, pages as u64);

    let before = common::pagemap_shows_pfns().then(|| pfns(ptr, pages));
    let zero_pfn = before.as_ref().map(|before| {
        let first = before[0].expect("a read hole page is present in pagemap");
        let shared = before.iter().filter(|&&pfn| pfn == Some(first)).count();
        assert_eq!(
            shared, pages,
            "every read hole must map the one shared zero page ({shared} of {pages} do)"
        );
        first
    });

    let mut model = common::Model::zeroed(LEN);
    for p in 0..pages {
        let value = (p % 255) as u8 + 1;
        // SAFETY: inside the mapping; this thread is the only accessor.
        unsafe { poke(ptr, p * PAGE + PAGE / 2, value) };
        model.write(p * PAGE + PAGE / 2, &[value]);
    }
    let stats = mapping.stats();
    assert_eq!(
        stats.zero_to_dirty, pages as u64,
        "one zero->dirty fault per page: {stats:?}"
    );
    assert_eq!(stats.write_faults, 0, "the pages were not Empty: {stats:?}");
    assert_eq!(stats.mkwrite_faults, 0, "{stats:?}");
    assert_eq!(stats.read_faults, 0, "{stats:?}");
    assert_eq!(stats.zero_faults, pages as u64, "{stats:?}");
    model.assert_matches(&contents(&mapping), "mapping after writes over zero pages");

    if let Some(zero_pfn) = zero_pfn {
        let after = pfns(ptr, pages);
        let still_zero = after.iter().filter(|&&pfn| pfn == Some(zero_pfn)).count();
        assert_eq!(
            still_zero, 0,
            "written pages still map the zero page (invariant 2)"
        );
        let mut distinct: Vec<_> = after.iter().flatten().collect();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            pages,
            "every written page needs its own frame"
        );
    } else {
        eprintln!("note: /proc/self/pagemap hides PFNs here; the zero-pfn checks did not run");
    }

    mapping.flush().expect("flush");
    assert_eq!(mapping.stats().pages_written_back, pages as u64);
    model.assert_matches(&common::read_file(&tmp.path), "file after flush");
    mapping.close().expect("close");
}

/// The PFNs of `pages` pages from `ptr` (None where nothing is present).
fn pfns(ptr: *const u8, pages: usize) -> Vec<Option<u64>> {
    (0..pages)
        .map(|p| common::pagemap_pfn(ptr as usize + p * PAGE))
        .collect()
}

/// Test 5. Data pages are read from the store once and installed clean and
/// write-protected: the first write to each is one mkwrite fault with no further store read.
#[test]
fn read_of_data_then_write_is_one_mkwrite_fault_without_rereading() {
    if !common::require_uffd() {
        return;
    }
    const LEN: usize = 16 << 20;
    let pages = LEN / PAGE;
    let tmp = TempStore::new("data.img");
    let pattern: Vec<u8> = (0..LEN)
        .map(|i| ((i / 7) as u8 ^ (i >> 12) as u8) | 1)
        .collect();
    {
        let file = std::fs::File::create(&tmp.path).expect("creating the data file");
        file.write_all_at(&pattern, 0)
            .expect("pwrite of the pattern");
        file.sync_all().expect("fsync of the pattern");
    }
    let store = Arc::new(FileStore::open(&tmp.path).expect("FileStore::open"));
    assert_eq!(store.len(), LEN as u64);
    let mapping = map(&store);
    let ptr = mapping.as_ptr();

    for p in 0..pages {
        let at = p * PAGE + (p * 13) % PAGE;
        // SAFETY: inside the mapping; this thread is the only accessor.
        assert_eq!(unsafe { peek(ptr, at) }, pattern[at], "byte {at}");
    }
    let read = mapping.stats();
    assert_eq!(
        read.read_faults, pages as u64,
        "one read fault per data page: {read:?}"
    );
    assert_eq!(read.zero_faults, 0, "{read:?}");
    assert_eq!(read.write_faults, 0, "{read:?}");
    assert_eq!(
        read.bytes_read, LEN as u64,
        "each page read from the store once: {read:?}"
    );
    assert_bytes_eq(&contents(&mapping), &pattern, "mapping of data pages");

    let mut model = common::Model {
        bytes: pattern.clone(),
    };
    for p in 0..pages {
        let at = p * PAGE + (p * 29) % PAGE;
        let value = !pattern[at];
        // SAFETY: inside the mapping; this thread is the only accessor.
        unsafe { poke(ptr, at, value) };
        model.write(at, &[value]);
    }
    let written = mapping.stats();
    assert_eq!(
        written.mkwrite_faults, pages as u64,
        "one mkwrite per clean page: {written:?}"
    );
    assert_eq!(written.write_faults, 0, "{written:?}");
    assert_eq!(written.zero_to_dirty, 0, "{written:?}");
    assert_eq!(written.read_faults, pages as u64, "{written:?}");
    assert_eq!(
        written.bytes_read, read.bytes_read,
        "mkwrite must not read the store again: {written:?}"
    );
    model.assert_matches(&contents(&mapping), "mapping after writes");

    mapping.flush().expect("flush");
    let flushed = mapping.stats();
    assert_eq!(flushed.pages_written_back, pages as u64, "{flushed:?}");
    assert_eq!(flushed.bytes_written, LEN as u64, "{flushed:?}");
    model.assert_matches(&common::read_file(&tmp.path), "file after flush");
    mapping.close().expect("close");
}
