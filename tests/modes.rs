//! The resolution modes (handler threads, in-thread SIGBUS) and dirty-tracking modes
//! (synchronous write-protect faults, asynchronous WP_ASYNC + PAGEMAP_SCAN): the error
//! paths in every combination, the program's own SIGBUS handler, kernel-side accesses.
//!
//! Tests that install a SIGBUS handler run in a child process: the disposition is
//! process-wide, and udax's in-thread handler must be installed after the program's.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering::SeqCst};

use common::{child_case, run_child, say};
use udax::{
    DirtyTracking, Error, Extent, FileStore, Mapping, Options, Resolution, Store, StoreError,
};

const PAGE: usize = 4096;

/// Every combination of who resolves and how writes are tracked.
fn modes() -> [(&'static str, Options); 4] {
    let in_thread = || Options::default().resolution(Resolution::InThread);
    [
        ("threads-sync", Options::default()),
        (
            "threads-async",
            Options::default().dirty_tracking(DirtyTracking::Async),
        ),
        ("inthread-sync", in_thread()),
        (
            "inthread-async",
            in_thread().dirty_tracking(DirtyTracking::Async),
        ),
    ]
}

fn options_for(case: &str) -> Options {
    modes()
        .into_iter()
        .find(|(name, _)| case.starts_with(name))
        .map(|(_, options)| options)
        .expect("a known mode")
}

/// A FileStore that fails reads of one page, or allocations everywhere, while told to.
/// Only atomics on top of FileStore's syscalls: signal-safe, so in-thread mode uses it.
struct FlakyStore {
    inner: FileStore,
    /// Page whose reads fail with EIO; u64::MAX for none.
    failing_read: AtomicU64,
    /// Allocations (and writes) fail with ENOSPC.
    full: AtomicBool,
}

impl FlakyStore {
    fn new(inner: FileStore) -> FlakyStore {
        FlakyStore {
            inner,
            failing_read: AtomicU64::new(u64::MAX),
            full: AtomicBool::new(false),
        }
    }
}

impl Store for FlakyStore {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn extent(&self, offset: u64) -> Result<Extent, StoreError> {
        self.inner.extent(offset)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        if offset / PAGE as u64 == self.failing_read.load(SeqCst) {
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
        if self.full.load(SeqCst) {
            return Err(StoreError::NoSpace { offset });
        }
        self.inner.write_at(offset, buf)
    }
    fn allocate(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        if self.full.load(SeqCst) {
            return Err(StoreError::NoSpace { offset });
        }
        self.inner.allocate(offset, len)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        self.inner.punch_hole(offset, len)
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync()
    }
    fn is_signal_safe(&self) -> bool {
        self.inner.is_signal_safe()
    }
}

/// A sparse file of `pages` pages with page `data_page` written with `fill`.
fn file_with_data(dir: &std::path::Path, pages: usize, data_page: usize, fill: u8) -> FileStore {
    let path = dir.join("store.img");
    let store = FileStore::create(&path, (pages * PAGE) as u64).expect("create");
    store
        .write_at((data_page * PAGE) as u64, &vec![fill; PAGE])
        .expect("write");
    store.sync().expect("sync");
    store
}

// ---- the program's SIGBUS handler, for children ------------------------------------

static HANDLER_CALLS: AtomicUsize = AtomicUsize::new(0);
static HANDLER_ADDRESS: AtomicUsize = AtomicUsize::new(0);
/// The file to extend when a SIGBUS past its end arrives (-1: none).
static EXTEND_FD: AtomicI32 = AtomicI32::new(-1);
/// The store to heal when a poisoned page is hit.
static HEAL: AtomicUsize = AtomicUsize::new(0);

/// The program's own SIGBUS handler: repairs the cause so the access can retry.
extern "C" fn program_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo; si_addr is the faulting address.
    let address = unsafe { (*info).si_addr() } as usize;
    HANDLER_CALLS.fetch_add(1, SeqCst);
    HANDLER_ADDRESS.store(address, SeqCst);
    let fd = EXTEND_FD.load(SeqCst);
    if fd >= 0 {
        // SAFETY: ftruncate is async-signal-safe; `fd` is the test's open file.
        unsafe { libc::ftruncate(fd, PAGE as libc::off_t) };
        return;
    }
    let store = HEAL.load(SeqCst) as *const FlakyStore;
    if !store.is_null() {
        // SAFETY: the child keeps the store alive (in an Arc) for its whole run.
        unsafe { (*store).failing_read.store(u64::MAX, SeqCst) };
        // Zap the poisoned page so the retried access faults again, and is served.
        // SAFETY: madvise on the page containing the faulting address of our mapping.
        unsafe {
            libc::madvise(
                (address & !(PAGE - 1)) as *mut libc::c_void,
                PAGE,
                libc::MADV_DONTNEED,
            )
        };
        return;
    }
    // SAFETY: _exit is async-signal-safe; an unexpected SIGBUS ends the child loudly.
    unsafe { libc::_exit(99) };
}

fn install_program_handler() {
    // SAFETY: a zeroed sigaction is valid; we fill the handler, flags and an empty mask.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = program_handler as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()),
            0
        );
    }
}

