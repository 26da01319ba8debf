//! Errors stick, nothing hangs: a failed store sync leaves its pages Dirty (or, for pages
//! no longer in memory, fails every later flush), and a handler thread whose poll or read
//! of the userfaultfd fails still answers every fault (SIGBUS where it cannot serve) and
//! has the next flush report it.
//!
//! The store here forgets every write since the last good sync when a sync fails, as
//! Linux does after a writeback error (`FaultyStore::fail_sync`). Handler failures are
//! injected process-wide, so those cases run in child processes.

mod common;

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{CHILD_ENV, FaultyStore, PAGE, assert_child_passed, assert_died_of_sigbus, say};
use udax::{Error, Mapping, MemStore, Options, Store, StoreError};

const PAGES: usize = 64;

fn store() -> Arc<FaultyStore<MemStore>> {
    Arc::new(FaultyStore::new(MemStore::new((PAGES * PAGE) as u64)))
}

/// The first byte of page `page` in the store itself.
fn stored(store: &FaultyStore<MemStore>, page: usize) -> u8 {
    let mut byte = [0u8; 1];
    store
        .inner
        .read_at((page * PAGE) as u64, &mut byte)
        .expect("read the store");
    byte[0]
}

fn is_sync_error(result: &Result<(), Error>) -> bool {
    matches!(result, Err(Error::Store(StoreError::Io { op: "sync", .. })))
}

/// A failed sync loses the pages' bytes in the store; the pages stay Dirty, so every
/// flush fails while syncs fail, and the first flush after they heal writes them again.
#[test]
fn a_failed_sync_keeps_its_pages_dirty_until_a_flush_writes_them_again() {
    if !common::require_uffd() {
        return;
    }
    let store = store();
    let mapping =
        Mapping::new(Arc::clone(&store) as Arc<dyn Store>, Options::default()).expect("map");
    for page in 0..4 {
        mapping
            .write_at(page * PAGE, &[page as u8 + 1])
            .expect("write");
    }
    store.fail_sync.everywhere();
    let first = mapping.flush();
    assert!(is_sync_error(&first), "the failed sync: {first:?}");
    assert_eq!(
        stored(&store, 1),
        0,
        "precondition: the failed sync lost the write"
    );
    let again = mapping.flush();
    assert!(
        is_sync_error(&again),
        "while syncs fail, flush fails: {again:?}"
    );
    store.fail_sync.heal();
    let written = mapping.stats().pages_written_back;
    mapping.flush().expect("the flush after the store healed");
    assert_eq!(
        mapping.stats().pages_written_back - written,
        4,
        "the pages of the failed sync are written again"
    );
    for page in 0..4 {
        assert_eq!(
            stored(&store, page),
            page as u8 + 1,
            "page {page} in the store"
        );
    }
    mapping.flush().expect("nothing left to write");
    mapping.close().expect("close");
}

/// Pages eviction wrote back before a failed sync are no longer in memory to write again:
/// the failure sticks, and every later flush fails, even once syncs work again.
#[test]
fn a_failed_sync_after_eviction_fails_every_later_flush() {
    if !common::require_uffd() {
        return;
    }
    let store = store();
    let options = Options::default().budget(16 * PAGE as u64);
    let mapping = Mapping::new(Arc::clone(&store) as Arc<dyn Store>, options).expect("map");
    for page in 0..PAGES {
        mapping.write_at(page * PAGE, &[7]).expect("write");
    }
    assert!(
        mapping.stats().evicted_dirty > 0,
        "precondition: dirty pages were evicted"
    );
    store.fail_sync.everywhere();
    let first = mapping.flush();
    assert!(is_sync_error(&first), "the failed sync: {first:?}");
    store.fail_sync.heal();
    for attempt in 0..3 {
        match mapping.flush() {
            Err(Error::WritebackLost { pages, .. }) => assert!(pages > 0),
            other => {
                panic!("flush {attempt} after the loss: expected WritebackLost, got {other:?}")
            }
        }
    }
    let closed = mapping.close();
    assert!(
        matches!(closed, Err(Error::WritebackLost { .. })),
        "close: {closed:?}"
    );
}

/// Runs this test binary's `test` as a child for `case`, bounded in time: a child still
/// running after a minute hung, and is killed.
fn run_bounded(test: &str, case: &str) -> Output {
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, case)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let started = Instant::now();
    while child.try_wait().expect("wait for the child").is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect the child");
            panic!(
                "the child hung (killed after 60 s): {}",
                common::describe(&output)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect the child")
}

/// A mapping whose page 1 holds data, served by one handler thread.
fn handler_mapping() -> (Arc<FaultyStore<MemStore>>, Mapping) {
    let store = store();
    store
        .inner
        .write_at(PAGE as u64, &[42])
        .expect("seed the store");
    let options = Options::default().handler_threads(1);
    let mapping = Mapping::new(Arc::clone(&store) as Arc<dyn Store>, options).expect("map");
    (store, mapping)
}

const HANDLER_TEST: &str =
    "a_handler_thread_that_cannot_read_faults_answers_them_and_flush_reports_it";

/// A few failed reads of the uffd: the thread retries, serves the fault, and the next
/// flush reports the failure once. Failing reads for good: the thread gives up, a write
/// to a present page goes on, every flush reports it, and a missing page gets SIGBUS.
#[test]
fn a_handler_thread_that_cannot_read_faults_answers_them_and_flush_reports_it() {
    match common::child_case().as_deref() {
        Some("transient") => {
            let (_store, mapping) = handler_mapping();
            udax::inject_serve_failures(3, libc::EIO);
            let mut byte = [0u8; 1];
            mapping.read_at(PAGE, &mut byte).expect("read");
            assert_eq!(byte[0], 42, "the fault was served after the retries");
            let first = mapping.flush();
            assert!(
                first.is_err(),
                "the next flush reports the failure: {first:?}"
            );
            mapping.flush().expect("reported once");
            say("TRANSIENT-OK");
            return;
        }
        Some("persistent") => {
            common::no_core_dumps();
            let (store, mapping) = handler_mapping();
            let mut byte = [0u8; 1];
            mapping.read_at(PAGE, &mut byte).expect("read");
            udax::inject_serve_failures(u32::MAX, libc::EIO);
            // A write-protect fault nobody can read any more: answered all the same.
            mapping
                .write_at(PAGE + 1, &[43])
                .expect("write to a present page");
            for _ in 0..2 {
                let flushed = mapping.flush();
                assert!(
                    matches!(flushed, Err(Error::HandlerFailed { .. })),
                    "every flush reports it: {flushed:?}"
                );
            }
            let mut written = [0u8; 2];
            store
                .inner
                .read_at(PAGE as u64, &mut written)
                .expect("read the store");
            assert_eq!(written, [42, 43], "flush still wrote the page back");
            say("FLUSH-REPORTED");
            // SAFETY: page 5 lies inside the live mapping; the load is meant to die of SIGBUS.
            let byte = unsafe { common::peek(mapping.as_ptr(), 5 * PAGE) };
            say(&format!("SURVIVED read {byte}"));
            return;
        }
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
    if !common::require_uffd() {
        return;
    }
    let output = run_bounded(HANDLER_TEST, "transient");
    assert_child_passed(&output, "TRANSIENT-OK");
    let output = run_bounded(HANDLER_TEST, "persistent");
    assert_died_of_sigbus(&output, "FLUSH-REPORTED");
}
