//! Writeback: flush writes exactly the pages dirtied since the last flush and re-protects
//! them (the next write faults once more); dropping or closing a mapping writes back
//! what is dirty (DESIGN.md section 6, invariants 3, 4 and 5).

mod common;

use std::sync::Arc;

use common::{Model, PAGE, TempStore, poke, read_file};
use udax::{FileStore, Granularity, Mapping, Options, Stats, Store};

/// The 4 KiB fault table: one page a fault (the default granularity is 2 MiB; tests/huge.rs
/// has that path and the default's choice).
fn map(store: &Arc<FileStore>) -> Mapping {
    let store: Arc<dyn Store> = store.clone();
    // No read-ahead: the counters below are the 4 KiB fault table's, a fault a page.
    let options = Options::default()
        .granularity(Granularity::Page)
        .read_ahead(false);
    Mapping::new(store, options).expect("Mapping::new")
}

/// Writes one byte in each page of `pages` (twice, at two places: the second write must
/// not fault) and records it in the model.
fn write_pages(mapping: &Mapping, model: &mut Model, pages: &[usize], round: u8) {
    let ptr = mapping.as_ptr();
    for &p in pages {
        for (k, at) in [
            p * PAGE + round as usize * 8,
            p * PAGE + PAGE - 1 - round as usize,
        ]
        .into_iter()
        .enumerate()
        {
            let value = (p as u8)
                .wrapping_mul(31)
                .wrapping_add(round)
                .wrapping_add(k as u8)
                | 1;
            // SAFETY: `at` lies in page `p` of the live mapping; one thread accesses it.
            unsafe { poke(ptr, at, value) };
            model.write(at, &[value]);
        }
    }
}

fn delta(after: &Stats, before: &Stats) -> [u64; 5] {
    [
        after.zero_faults - before.zero_faults,
        after.read_faults - before.read_faults,
        after.write_faults - before.write_faults,
        after.mkwrite_faults - before.mkwrite_faults,
        after.zero_to_dirty - before.zero_to_dirty,
    ]
}

/// Test 6. Flush writes back exactly the pages written since the previous flush; a write
/// to a flushed (now clean, write-protected) page costs exactly one mkwrite fault; a flush
/// with nothing dirty writes nothing.
#[test]
fn flush_writes_exactly_the_pages_dirtied_since_the_last_flush() {
    if !common::require_uffd() {
        return;
    }
    const LEN: usize = 8 << 20;
    let pages = LEN / PAGE;
    let tmp = TempStore::new("flush.img");
    let store = Arc::new(FileStore::create(&tmp.path, LEN as u64).expect("FileStore::create"));
    let mapping = map(&store);
    let mut model = Model::zeroed(LEN);

    let first: Vec<usize> = (0..pages).filter(|p| p % 3 == 0).collect();
    let second: Vec<usize> = (0..pages).filter(|p| p % 5 == 0).collect();
    let overlap = second.iter().filter(|&&p| p % 3 == 0).count() as u64;
    let (k, j) = (first.len() as u64, second.len() as u64);

    write_pages(&mapping, &mut model, &first, 1);
    let s0 = mapping.stats();
    assert_eq!(
        s0.write_faults, k,
        "one fault per page, none for the second byte: {s0:?}"
    );
    assert_eq!(
        s0.pages_written_back, 0,
        "nothing is written back before a flush: {s0:?}"
    );
    mapping.flush().expect("first flush");
    let s1 = mapping.stats();
    assert_eq!(s1.pages_written_back, k, "first flush: {s1:?}");
    assert_eq!(s1.bytes_written, k * PAGE as u64, "first flush: {s1:?}");
    assert_eq!(s1.flushes, 1);
    model.assert_matches(&read_file(&tmp.path), "file after the first flush");

    write_pages(&mapping, &mut model, &second, 2);
    let s2 = mapping.stats();
    assert_eq!(
        delta(&s2, &s1),
        [0, 0, j - overlap, overlap, 0],
        "[zero, read, write, mkwrite, zero_to_dirty] faults of the second round: each \
         flushed page costs one mkwrite fault, each new page one write fault"
    );
    mapping.flush().expect("second flush");
    let s3 = mapping.stats();
    assert_eq!(
        s3.pages_written_back - s1.pages_written_back,
        j,
        "second flush: {s3:?}"
    );
    assert_eq!(
        s3.bytes_written - s1.bytes_written,
        j * PAGE as u64,
        "{s3:?}"
    );
    model.assert_matches(&read_file(&tmp.path), "file after the second flush");

    mapping.flush().expect("flush with nothing dirty");
    let s4 = mapping.stats();
    assert_eq!(
        s4.pages_written_back, s3.pages_written_back,
        "a clean flush wrote pages"
    );
    assert_eq!(
        s4.bytes_written, s3.bytes_written,
        "a clean flush wrote bytes"
    );
    assert_eq!(s4.flushes, 3);
    assert_eq!(delta(&s4, &s3), [0; 5], "flush itself must not fault");

    // Every page written so far is clean again: rewriting them all costs one mkwrite each.
    let all: Vec<usize> = (0..pages).filter(|p| p % 3 == 0 || p % 5 == 0).collect();
    write_pages(&mapping, &mut model, &all, 3);
    let s5 = mapping.stats();
    assert_eq!(
        delta(&s5, &s4),
        [0, 0, 0, all.len() as u64, 0],
        "third round: {s5:?}"
    );
    assert_eq!(
        s5.bytes_read, 0,
        "no page of this test was ever read from the store"
    );
    mapping.flush().expect("third flush");
    let s6 = mapping.stats();
    assert_eq!(
        s6.pages_written_back - s5.pages_written_back,
        all.len() as u64
    );
    model.assert_matches(&read_file(&tmp.path), "file after the third flush");
    mapping.close().expect("close");
}