/// Creates (or opens) a file for reading and writing.
fn read_write(path: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("create")
}

// ---- tests ---------------------------------------------------------------------------

/// A store read failure: the access gets SIGBUS (the program's handler sees it), the next
/// flush returns the error once, and bytes flushed before are intact; in every mode.
#[test]
fn a_failed_fault_reaches_the_access_and_the_next_flush_in_every_mode() {
    const NAME: &str = "a_failed_fault_reaches_the_access_and_the_next_flush_in_every_mode";
    if let Some(case) = child_case() {
        return failed_fault_child(&case);
    }
    if !common::require_uffd() {
        return;
    }
    for (mode, _) in modes() {
        let output = run_child(NAME, mode);
        common::assert_child_passed(&output, &format!("PASSED {mode}"));
    }
}

fn failed_fault_child(mode: &str) {
    install_program_handler();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(FlakyStore::new(file_with_data(dir.path(), 8, 3, 0x33)));
    HEAL.store(Arc::as_ptr(&store) as usize, SeqCst);
    let mapping = Mapping::new(store.clone(), options_for(mode)).expect("map");
    let in_thread = mode.starts_with("inthread");
    assert_eq!(
        mapping.resolution() == Resolution::InThread,
        in_thread,
        "{mode}"
    );
    mapping.write_at(PAGE, b"kept").expect("write");
    mapping.flush().expect("first flush");
    store.failing_read.store(3, SeqCst);
    let mut byte = [0u8; 1];
    // The store fails: poisoned page, SIGBUS to the program, which heals and retries.
    mapping.read_at(3 * PAGE, &mut byte).expect("read");
    assert_eq!(
        byte[0], 0x33,
        "{mode}: the retried read sees the store's bytes"
    );
    assert_eq!(
        HANDLER_CALLS.load(SeqCst),
        1,
        "{mode}: the program saw one SIGBUS"
    );
    let stats = mapping.stats();
    assert_eq!(stats.sigbus_delivered, 1, "{mode}: {stats:?}");
    match mapping.flush() {
        Err(Error::FaultFailed { offset, .. }) => assert_eq!(offset, 3 * PAGE as u64),
        other => panic!("{mode}: flush should report the failed fault, got {other:?}"),
    }
    mapping.flush().expect("the error is reported once");
    let mut kept = [0u8; 4];
    store.inner.read_at(PAGE as u64, &mut kept).expect("read");
    assert_eq!(&kept, b"kept", "{mode}: flushed bytes intact");
    mapping.close().expect("close");
    say(&format!("PASSED {mode}"));
}

/// ENOSPC: with synchronous tracking the write to a zero page faults and gets SIGBUS (the
/// kernel's DAX behaviour); with asynchronous tracking the kernel lets the write land and
/// `flush` returns the error, keeping the bytes dirty until space returns.
#[test]
fn no_space_hits_the_access_or_the_flush_by_tracking_mode() {
    const NAME: &str = "no_space_hits_the_access_or_the_flush_by_tracking_mode";
    if let Some(case) = child_case() {
        return no_space_child(&case);
    }
    if !common::require_uffd() {
        return;
    }
    for (mode, _) in modes() {
        let output = run_child(NAME, mode);
        common::assert_child_passed(&output, &format!("PASSED {mode}"));
    }
}

