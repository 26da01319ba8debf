//! Helpers shared by the integration tests: the userfaultfd probe that skips loudly (and
//! fails under `CI=true`), Rss and pagemap readers, a store that fails on command, a byte
//! model, a seeded xorshift, and a runner that re-executes the current test binary for
//! code that is expected to die with SIGBUS.
//!
//! Each test binary uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};

use udax::{Error, Extent, Mapping, MemStore, Options, Store, StoreError};

/// The page size every test reasons in.
pub const PAGE: usize = 4096;

/// The environment variable that tells a re-executed test binary which child case to run.
pub const CHILD_ENV: &str = "UDAX_CHILD";

/// Whether the tests run under CI (`CI=true`), where a missing userfaultfd is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether userfaultfd can be used here. Probes once per test binary by mapping a one-page
/// `MemStore`. Where it cannot, prints a loud SKIP line and returns false, except under
/// `CI=true`, where it panics. Any error other than `Error::Uffd` is a failure too.
pub fn require_uffd() -> bool {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    let probe = PROBE.get_or_init(|| {
        let store: Arc<dyn Store> = Arc::new(MemStore::new(PAGE as u64));
        match Mapping::new(store, Options::default()) {
            Ok(mapping) => {
                mapping.close().expect("closing the one-page probe mapping");
                Ok(())
            }
            Err(Error::Uffd(e)) => Err(e.to_string()),
            Err(e) => {
                panic!("probing userfaultfd: Mapping::new failed with a non-uffd error: {e:?}")
            }
        }
    });
    match probe {
        Ok(()) => true,
        Err(why) if in_ci() => panic!("userfaultfd is unavailable under CI=true: {why}"),
        Err(why) => {
            eprintln!(
                "SKIPPED {}: userfaultfd is unavailable ({why}); this test did not run",
                std::thread::current().name().unwrap_or("?")
            );
            false
        }
    }
}

/// Sums the `Rss:` (in KiB) of every VMA in /proc/self/smaps that overlaps
/// `ptr..ptr+len`. Panics if no VMA overlaps (the range is not mapped at all).
pub fn mapping_rss_kib(ptr: *const u8, len: usize) -> u64 {
    let start = ptr as usize;
    let end = start + len;
    let mut text = String::new();
    File::open("/proc/self/smaps")
        .and_then(|mut f| f.read_to_string(&mut text))
        .expect("reading /proc/self/smaps");
    let mut in_range = false;
    let mut vmas = 0;
    let mut total = 0;
    for line in text.lines() {
        if let Some((lo, hi)) = vma_header(line) {
            in_range = lo < end && hi > start;
            vmas += usize::from(in_range);
        } else if in_range {
            if let Some(rest) = line.strip_prefix("Rss:") {
                let kib = rest.trim().trim_end_matches("kB").trim();
                total += kib.parse::<u64>().expect("parsing an Rss: line of smaps");
            }
        }
    }
    assert!(
        vmas > 0,
        "no VMA in /proc/self/smaps overlaps {start:#x}..{end:#x}"
    );
    total
}

/// Parses an smaps VMA header line (`start-end perms offset dev inode [path]`).
fn vma_header(line: &str) -> Option<(usize, usize)> {
    let range = line.split_whitespace().next()?;
    let (lo, hi) = range.split_once('-')?;
    let lo = usize::from_str_radix(lo, 16).ok()?;
    let hi = usize::from_str_radix(hi, 16).ok()?;
    // The second field of a header is the permissions, e.g. "rw-p".
    let perms = line.split_whitespace().nth(1)?;
    (perms.len() == 4).then_some((lo, hi))
}

/// The page-frame number mapped at `addr` per /proc/self/pagemap, or None if nothing is
/// present there. Needs CAP_SYS_ADMIN to see real PFNs; without it the kernel reports 0
/// for every present page, which callers detect with [`pagemap_shows_pfns`].
pub fn pagemap_pfn(addr: usize) -> Option<u64> {
    let file = File::open("/proc/self/pagemap").expect("opening /proc/self/pagemap");
    let mut word = [0u8; 8];
    file.read_exact_at(&mut word, (addr / PAGE * 8) as u64)
        .expect("reading /proc/self/pagemap");
    let word = u64::from_ne_bytes(word);
    let present = word & (1 << 63) != 0;
    present.then_some(word & ((1 << 55) - 1))
}

/// Whether /proc/self/pagemap shows real PFNs to this process (it does for root).
pub fn pagemap_shows_pfns() -> bool {
    let probe = Box::new([1u8; PAGE]);
    let addr = std::hint::black_box(probe.as_ptr()) as usize;
    matches!(pagemap_pfn(addr), Some(pfn) if pfn != 0)
}

