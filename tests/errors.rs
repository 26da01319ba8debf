//! Store failures at fault time: the faulting access gets SIGBUS (a user-space access kills
//! the process, checked in a re-executed child) or EFAULT (a kernel-side access such as
//! pread into the mapping), the mapping counts it, the next flush reports it once, and
//! data flushed before stays intact.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use common::{FaultyStore, PAGE, TempStore, child_case, peek, poke, read_file, say};
use udax::{Error, FileStore, Mapping, MemStore, Options, Store, StoreError};

const PAGES: usize = 16;

/// A 16-page in-memory store with data in pages 2 and 3 (bytes 0xAB), holes elsewhere,
/// wrapped to fail on command.
fn faulty_mem_store() -> Arc<FaultyStore<MemStore>> {
    let inner = MemStore::new((PAGES * PAGE) as u64);
    inner
        .write_at(2 * PAGE as u64, &[0xAB; 2 * PAGE])
        .expect("seeding pages 2 and 3");
    Arc::new(FaultyStore::new(inner))
}

fn map<S: Store + 'static>(store: &Arc<S>) -> Mapping {
    let store: Arc<dyn Store> = store.clone();
    Mapping::new(store, Options::default()).expect("Mapping::new")
}

/// The child side of the SIGBUS tests: sets up the failure, checks a healthy access
/// first, prints `TOUCHING`, then does the access that must kill it.
fn sigbus_child(case: &str) {
    common::no_core_dumps();
    let store = faulty_mem_store();
    let mapping = map(&store);
    let ptr = mapping.as_ptr();
    // SAFETY: page 2 is inside the 16-page mapping; this thread is its only user.
    assert_eq!(unsafe { peek(ptr, 2 * PAGE) }, 0xAB, "a healthy data page");
    match case {
        "read-eio" => {
            store.fail_read.page(3);
            say("TOUCHING: load from data page 3 whose store read fails");
            // SAFETY: inside the mapping; the access is meant to raise SIGBUS.
            let value = unsafe { peek(ptr, 3 * PAGE + 1) };
            say(&format!("SURVIVED with value {value:#x}"));
        }
        "write-eio" => {
            store.fail_read.page(3);
            say("TOUCHING: store to data page 3 whose store read fails");
            // SAFETY: as above.
            unsafe { poke(ptr, 3 * PAGE + 1, 7) };
            say("SURVIVED");
        }
        "write-enospc" => {
            store.no_space.page(5);
            say("TOUCHING: store to hole page 5, allocation fails with ENOSPC");
            // SAFETY: as above.
            unsafe { poke(ptr, 5 * PAGE, 7) };
            say("SURVIVED");
        }
        "zero-to-dirty-enospc" => {
            // SAFETY: as above; a hole reads as zero.
            assert_eq!(unsafe { peek(ptr, 6 * PAGE) }, 0);
            assert_eq!(mapping.stats().zero_faults, 1);
            store.no_space.page(6);
            say("TOUCHING: store to zero-mapped page 6, allocation fails with ENOSPC");
            // SAFETY: as above.
            unsafe { poke(ptr, 6 * PAGE, 7) };
            say("SURVIVED");
        }
        other => panic!("unknown child case {other}"),
    }
    drop(mapping);
}

/// Runs `case` in a child unless this process is that child, and asserts it died of SIGBUS.
fn expect_sigbus(test_name: &str, case: &str) {
    if let Some(case) = child_case() {
        sigbus_child(&case);
        return;
    }
    if !common::require_uffd() {
        return;
    }
    let output = common::run_child(test_name, case);
    common::assert_died_of_sigbus(&output, "TOUCHING");
}

/// Test 9a. A load from a page whose store read fails dies of SIGBUS.
#[test]
fn user_read_of_a_failing_page_gets_sigbus() {
    expect_sigbus("user_read_of_a_failing_page_gets_sigbus", "read-eio");
}

/// Test 9a. A store to an Empty data page whose store read fails dies of SIGBUS.
#[test]
fn user_write_of_an_unreadable_page_gets_sigbus() {
    expect_sigbus("user_write_of_an_unreadable_page_gets_sigbus", "write-eio");
}

/// Test 9a. A store to a hole whose allocation fails (ENOSPC) dies of SIGBUS.
#[test]
fn user_write_to_a_hole_without_space_gets_sigbus() {
    expect_sigbus(
        "user_write_to_a_hole_without_space_gets_sigbus",
        "write-enospc",
    );
}

/// Test 9a. A store to a zero-mapped hole whose allocation fails dies of SIGBUS (and is
/// not silently absorbed by a private copy of the zero page).
#[test]
fn user_write_to_a_zero_page_without_space_gets_sigbus() {
    expect_sigbus(
        "user_write_to_a_zero_page_without_space_gets_sigbus",
        "zero-to-dirty-enospc",
    );
}

/// A pipe, both ends owned.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the two-int array it is given.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both fds are new and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// The result of a syscall that returns a byte count: Ok(count) or Err(errno).
fn syscall_result(rc: isize) -> Result<usize, i32> {
    if rc < 0 {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .expect("a failed syscall sets errno"))
    } else {
        Ok(rc as usize)
    }
}