fn no_space_child(mode: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(FlakyStore::new(file_with_data(dir.path(), 8, 7, 0x77)));
    install_program_handler_healing_space(&store);
    let mapping = Mapping::new(store.clone(), options_for(mode)).expect("map");
    let mut byte = [0u8; 1];
    mapping.read_at(2 * PAGE, &mut byte).expect("read a hole");
    store.full.store(true, SeqCst);
    if mode.ends_with("-sync") {
        // The write-protect fault must allocate, fails, and the access gets SIGBUS:
        // the program's handler heals the store and zaps the page; the retry is served.
        mapping.write_at(2 * PAGE, b"x").expect("write");
        assert_eq!(HANDLER_CALLS.load(SeqCst), 1, "{mode}: one SIGBUS");
        assert!(matches!(
            mapping.flush(),
            Err(Error::FaultFailed {
                source: StoreError::NoSpace { .. },
                ..
            })
        ));
    } else {
        mapping
            .write_at(2 * PAGE, b"x")
            .expect("write lands without a fault");
        assert_eq!(HANDLER_CALLS.load(SeqCst), 0, "{mode}: no SIGBUS");
        match mapping.flush() {
            Err(Error::FaultFailed {
                source: StoreError::NoSpace { .. },
                ..
            })
            | Err(Error::Store(StoreError::NoSpace { .. })) => {}
            other => panic!("{mode}: flush should fail for lack of space, got {other:?}"),
        }
        store.full.store(false, SeqCst);
        mapping.flush().expect("flush once space is back");
        let mut found = [0u8; 1];
        store
            .inner
            .read_at(2 * PAGE as u64, &mut found)
            .expect("read");
        assert_eq!(&found, b"x", "{mode}: the bytes waited in memory for space");
    }
    mapping.close().expect("close");
    say(&format!("PASSED {mode}"));
}

static SPACE: AtomicUsize = AtomicUsize::new(0);

extern "C" fn heal_space_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    HANDLER_CALLS.fetch_add(1, SeqCst);
    // SAFETY: as in `program_handler`.
    let address = unsafe { (*info).si_addr() } as usize;
    let store = SPACE.load(SeqCst) as *const FlakyStore;
    // SAFETY: the child keeps the store alive; madvise zaps our own mapping's page.
    unsafe {
        (*store).full.store(false, SeqCst);
        libc::madvise(
            (address & !(PAGE - 1)) as *mut libc::c_void,
            PAGE,
            libc::MADV_DONTNEED,
        );
    }
}

/// Installs `heal_space_handler` (before any in-thread mapping: udax chains to the
/// handler that was in place when it installed its own).
fn install_program_handler_healing_space(store: &Arc<FlakyStore>) {
    SPACE.store(Arc::as_ptr(store) as usize, SeqCst);
    // SAFETY: as in `install_program_handler`.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = heal_space_handler as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()),
            0
        );
    }
}

/// The program's own SIGBUS handler still gets every SIGBUS that is not a udax fault, with
/// an in-thread mapping in the same process.
#[test]
fn the_programs_sigbus_handler_still_gets_sigbus_outside_udax() {
    const NAME: &str = "the_programs_sigbus_handler_still_gets_sigbus_outside_udax";
    if child_case().is_some() {
        return chain_child();
    }
    if !common::require_uffd() {
        return;
    }
    let output = run_child(NAME, "chain");
    common::assert_child_passed(&output, "PASSED chain");
}

fn chain_child() {
    install_program_handler();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(file_with_data(dir.path(), 4, 1, 0x11));
    let mapping =
        Mapping::new(store, Options::default().resolution(Resolution::InThread)).expect("map");
    assert_eq!(mapping.resolution(), Resolution::InThread);
    let mut byte = [0u8; 1];
    mapping.read_at(0, &mut byte).expect("read");
    mapping.write_at(PAGE, b"w").expect("write");
    assert_eq!(
        HANDLER_CALLS.load(SeqCst),
        0,
        "udax faults never reach the program"
    );
    // A SIGBUS of the program's own: a shared mapping past the end of an empty file.
    let file = read_write(&dir.path().join("empty"));
    use std::os::fd::AsRawFd;
    EXTEND_FD.store(file.as_raw_fd(), SeqCst);
    // SAFETY: a fresh shared mapping of one page of our file, checked against MAP_FAILED.
    let outside = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(outside, libc::MAP_FAILED);
    // SAFETY: inside the mapping just made; the handler extends the file, so it retries.
    let value = unsafe { std::ptr::read_volatile(outside as *const u8) };
    assert_eq!(value, 0);
    assert_eq!(
        HANDLER_CALLS.load(SeqCst),
        1,
        "the program's handler ran once"
    );
    assert_eq!(HANDLER_ADDRESS.load(SeqCst), outside as usize);
    let stats = mapping.stats();
    // Page 0 is a hole (one zero fault); page 1 holds data, first touched by a write.
    assert_eq!((stats.zero_faults, stats.write_faults), (1, 1), "{stats:?}");
    mapping.close().expect("close");
    say("PASSED chain");
}