/// Test 7. Dropping a mapping without flushing writes its dirty pages back.
#[test]
fn drop_writes_back_dirty_pages() {
    if !common::require_uffd() {
        return;
    }
    const LEN: usize = 4 << 20;
    let pages = LEN / PAGE;
    let tmp = TempStore::new("drop.img");
    let store = Arc::new(FileStore::create(&tmp.path, LEN as u64).expect("FileStore::create"));
    let mapping = map(&store);
    let mut model = Model::zeroed(LEN);
    let dirty: Vec<usize> = (0..pages).filter(|p| p % 7 == 2).collect();
    write_pages(&mapping, &mut model, &dirty, 1);
    mapping
        .write_at(LEN - 5, b"tail!")
        .expect("write_at the last bytes");
    model.write(LEN - 5, b"tail!");
    assert_eq!(mapping.stats().pages_written_back, 0);
    drop(mapping);
    drop(store);
    model.assert_matches(&read_file(&tmp.path), "file after dropping the mapping");
}

/// Test 7, second half. close() of a clean mapping succeeds and writes nothing; close()
/// of a dirty one writes back and succeeds.
#[test]
fn close_of_clean_and_dirty_mappings_returns_ok() {
    if !common::require_uffd() {
        return;
    }
    const LEN: usize = 1 << 20;
    let tmp = TempStore::new("close.img");
    let mut model = Model::zeroed(LEN);
    let store = Arc::new(FileStore::create(&tmp.path, LEN as u64).expect("FileStore::create"));

    let mapping = map(&store);
    write_pages(&mapping, &mut model, &[0, 5, 255], 1);
    mapping.close().expect("close of a dirty mapping");
    model.assert_matches(&read_file(&tmp.path), "file after close");

    let mapping = map(&store);
    let mut buf = vec![0u8; LEN];
    mapping
        .read_at(0, &mut buf)
        .expect("read_at of the whole mapping");
    model.assert_matches(&buf, "read_at after reopening");
    let stats = mapping.stats();
    assert_eq!(stats.read_faults, 3, "three data pages: {stats:?}");
    assert_eq!(
        stats.zero_faults,
        (LEN / PAGE) as u64 - 3,
        "the rest are holes: {stats:?}"
    );
    mapping.close().expect("close of a clean mapping");
    model.assert_matches(&read_file(&tmp.path), "file after closing a clean mapping");

    let mapping = map(&store);
    mapping.flush().expect("flush of an untouched mapping");
    assert_eq!(mapping.stats().pages_written_back, 0);
    mapping.close().expect("close of an untouched mapping");
}