/// Kernel-side write access: pread one page of `src` into mapping page `page`.
fn pread_into(mapping: &Mapping, page: usize, src: &std::fs::File) -> Result<usize, i32> {
    assert!(page < mapping.len() / PAGE);
    // SAFETY: the destination is one page inside the live mapping; the kernel checks the
    // user range itself and reports a fault there as EFAULT.
    let rc = unsafe {
        libc::pread(
            src.as_raw_fd(),
            mapping.as_ptr().add(page * PAGE).cast(),
            PAGE,
            0,
        )
    };
    syscall_result(rc)
}

/// Kernel-side read access: write one page of the mapping into a pipe; returns what
/// arrived in the pipe.
fn write_from(mapping: &Mapping, page: usize) -> Result<Vec<u8>, i32> {
    assert!(page < mapping.len() / PAGE);
    let (rx, tx) = pipe();
    // SAFETY: the source is one page inside the live mapping; the kernel checks the range.
    let rc = unsafe {
        libc::write(
            tx.as_raw_fd(),
            mapping.as_ptr().add(page * PAGE).cast(),
            PAGE,
        )
    };
    let n = syscall_result(rc)?;
    drop(tx);
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        // SAFETY: reads into the unfilled tail of `out`, which has `n - got` bytes.
        let rc = unsafe { libc::read(rx.as_raw_fd(), out[got..].as_mut_ptr().cast(), n - got) };
        got += syscall_result(rc).expect("reading back from the pipe");
    }
    Ok(out)
}

/// A one-page source file of 0x5A bytes for pread.
fn source_file(tmp: &TempStore) -> std::fs::File {
    let path = tmp.dir.path().join("source");
    std::fs::write(&path, [0x5A; PAGE]).expect("writing the pread source");
    std::fs::File::open(path).expect("opening the pread source")
}

/// A 16-page file store with data (0x33) in page 3, wrapped to fail on command.
fn faulty_file_store(tmp: &TempStore) -> Arc<FaultyStore<FileStore>> {
    let inner = FileStore::create(&tmp.path, (PAGES * PAGE) as u64).expect("FileStore::create");
    inner
        .write_at(3 * PAGE as u64, &[0x33; PAGE])
        .expect("seeding page 3");
    inner.sync().expect("sync");
    Arc::new(FaultyStore::new(inner))
}

/// Precondition of the EFAULT tests: kernel-side accesses to the mapping (pread into it,
/// write from it) are faults udax serves like user-space ones, not EFAULT.
#[test]
fn kernel_accesses_to_the_mapping_are_served() {
    if !common::require_uffd() {
        return;
    }
    let tmp = TempStore::new("kernel.img");
    let store = faulty_file_store(&tmp);
    let mapping = map(&store);
    let src = source_file(&tmp);

    assert_eq!(
        pread_into(&mapping, 2, &src),
        Ok(PAGE),
        "pread into a hole page of the mapping (EFAULT=14: kernel accesses are not served, \
         e.g. a UFFD_USER_MODE_ONLY userfaultfd)"
    );
    assert_eq!(
        write_from(&mapping, 3),
        Ok(vec![0x33; PAGE]),
        "write(2) from a data page"
    );
    assert_eq!(
        write_from(&mapping, 4),
        Ok(vec![0; PAGE]),
        "write(2) from a hole page"
    );
    let stats = mapping.stats();
    assert_eq!(
        [stats.write_faults, stats.read_faults, stats.zero_faults],
        [1, 1, 1],
        "[write, read, zero] faults: {stats:?}"
    );
    let mut buf = [0u8; PAGE];
    mapping.read_at(2 * PAGE, &mut buf).expect("read_at");
    assert_eq!(buf, [0x5A; PAGE], "the pread bytes are in the mapping");
    mapping.close().expect("close");
    let file = read_file(&tmp.path);
    assert_eq!(
        &file[2 * PAGE..3 * PAGE],
        &[0x5A; PAGE],
        "and in the file after close"
    );
}

/// Asserts `flush()` reports one `FaultFailed` at `page` whose source matches `is_source`,
/// then that a second flush succeeds (the error is reported once).
#[track_caller]
fn assert_flush_reports(mapping: &Mapping, page: usize, is_source: fn(&StoreError) -> bool) {
    match mapping.flush() {
        Err(Error::FaultFailed { offset, source }) => {
            assert_eq!(
                offset,
                (page * PAGE) as u64,
                "FaultFailed names the failed page"
            );
            assert!(
                is_source(&source),
                "unexpected source of FaultFailed: {source:?}"
            );
        }
        other => panic!("flush after a failed fault returned {other:?}, not FaultFailed"),
    }
    let stats = mapping.stats();
    assert!(
        stats.sigbus_delivered >= 1,
        "the failed fault was not counted: {stats:?}"
    );
    mapping
        .flush()
        .expect("a second flush: the fault error is reported once");
}