/// Kernel-side accesses (read(2) into the mapping): served by handler threads; with
/// in-thread resolution they fail with EFAULT until `prefault` makes the pages present.
#[test]
fn kernel_side_accesses_by_resolution_mode() {
    if !common::require_uffd() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let source = read_write(&dir.path().join("source"));
    source.write_all_at(&[0x5a; PAGE], 0).expect("write");
    for (mode, options) in modes() {
        let store =
            Arc::new(FileStore::create(dir.path().join(mode), 4 * PAGE as u64).expect("create"));
        let mapping = Mapping::new(store, options).expect("map");
        let target = mapping.as_ptr().wrapping_add(PAGE);
        use std::os::fd::AsRawFd;
        let pread = || {
            // SAFETY: `target` is a page inside the mapping; the kernel writes into it.
            unsafe { libc::pread(source.as_raw_fd(), target.cast(), PAGE, 0) }
        };
        if mapping.resolution() == Resolution::InThread {
            assert_eq!(
                pread(),
                -1,
                "{mode}: a missing page is EFAULT for the kernel"
            );
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EFAULT)
            );
            mapping.prefault(PAGE, PAGE, true).expect("prefault");
        }
        assert_eq!(pread(), PAGE as isize, "{mode}");
        mapping.flush().expect("flush");
        let mut found = [0u8; PAGE];
        std::fs::File::open(dir.path().join(mode))
            .expect("open")
            .read_exact_at(&mut found, PAGE as u64)
            .expect("read");
        assert!(
            found.iter().all(|&b| b == 0x5a),
            "{mode}: the kernel's write reached the store"
        );
        mapping.close().expect("close");
    }
}

/// A store that is not signal-safe is served by handler threads even when in-thread
/// resolution is asked for.
#[test]
fn in_thread_falls_back_to_handler_threads_for_other_stores() {
    if !common::require_uffd() {
        return;
    }
    let store = Arc::new(udax::MemStore::new(4 * PAGE as u64));
    let mapping =
        Mapping::new(store, Options::default().resolution(Resolution::InThread)).expect("map");
    assert_eq!(mapping.resolution(), Resolution::HandlerThreads);
    mapping.write_at(0, b"m").expect("write");
    assert_eq!(mapping.stats().write_faults, 1);
    mapping.close().expect("close");
}

#[test]
fn asynchronous_tracking_with_a_budget_is_refused() {
    let store = Arc::new(udax::MemStore::new(4 * PAGE as u64));
    let options = Options::default()
        .dirty_tracking(DirtyTracking::Async)
        .budget(PAGE as u64);
    assert!(matches!(
        Mapping::new(store, options),
        Err(Error::IncompatibleOptions { .. })
    ));
}

/// In-thread resolution serves 2 MiB ranges of holes whole, in the faulting thread.
#[test]
fn in_thread_reads_of_holes_take_one_fault_per_2_mib() {
    if !common::require_uffd() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pages = 2048;
    let store = Arc::new(
        FileStore::create(dir.path().join("holes"), (pages * PAGE) as u64).expect("create"),
    );
    let options = Options::default()
        .resolution(Resolution::InThread)
        .granularity(udax::Granularity::Huge);
    let mapping = Mapping::new(store, options).expect("map");
    assert_eq!(mapping.resolution(), Resolution::InThread);
    let mut byte = [1u8; 1];
    for page in 0..pages {
        mapping.read_at(page * PAGE, &mut byte).expect("read");
        assert_eq!(byte[0], 0);
    }
    let stats = mapping.stats();
    assert_eq!(stats.huge_faults, (pages / 512) as u64, "{stats:?}");
    assert_eq!(stats.huge_fallbacks, 0, "{stats:?}");
    assert_eq!(stats.resident_pages, 0, "{stats:?}");
    mapping.close().expect("close");
}

