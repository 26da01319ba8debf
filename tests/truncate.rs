//! The backing file shrinks underneath: another process truncates a sparse `FileStore`'s
//! file to half while it is mapped. As with the kernel's mmap of a file, an access past
//! the new end gets SIGBUS (never zeros), flush never grows the file back, and dirty pages
//! past the end are dropped and reported once, by the next flush, with the new size.
//! Every case runs with handler threads and in-thread resolution.
//!
//! Accesses that must die of SIGBUS run in child processes (`common::run_child`).

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{
    PAGE, TempStore, assert_died_of_sigbus, child_case, peek, poke, read_file, run_child_with_env,
    say,
};
use udax::{DirtyTracking, Error, FileStore, Mapping, Options, Resolution, Store, StoreError};

/// Pages of the file before it shrinks, and after.
const PAGES: usize = 64;
const HALF: usize = PAGES / 2;
/// A data page past the new end (pages 32..48 hold data), and a hole past it.
const DATA_PAST_END: usize = 40;
const HOLE_PAST_END: usize = 56;

/// Who serves, and how writes are tracked.
fn modes() -> [(&'static str, Options); 4] {
    let in_thread = || Options::default().resolution(Resolution::InThread);
    let async_tracking = |options: Options| options.dirty_tracking(DirtyTracking::Async);
    [
        ("threads", Options::default()),
        ("threads-async", async_tracking(Options::default())),
        ("inthread", in_thread()),
        ("inthread-async", async_tracking(in_thread())),
    ]
}

fn options_for(mode: &str) -> Options {
    modes()
        .into_iter()
        .find(|(name, _)| *name == mode)
        .map(|(_, options)| options)
        .expect("a known mode")
}

/// A sparse file of `PAGES` pages: data (byte `page + 1` at the start of each page) in
/// pages 0..16 and 32..48, holes elsewhere.
fn sparse_file(path: &Path) -> Arc<FileStore> {
    let store = FileStore::create(path, (PAGES * PAGE) as u64).expect("create the store");
    for page in (0..16).chain(32..48) {
        let offset = (page * PAGE) as u64;
        store.write_at(offset, &[page as u8 + 1]).expect("write");
    }
    store.sync().expect("sync");
    Arc::new(store)
}

/// Shrinks the file at `path` to `pages` pages from outside the store: through another
/// open file, or with the `truncate` command (another process), as `how` says.
fn shrink(path: &Path, pages: usize, how: &str) {
    let size = (pages * PAGE) as u64;
    if how == "command" {
        let status = std::process::Command::new("truncate")
            .args(["-s", &size.to_string()])
            .arg(path)
            .status()
            .expect("running truncate(1)");
        assert!(status.success(), "truncate(1): {status}");
    } else {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .expect("a second handle on the store file");
        file.set_len(size).expect("set_len");
    }
    assert_eq!(file_len(path), size, "precondition: the file shrank");
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").len()
}

/// The child side: map, shrink, then touch a page past the new end, which must kill it.
fn run_access_child(case: &str) {
    let (mode, access) = case.split_once(':').expect("mode:access");
    common::no_core_dumps();
    let path = std::path::PathBuf::from(std::env::var("UDAX_PATH").expect("UDAX_PATH"));
    let store = sparse_file(&path);
    let mapping = Mapping::new(store, options_for(mode)).expect("map");
    // A page before the end, read before the shrink, keeps working.
    let ptr = mapping.as_ptr();
    // SAFETY: page 1 lies inside the live mapping.
    assert_eq!(unsafe { peek(ptr, PAGE) }, 2);
    let how = if mode.starts_with("inthread") {
        "command"
    } else {
        "set_len"
    };
    shrink(&path, HALF, how);
    // SAFETY: page 3 lies inside the live mapping.
    let before_end = unsafe { peek(ptr, 3 * PAGE) };
    assert_eq!(before_end, 4, "a page before the end");
    say(&format!("ACCESS {access}"));
    let page = if access == "read-data" {
        DATA_PAST_END
    } else {
        HOLE_PAST_END
    };
    if access == "write-hole" {
        // SAFETY: the page lies inside the live mapping; the store is meant to die of SIGBUS.
        unsafe { poke(ptr, page * PAGE, 7) };
    } else {
        // SAFETY: the page lies inside the live mapping; the load is meant to die of SIGBUS.
        let byte = unsafe { peek(ptr, page * PAGE) };
        say(&format!("SURVIVED read {byte}"));
    }
    let _ = mapping.flush();
    say(&format!("SURVIVED, file now {} bytes", file_len(&path)));
}

const ACCESS_TEST: &str = "an_access_past_the_new_end_gets_sigbus";

/// Reading a non-resident data page, reading a hole, and writing a hole past the new end
/// all die of SIGBUS, in every mode.
#[test]
fn an_access_past_the_new_end_gets_sigbus() {
    if let Some(case) = child_case() {
        run_access_child(&case);
        return;
    }
    if !common::require_uffd() {
        return;
    }
    for (mode, _) in modes() {
        for access in ["read-data", "read-hole", "write-hole"] {
            let tmp = TempStore::new("shrinks.img");
            let path = tmp.path.to_str().expect("a UTF-8 path");
            let case = format!("{mode}:{access}");
            let output = run_child_with_env(ACCESS_TEST, &case, &[("UDAX_PATH", path)]);
            assert_died_of_sigbus(&output, &format!("ACCESS {access}"));
            assert_eq!(
                file_len(&tmp.path),
                (HALF * PAGE) as u64,
                "{case}: the access must not grow the file back"
            );
        }
    }
}

/// Dirty pages on both sides of the new end: flush writes those before it, drops those
/// past it without growing the file, reports the drop once with the new size, then
/// returns Ok; the pages before the end keep their bytes after reopening.
#[test]
fn flush_drops_dirty_pages_past_the_new_end_once_and_never_grows_the_file() {
    if !common::require_uffd() {
        return;
    }
    for (mode, options) in modes() {
        let tmp = TempStore::new("shrinks.img");
        let mapping = Mapping::new(sparse_file(&tmp.path), options).expect("map");
        // Before the end: a data page and a hole. Past it: a data page and a hole.
        for page in [2, 20, DATA_PAST_END, HOLE_PAST_END] {
            mapping
                .write_at(page * PAGE + 1, &[0xA0 | page as u8])
                .expect("write");
        }
        shrink(&tmp.path, HALF, "set_len");
        match mapping.flush() {
            Err(Error::Truncated { size, pages }) => {
                assert_eq!(size, (HALF * PAGE) as u64, "{mode}: the new size");
                assert_eq!(pages, 2, "{mode}: the dirty pages past the end");
            }
            other => panic!("{mode}: expected Error::Truncated, got {other:?}"),
        }
        assert_eq!(
            file_len(&tmp.path),
            (HALF * PAGE) as u64,
            "{mode}: flush grew the file"
        );
        mapping
            .write_at(3 * PAGE + 1, &[0xA3])
            .expect("write before the end");
        mapping
            .flush()
            .unwrap_or_else(|e| panic!("{mode}: second flush: {e}"));
        assert_eq!(
            file_len(&tmp.path),
            (HALF * PAGE) as u64,
            "{mode}: flush grew the file"
        );
        drop(mapping);

        let bytes = read_file(&tmp.path);
        assert_eq!(bytes.len(), HALF * PAGE, "{mode}: the file after close");
        for (page, first, second) in [(2, 3, 0xA2), (3, 4, 0xA3), (20, 0, 0xB4)] {
            assert_eq!(
                (bytes[page * PAGE], bytes[page * PAGE + 1]),
                (first, second),
                "{mode}: page {page} after reopen"
            );
        }
    }
}

/// Under a budget, eviction writes dirty pages back on its own: past the new end it must
/// drop them rather than grow the file, and the next flush reports the drop.
#[test]
fn eviction_past_the_new_end_drops_instead_of_growing_the_file() {
    if !common::require_uffd() {
        return;
    }
    let tmp = TempStore::new("shrinks.img");
    let options = Options::default().budget(16 * PAGE as u64);
    let mapping = Mapping::new(sparse_file(&tmp.path), options).expect("map");
    for page in HALF..PAGES {
        mapping
            .write_at(page * PAGE + 2, &[9])
            .expect("write past the coming end");
    }
    shrink(&tmp.path, HALF, "command");
    // Faults before the end push the dirty pages past it out of the budget.
    for page in 0..HALF {
        let mut byte = [0u8; 1];
        mapping
            .read_at(page * PAGE, &mut byte)
            .expect("read before the end");
    }
    assert!(
        mapping.stats().evicted_dirty > 0,
        "precondition: dirty pages were evicted"
    );
    assert_eq!(
        file_len(&tmp.path),
        (HALF * PAGE) as u64,
        "eviction grew the file"
    );
    let first = mapping.flush();
    assert!(
        matches!(first, Err(Error::Truncated { size, .. }) if size == (HALF * PAGE) as u64),
        "expected Error::Truncated naming the new size, got {first:?}"
    );
    mapping.flush().expect("the drop is reported once");
    assert_eq!(
        file_len(&tmp.path),
        (HALF * PAGE) as u64,
        "flush grew the file"
    );
}

/// The store itself: past the new end, extent, read, write and allocate fail with
/// `BeyondEnd` naming the new size, the remembered data run included; the page holding
/// an unaligned end reads as the file up to it, then zeros.
#[test]
fn the_store_answers_beyond_end_after_a_shrink() {
    let tmp = TempStore::new("shrinks.img");
    let store = sparse_file(&tmp.path);
    // Remember the data run 32..48.
    assert_eq!(
        store
            .extent((DATA_PAST_END * PAGE) as u64)
            .expect("extent")
            .kind,
        udax::ExtentKind::Data
    );
    let size = (HALF * PAGE + 100) as u64;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&tmp.path)
        .expect("open")
        .set_len(size)
        .expect("set_len");
    let beyond = |r: Result<(), StoreError>| matches!(r, Err(StoreError::BeyondEnd { size: s, .. }) if s == size);
    let past = (DATA_PAST_END * PAGE) as u64;
    let mut buf = vec![0u8; PAGE];
    assert!(
        beyond(store.read_at(past, &mut buf)),
        "read of the remembered run"
    );
    assert!(
        beyond(store.extent(past).map(drop)),
        "extent of the remembered run"
    );
    assert!(
        beyond(store.extent((HOLE_PAST_END * PAGE) as u64).map(drop)),
        "extent of a hole"
    );
    assert!(beyond(store.write_at(past, &buf)), "write");
    assert!(
        beyond(store.allocate((HOLE_PAST_END * PAGE) as u64, PAGE as u64)),
        "allocate"
    );
    assert_eq!(store.current_len().expect("current_len"), size);
    assert_eq!(file_len(&tmp.path), size, "nothing grew the file");
    // The page holding the end: readable, zeros past the end; writes stop at the end.
    store
        .write_at((HALF * PAGE) as u64, &[5u8; PAGE])
        .expect("write the end page");
    assert_eq!(
        file_len(&tmp.path),
        size,
        "a write of the end page grew the file"
    );
    store
        .read_at((HALF * PAGE) as u64, &mut buf)
        .expect("read the end page");
    assert!(buf[..100].iter().all(|&b| b == 5) && buf[100..].iter().all(|&b| b == 0));
}