/// Test 9b. A kernel-side read of a page whose store read fails gets EFAULT, the next flush
/// returns FaultFailed, and what was flushed before is intact.
#[test]
fn failed_read_fault_is_efault_for_the_kernel_and_reported_by_flush() {
    if !common::require_uffd() {
        return;
    }
    let tmp = TempStore::new("read-eio.img");
    let store = faulty_file_store(&tmp);
    let mapping = map(&store);
    mapping
        .write_at(PAGE, &[0xA1; PAGE])
        .expect("write_at page 1");
    mapping.flush().expect("flush before the failure");
    assert_eq!(mapping.stats().sigbus_delivered, 0);

    store.fail_read.page(3);
    assert_eq!(
        write_from(&mapping, 3),
        Err(libc::EFAULT),
        "write(2) from a page whose store read fails"
    );
    assert!(store.failures.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    // A page dirtied after the failure must still reach the file.
    mapping
        .write_at(5 * PAGE + 9, b"after")
        .expect("write_at page 5");
    assert_flush_reports(&mapping, 3, |e| matches!(e, StoreError::Io { .. }));

    let file = read_file(&tmp.path);
    assert_eq!(
        &file[PAGE..2 * PAGE],
        &[0xA1; PAGE],
        "page flushed before the failure"
    );
    assert_eq!(
        &file[3 * PAGE..4 * PAGE],
        &[0x33; PAGE],
        "the failed page's data is unchanged"
    );
    assert_eq!(
        &file[5 * PAGE + 9..5 * PAGE + 14],
        b"after",
        "page dirtied after the failure"
    );
    mapping.close().expect("close after the error was reported");
}

/// Test 9b. A kernel-side write (pread into the mapping) to a hole whose allocation fails
/// with ENOSPC gets EFAULT; flush returns FaultFailed with a NoSpace source.
#[test]
fn enospc_on_a_write_fault_is_efault_for_the_kernel_and_reported_by_flush() {
    if !common::require_uffd() {
        return;
    }
    let tmp = TempStore::new("enospc.img");
    let store = faulty_file_store(&tmp);
    let mapping = map(&store);
    let src = source_file(&tmp);
    mapping
        .write_at(PAGE, &[0xA1; PAGE])
        .expect("write_at page 1");
    mapping.flush().expect("flush before the failure");

    store.no_space.page(7);
    assert_eq!(
        pread_into(&mapping, 7, &src),
        Err(libc::EFAULT),
        "pread into a hole whose allocation fails"
    );
    assert_flush_reports(&mapping, 7, |e| matches!(e, StoreError::NoSpace { .. }));
    let file = read_file(&tmp.path);
    assert_eq!(
        &file[PAGE..2 * PAGE],
        &[0xA1; PAGE],
        "page flushed before the failure"
    );
    assert_eq!(
        &file[7 * PAGE..8 * PAGE],
        &[0; PAGE],
        "nothing landed in the failed page"
    );
    mapping.close().expect("close after the error was reported");
}

/// Test 9b. The same for a write-protect fault on a zero-mapped hole (zero -> dirty).
#[test]
fn enospc_on_zero_to_dirty_is_efault_for_the_kernel_and_reported_by_flush() {
    if !common::require_uffd() {
        return;
    }
    let tmp = TempStore::new("enospc-zero.img");
    let store = faulty_file_store(&tmp);
    let mapping = map(&store);
    let src = source_file(&tmp);
    assert_eq!(
        write_from(&mapping, 8),
        Ok(vec![0; PAGE]),
        "a hole reads as zero"
    );
    assert_eq!(mapping.stats().zero_faults, 1);

    store.no_space.page(8);
    assert_eq!(
        pread_into(&mapping, 8, &src),
        Err(libc::EFAULT),
        "pread into a zero-mapped hole whose allocation fails"
    );
    assert_flush_reports(&mapping, 8, |e| matches!(e, StoreError::NoSpace { .. }));
    assert_eq!(&read_file(&tmp.path)[8 * PAGE..9 * PAGE], &[0; PAGE]);
    mapping.close().expect("close after the error was reported");
}

/// A failed store write during flush is an error of that flush, not silently dropped.
#[test]
fn failed_writeback_is_an_error_of_flush() {
    if !common::require_uffd() {
        return;
    }
    let tmp = TempStore::new("writeback-eio.img");
    let store = faulty_file_store(&tmp);
    let mapping = map(&store);
    mapping
        .write_at(4 * PAGE, &[0x44; PAGE])
        .expect("write_at page 4");
    store.fail_write.page(4);
    let result = mapping.flush();
    assert!(
        result.is_err(),
        "flush with a failing store write returned {result:?}"
    );
    store.fail_write.heal();
    // Whatever the mapping does after the failure, it must not claim the page is in the file.
    let file = tmp.path.clone();
    drop(mapping);
    let on_disk = std::fs::File::open(file).expect("open");
    let mut page = [0u8; PAGE];
    on_disk
        .read_exact_at(&mut page, 4 * PAGE as u64)
        .expect("pread");
    assert!(
        page == [0; PAGE] || page == [0x44; PAGE],
        "torn page after a failed writeback"
    );
}