/// Asynchronous tracking installs zero pages unprotected: flush must still write back
/// exactly the pages written, former zero pages included, and nothing for the pages only
/// read (which read as written to a plain WRITTEN scan).
#[test]
fn asynchronous_flush_writes_exactly_the_written_former_zero_pages() {
    if !common::require_uffd() {
        return;
    }
    for resolution in [Resolution::HandlerThreads, Resolution::InThread] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("holes");
        let pages = 16;
        let store = Arc::new(FileStore::create(&path, (pages * PAGE) as u64).expect("create"));
        let options = Options::default()
            .resolution(resolution)
            .dirty_tracking(DirtyTracking::Async);
        let mapping = Mapping::new(Arc::clone(&store) as Arc<dyn Store>, options).expect("map");
        let mut byte = [1u8; 1];
        for page in 0..pages {
            mapping.read_at(page * PAGE, &mut byte).expect("read");
            assert_eq!(byte[0], 0);
        }
        assert_eq!(mapping.stats().zero_faults, pages as u64);
        mapping.write_at(3 * PAGE + 5, b"three").expect("write");
        mapping.write_at(7 * PAGE, b"seven").expect("write");
        mapping.flush().expect("flush");
        let stats = mapping.stats();
        assert_eq!(stats.pages_written_back, 2, "{resolution:?}: {stats:?}");
        assert_eq!(stats.zero_to_dirty, 2, "{resolution:?}: {stats:?}");
        assert_eq!(
            store.allocated_bytes(),
            Some(2 * PAGE as u64),
            "{resolution:?}"
        );
        // Nothing written since: nothing more to write back.
        mapping.flush().expect("flush");
        assert_eq!(mapping.stats().pages_written_back, 2, "{resolution:?}");
        mapping.close().expect("close");
        let file = std::fs::File::open(&path).expect("reopen");
        let mut bytes = [0u8; 5];
        file.read_exact_at(&mut bytes, (3 * PAGE + 5) as u64)
            .expect("read");
        assert_eq!(&bytes, b"three");
        file.read_exact_at(&mut bytes, (7 * PAGE) as u64)
            .expect("read");
        assert_eq!(&bytes, b"seven");
    }
}

const SLEEPERS_TEST: &str = "handler_threads_wait_for_faults_in_one_read_not_a_poll_and_a_read";

/// Handler threads of the process's pool wait for a fault in read(2) of the blocking uffd,
/// one syscall a fault, not in poll(2) followed by a read. Their waiting syscall shows in
/// /proc (a child process: its only threads of that name are the pool's).
#[test]
fn handler_threads_wait_for_faults_in_one_read_not_a_poll_and_a_read() {
    common::run_case(
        "sleepers",
        SLEEPERS_TEST,
        std::time::Duration::from_secs(60),
        || {
            let store = Arc::new(udax::MemStore::new(4 * PAGE as u64));
            let options = Options::default().handler_threads(2);
            let mapping = Mapping::new(store, options).expect("map");
            let mut byte = [1u8; 1];
            mapping.read_at(PAGE, &mut byte).expect("read a hole");
            assert_eq!(mapping.stats().zero_faults, 1);
            let waiting = waiting_syscalls_of("udax-fault");
            assert_eq!(waiting.len(), 2, "two handler threads: {waiting:?}");
            assert!(
                waiting.iter().all(|&nr| nr == libc::SYS_preadv2),
                "each sleeps in preadv2 ({}) of the uffd: {waiting:?}",
                libc::SYS_preadv2
            );
            mapping.close().expect("close");
        },
    );
}

/// The syscall each thread whose name starts with `prefix` is blocked in, once all are
/// blocked (bounded: 1,000 looks, 1 ms apart).
fn waiting_syscalls_of(prefix: &str) -> Vec<i64> {
    for _ in 0..1000 {
        let mut numbers = Vec::new();
        let mut running = false;
        for task in std::fs::read_dir("/proc/self/task").expect("tasks") {
            let dir = task.expect("task").path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if !comm.starts_with(prefix) {
                continue;
            }
            let syscall = std::fs::read_to_string(dir.join("syscall")).unwrap_or_default();
            match syscall.split_whitespace().next().map(str::parse::<i64>) {
                Some(Ok(number)) => numbers.push(number),
                _ => running = true,
            }
        }
        if !running {
            return numbers;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("threads {prefix}* never all blocked");
}