/// Where a [`FaultyStore`] fails an operation: nowhere, everywhere, or on one page.
#[derive(Debug, Default)]
pub struct FailAt(AtomicU64);

const FAIL_NOWHERE: u64 = u64::MAX;
const FAIL_EVERYWHERE: u64 = u64::MAX - 1;

impl FailAt {
    fn new() -> Self {
        FailAt(AtomicU64::new(FAIL_NOWHERE))
    }

    /// Fails the operation on every range that touches page `page`.
    pub fn page(&self, page: u64) {
        self.0.store(page, SeqCst);
    }

    /// Fails the operation everywhere.
    pub fn everywhere(&self) {
        self.0.store(FAIL_EVERYWHERE, SeqCst);
    }

    /// Stops failing.
    pub fn heal(&self) {
        self.0.store(FAIL_NOWHERE, SeqCst);
    }

    /// Whether `offset..offset+len` must fail.
    fn hits(&self, offset: u64, len: u64) -> bool {
        match self.0.load(SeqCst) {
            FAIL_NOWHERE => false,
            FAIL_EVERYWHERE => true,
            page => {
                let lo = page * PAGE as u64;
                let hi = lo + PAGE as u64;
                offset < hi && offset + len.max(1) > lo
            }
        }
    }
}

/// A store that forwards to `inner` but fails reads, writes or allocations on command:
/// reads fail with EIO, writes with EIO, and `no_space` makes both `allocate` and `write_at`
/// fail with [`StoreError::NoSpace`] (whichever the fault path uses to allocate).
pub struct FaultyStore<S> {
    /// The store the calls go to when they do not fail.
    pub inner: S,
    /// Where `read_at` fails (EIO).
    pub fail_read: FailAt,
    /// Where `write_at` fails (EIO).
    pub fail_write: FailAt,
    /// Where `allocate` and `write_at` fail with ENOSPC.
    pub no_space: FailAt,
    /// `sync` fails with EIO while this is set anywhere (`everywhere()`), and then, as
    /// Linux does after a failed writeback, forgets every write since the last good sync.
    pub fail_sync: FailAt,
    /// The old bytes under each write since the last sync, newest last, to forget them.
    unsynced: std::sync::Mutex<Vec<(u64, Vec<u8>)>>,
    /// Calls of `sync` that reached this store.
    pub syncs: AtomicU64,
    /// Calls of `read_at` that reached this store.
    pub reads: AtomicU64,
    /// Calls of `write_at` that reached this store.
    pub writes: AtomicU64,
    /// Calls of `allocate` that reached this store.
    pub allocates: AtomicU64,
    /// Failures handed out, of any kind.
    pub failures: AtomicU64,
}

impl<S: Store> FaultyStore<S> {
    /// Wraps `inner`, failing nothing yet.
    pub fn new(inner: S) -> Self {
        FaultyStore {
            inner,
            fail_read: FailAt::new(),
            fail_write: FailAt::new(),
            no_space: FailAt::new(),
            fail_sync: FailAt::new(),
            unsynced: std::sync::Mutex::new(Vec::new()),
            syncs: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            allocates: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    fn eio(&self, op: &'static str, offset: u64) -> StoreError {
        self.failures.fetch_add(1, SeqCst);
        StoreError::Io {
            op,
            offset,
            source: std::io::Error::from_raw_os_error(libc::EIO),
        }
    }

    fn enospc(&self, offset: u64) -> StoreError {
        self.failures.fetch_add(1, SeqCst);
        StoreError::NoSpace { offset }
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn extent(&self, offset: u64) -> Result<Extent, StoreError> {
        self.inner.extent(offset)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.reads.fetch_add(1, SeqCst);
        if self.fail_read.hits(offset, buf.len() as u64) {
            return Err(self.eio("read", offset));
        }
        self.inner.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), StoreError> {
        self.writes.fetch_add(1, SeqCst);
        if self.no_space.hits(offset, buf.len() as u64) {
            return Err(self.enospc(offset));
        }
        if self.fail_write.hits(offset, buf.len() as u64) {
            return Err(self.eio("write", offset));
        }
        let mut old = vec![0u8; buf.len()];
        self.inner.read_at(offset, &mut old)?;
        self.inner.write_at(offset, buf)?;
        let mut unsynced = self.unsynced.lock().unwrap_or_else(|e| e.into_inner());
        unsynced.push((offset, old));
        Ok(())
    }

    fn allocate(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        self.allocates.fetch_add(1, SeqCst);
        if self.no_space.hits(offset, len) {
            return Err(self.enospc(offset));
        }
        self.inner.allocate(offset, len)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        self.inner.punch_hole(offset, len)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.syncs.fetch_add(1, SeqCst);
        let mut unsynced = self.unsynced.lock().unwrap_or_else(|e| e.into_inner());
        if self.fail_sync.hits(0, u64::MAX) {
            // The writes since the last good sync are lost, newest first.
            for (offset, old) in unsynced.drain(..).rev() {
                self.inner.write_at(offset, &old)?;
            }
            return Err(self.eio("sync", 0));
        }
        unsynced.clear();
        self.inner.sync()
    }

    fn allocated_bytes(&self) -> Option<u64> {
        self.inner.allocated_bytes()
    }
}

/// The bytes a store should hold, kept beside the mapping under test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    /// Expected contents.
    pub bytes: Vec<u8>,
}

impl Model {
    /// A model of `len` zero bytes (an all-hole store).
    pub fn zeroed(len: usize) -> Self {
        Model {
            bytes: vec![0; len],
        }
    }

    /// Records a write.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        self.bytes[offset..offset + data.len()].copy_from_slice(data);
    }

    /// Asserts `actual` equals the model, naming the first differing byte, how many differ
    /// and in how many pages (never dumping megabytes).
    #[track_caller]
    pub fn assert_matches(&self, actual: &[u8], what: &str) {
        assert_bytes_eq(actual, &self.bytes, what);
    }
}

/// Asserts two byte slices are equal, naming the first differing byte, how many differ
/// and in how many pages.
#[track_caller]
pub fn assert_bytes_eq(actual: &[u8], expected: &[u8], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    if actual == expected {
        return;
    }
    let mut first = None;
    let mut bytes = 0usize;
    let mut pages = std::collections::BTreeSet::new();
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        if a != e {
            first.get_or_insert((i, *a, *e));
            bytes += 1;
            pages.insert(i / PAGE);
        }
    }
    let (i, a, e) = first.expect("slices differ somewhere");
    let some_pages: Vec<_> = pages.iter().take(16).collect();
    panic!(
        "{what}: {bytes} bytes differ in {} pages (first pages {some_pages:?}); first at \
         offset {i} (page {}, byte {}): got {a:#04x}, expected {e:#04x}",
        pages.len(),
        i / PAGE,
        i % PAGE
    );
}

