//! fork: nothing a child does to its inherited copy of a `Mapping` (drop, flush, close,
//! stats) touches the parent's mapping, threads or pages.
//!
//! Each scenario runs in a re-executed child test process with a time limit, so a hang
//! (the parent's next fault never served) fails the test instead of stalling the suite.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use udax::{Error, FileStore, Mapping, Options, Resolution, Store};

const FORKS: usize = 100;
/// Two pages per fork: one written before it, one first touched (read, then written)
/// after it.
const PAGES: usize = 2 * FORKS;

/// What the forked child checks of its copy; its exit code says which check failed.
fn in_the_child(mapping: Mapping, owner: u32) -> i32 {
    // Only async-signal-safe work here: the test process has other threads, whose locks
    // (the allocator's) may be held at fork. None of these calls allocates.
    let stats = mapping.stats();
    if stats.write_faults == 0 {
        return 3;
    }
    match mapping.flush() {
        Err(Error::ForeignProcess { owner: o }) if o == owner => {}
        _ => return 4,
    }
    drop(mapping);
    0
}

fn fork_loop(resolution: Resolution) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.img");
    let store = Arc::new(FileStore::create(&path, (PAGES * PAGE) as u64).expect("create"));
    let options = Options::default().resolution(resolution);
    let mapping = Mapping::new(store, options).expect("map");
    let owner = std::process::id();
    let mut model = vec![0u8; PAGES * PAGE];
    for round in 0..FORKS {
        let before = 2 * round * PAGE;
        let stamp = format!("before fork {round}");
        mapping.write_at(before, stamp.as_bytes()).expect("write");
        model[before..before + stamp.len()].copy_from_slice(stamp.as_bytes());
        if round % 10 == 0 {
            mapping.flush().expect("flush before fork");
        }
        // SAFETY: fork in a test process; the child runs only `in_the_child`, which
        // allocates nothing, then _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // The child gets its own copy of the value: move it out of the parent's
            // binding without running the parent's drop twice.
            // SAFETY: in the child, `mapping` is never used again after this read.
            let copy = unsafe { std::ptr::read(&mapping) };
            let code = in_the_child(copy, owner);
            // SAFETY: _exit ends the child at once, running no destructor of the
            // parent's values.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "round {round}: the child's checks failed (status {status:#x})"
        );
        // The parent's next fault on a never-touched page: a read (zero page), a write.
        let after = before + PAGE;
        let mut byte = [1u8];
        mapping.read_at(after + 7, &mut byte).expect("read");
        assert_eq!(byte, [0], "round {round}: a hole reads as zeros");
        let stamp = format!("after fork {round}");
        mapping.write_at(after, stamp.as_bytes()).expect("write");
        model[after..after + stamp.len()].copy_from_slice(stamp.as_bytes());
        mapping.flush().expect("flush after fork");
    }
    let stats = mapping.stats();
    // One first write before each fork, one write over the zero page after it.
    assert_eq!(
        (stats.write_faults, stats.zero_to_dirty),
        (FORKS as u64, FORKS as u64),
        "{stats:?}"
    );
    mapping.close().expect("close");
    let reopened = FileStore::open(&path).expect("reopen");
    let mut bytes = vec![0u8; PAGES * PAGE];
    reopened.read_at(0, &mut bytes).expect("read back");
    assert_bytes_eq(&bytes, &model, "store after 100 forks");
    say("FORKS DONE");
}

fn run(case: &str, test_name: &str) {
    if !require_uffd() {
        return;
    }
    match child_case().as_deref() {
        Some(c) if c == case => {
            let resolution = match case {
                "fork-in-thread" => Resolution::InThread,
                _ => Resolution::HandlerThreads,
            };
            fork_loop(resolution);
        }
        Some(_) => {}
        None => {
            let output = run_child_within(test_name, case, &[], Duration::from_secs(120));
            assert_child_passed(&output, "FORKS DONE");
        }
    }
}

/// 100 forks, each child dropping its copy after checking that `flush` refuses, with the
/// parent faulting, writing and flushing between forks: every byte is on the store.
#[test]
fn children_dropping_their_copy_leave_the_parent_served() {
    run(
        "fork",
        "children_dropping_their_copy_leave_the_parent_served",
    );
}

/// The same with in-thread resolution (the child's copy must leave the SIGBUS table and
/// the uffd alone).
#[test]
fn children_dropping_their_copy_leave_the_parent_served_in_thread() {
    run(
        "fork-in-thread",
        "children_dropping_their_copy_leave_the_parent_served_in_thread",
    );
}

/// What a child sees when it touches the inherited range: SIGSEGV (the memory is not
/// inherited: MADV_DONTFORK), as documented on `Mapping`.
#[test]
fn a_child_touching_the_range_gets_sigsegv() {
    if !require_uffd() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(FileStore::create(dir.path().join("s.img"), 1 << 20).expect("create"));
    let mapping = Mapping::new(store, Options::default()).expect("map");
    mapping.write_at(0, b"parent").expect("write");
    let ptr = mapping.as_ptr();
    // SAFETY: the child only reads one byte and _exits (no allocation).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: on purpose: the range is not mapped in the child; the load faults.
        let byte = unsafe { std::ptr::read_volatile(ptr) };
        // SAFETY: ends the child.
        unsafe { libc::_exit(i32::from(byte) + 10) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV,
        "status {status:#x}"
    );
    let mut bytes = [0u8; 6];
    mapping.read_at(0, &mut bytes).expect("read");
    assert_eq!(&bytes, b"parent");
    mapping.close().expect("close");
}