/// Reads a whole file through a freshly opened descriptor (`pread`), independent of any
/// mapping or store object.
pub fn read_file(path: &Path) -> Vec<u8> {
    let file = File::open(path).expect("opening the store file for a direct read");
    let len = file.metadata().expect("stat of the store file").len() as usize;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, 0)
        .expect("pread of the whole store file");
    bytes
}

/// A deterministic xorshift64* generator (tests must be reproducible from their seed).
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from a non-zero-ized seed.
    pub fn new(seed: u64) -> Self {
        XorShift((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The child case this process was started for, if it is a re-executed child.
pub fn child_case() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// Re-executes the current test binary to run only `test_name` with `UDAX_CHILD=case`, and
/// returns its output. `test_name` is the test's full path inside its test binary (for a
/// top-level `#[test] fn foo` in tests/x.rs, `"foo"`).
pub fn run_child(test_name: &str, case: &str) -> Output {
    run_child_with_env(test_name, case, &[])
}

/// This test binary, run again for `test_name` alone with `case` in the child's
/// environment (and `env`).
fn child_command(test_name: &str, case: &str, env: &[(&str, &str)]) -> Command {
    let exe = std::env::current_exe().expect("current_exe of the test binary");
    let mut command = Command::new(exe);
    // --include-ignored: an ignored test run with --ignored runs its child case too.
    command
        .args([
            "--exact",
            test_name,
            "--nocapture",
            "--test-threads=1",
            "--include-ignored",
        ])
        .env(CHILD_ENV, case)
        .env("RUST_BACKTRACE", "0")
        .envs(env.iter().copied());
    command
}

/// [`run_child`] with extra environment variables for the child.
pub fn run_child_with_env(test_name: &str, case: &str, env: &[(&str, &str)]) -> Output {
    child_command(test_name, case, env)
        .output()
        .expect("spawning the child test process")
}

/// [`run_child_with_env`], but a child still running after `limit` is killed (SIGKILL):
/// a hang becomes a failure the parent can report instead of a test that never ends.
pub fn run_child_within(
    test_name: &str,
    case: &str,
    env: &[(&str, &str)],
    limit: std::time::Duration,
) -> Output {
    let dir = tempfile::tempdir().expect("tempdir for the child's output");
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = child_command(test_name, case, env)
        .stdout(std::fs::File::create(&out).expect("child stdout file"))
        .stderr(std::fs::File::create(&err).expect("child stderr file"))
        .spawn()
        .expect("spawning the child test process");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            break child.wait().expect("reaping the killed child");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let mut stderr = std::fs::read(&err).unwrap_or_default();
    if started.elapsed() > limit {
        stderr.extend_from_slice(format!("\n[killed after {limit:?}: it hung]\n").as_bytes());
    }
    Output {
        status,
        stdout: std::fs::read(&out).unwrap_or_default(),
        stderr,
    }
}

/// Runs `body` as the child case `case` of the test `test_name`: in the parent, re-executes
/// the test binary for it (killed after `limit`), asserts it passed and echoes what it
/// printed; in the child, runs it. Skips (loudly) without userfaultfd, outside CI.
pub fn run_case(case: &str, test_name: &str, limit: std::time::Duration, body: fn()) {
    if !require_uffd() {
        return;
    }
    match child_case().as_deref() {
        Some(c) if c == case => {
            body();
            say("CASE DONE");
        }
        Some(_) => {}
        None => {
            let output = run_child_within(test_name, case, &[], limit);
            assert_child_passed(&output, "CASE DONE");
            print!("{}", String::from_utf8_lossy(&output.stdout));
        }
    }
}

/// A child's stdout, stderr and status, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status {:?} (signal {:?})\n--- child stdout ---\n{}\n--- child stderr ---\n{}",
        output.status,
        output.status.signal(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Asserts the child was killed by SIGBUS after printing `marker` (so it died at the
/// access under test, not before it) and without printing `"SURVIVED"`.
#[track_caller]
pub fn assert_died_of_sigbus(output: &Output, marker: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(marker),
        "the child never reached {marker:?}: {}",
        describe(output)
    );
    assert!(
        !stdout.contains("SURVIVED"),
        "the child survived the access: {}",
        describe(output)
    );
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGBUS),
        "the child should have died of SIGBUS: {}",
        describe(output)
    );
}

/// Asserts the child exited 0 and printed `marker` (its own assertions passed).
#[track_caller]
pub fn assert_child_passed(output: &Output, marker: &str) {
    assert!(
        output.status.success(),
        "the child failed: {}",
        describe(output)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(marker),
        "the child exited 0 without reaching {marker:?}: {}",
        describe(output)
    );
}

/// Prints a line to stdout and flushes it, so a parent sees it even if the next
/// instruction kills this process.
pub fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("writing to stdout");
    out.flush().expect("flushing stdout");
}

/// Disables core dumps in this process (children that die of SIGBUS on purpose).
pub fn no_core_dumps() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads one `struct rlimit`, which `zero` is, for the duration of the call.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
    assert_eq!(
        rc,
        0,
        "setrlimit(RLIMIT_CORE, 0): {}",
        std::io::Error::last_os_error()
    );
}

/// Reads one byte of the mapping with a volatile load (the compiler may not elide or merge it).
///
/// # Safety
/// `ptr..ptr+offset+1` must lie inside a live mapping.
pub unsafe fn peek(ptr: *const u8, offset: usize) -> u8 {
    // SAFETY: the caller guarantees `ptr + offset` is inside a live mapping.
    unsafe { std::ptr::read_volatile(ptr.add(offset)) }
}

/// Writes one byte of the mapping with a volatile store.
///
/// # Safety
/// `ptr..ptr+offset+1` must lie inside a live mapping that nothing else reads or writes
/// concurrently at that byte.
pub unsafe fn poke(ptr: *mut u8, offset: usize, value: u8) {
    // SAFETY: the caller guarantees `ptr + offset` is inside a live mapping.
    unsafe { std::ptr::write_volatile(ptr.add(offset), value) }
}

/// Copies the whole mapping out with volatile loads, one byte at a time. Slow but never
/// lets the compiler assume anything about memory the fault handler fills.
pub fn snapshot(mapping: &Mapping) -> Vec<u8> {
    let ptr = mapping.as_ptr();
    let mut out = vec![0u8; mapping.len()];
    for (i, byte) in out.iter_mut().enumerate() {
        // SAFETY: `i < mapping.len()` and `mapping` is alive for the whole loop.
        *byte = unsafe { peek(ptr, i) };
    }
    out
}

/// A file-backed store inside a fresh temporary directory (kept alive by the returned guard).
pub struct TempStore {
    /// The temporary directory; removing it removes the file.
    pub dir: tempfile::TempDir,
    /// The store file's path.
    pub path: std::path::PathBuf,
}

impl TempStore {
    /// A path for a store file of the given name in a new temporary directory.
    pub fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let path = dir.path().join(name);
        TempStore { dir, path }
    }
}

/// write(2) of `len` bytes at `ptr` into a pipe: the kernel reads the mapping.
pub fn kernel_read(ptr: *const u8, len: usize) -> Result<usize, i32> {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two fds, owned right after.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both fds are fresh and ours.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the kernel reads `ptr..ptr+len` (inside the live mapping) and fails with
    // EFAULT rather than touching anything else.
    let rc = unsafe { libc::write(write_end.as_raw_fd(), ptr.cast(), len) };
    drop(read_end);
    if rc < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(rc as usize)
    }
}
