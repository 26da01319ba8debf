//! The read-ahead and drop-behind of a [`FileStore`](crate::FileStore)'s page cache, done
//! off the fault path by one background thread per store (the kernel's async read-ahead
//! and its reclaim of a file's used pages, for a user-space server).
//!
//! **Read-ahead.** The fault path only records each read ([`FileAhead::note_read`]:
//! atomics, and a futex wake when it asks for something; no lock, no allocation, so it is
//! signal-safe for in-thread resolution). A read that continues the last one (a
//! sequential fault) and has come within [`DEPTH`] windows of what was asked ahead (one
//! under a budget, and for reads of 2 MiB) asks for the next window, sized by [`Ramp`]
//! (128 KiB doubling to 2 MiB); the thread reads it into the page cache with
//! `posix_fadvise(WILLNEED)` while the faults go on. Windows asked before the thread wakes
//! join the pending request if they continue it (else the newer replaces it), so about
//! `DEPTH` windows are in flight. Random reads ask nothing. Windows of our own although
//! the kernel reads a sequential `pread` ahead by itself: measured, its read-ahead alone
//! was 2-3x slower in half the runs, ours kept every run within 10% (see [`DEPTH`]).
//!
//! **Drop-behind, under a budget.** A mapping with a resident budget holds the bytes it
//! read in its own pages; their page-cache copy costs the machine memory on top of the
//! budget. [`FileAhead::bound`] turns the file's own read-ahead off (`FADV_RANDOM`: a read
//! brings in only its own pages; ours alone reads ahead) and, every `trim_every` bytes
//! read or written, has the thread drop the file's cached pages (`FADV_DONTNEED`) except
//! the window the sequential run reads in and the one asked ahead. DONTNEED drops only
//! clean pages, so a trim first writes back the dirty ones (those an eviction or a flush
//! wrote) and waits for them (`sync_file_range`, on the thread: no fault waits). It does
//! so through an open file of its own, whose writeback-error cursor is its own: an error
//! it meets is still reported by the store's `sync` (fdatasync checks the store's cursor).
//!
//! Races: every value here is advice. Two readers racing on the atomics may ask a window
//! twice or skip one, and a trim may drop a page a fault is about to read (which then
//! reads it from the disk): speed changes, never bytes. A page a read holds is not dropped
//! (the kernel skips pages in use) and a dirty one is written before it is dropped.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::store::read_ahead::{MAX_WINDOW, Ramp};

/// Pages are 4 KiB: windows are asked in whole pages.
const PAGE: u64 = crate::PAGE_SIZE as u64;

/// Windows a sequential run keeps asked ahead of it without a budget: 4 of 2 MiB, the 8
/// MiB of this machine's `read_ahead_kb`. Measured with cold sequential `pread`s of 1 GiB
/// (`scripts/read-ahead-probe.py`), ns a page: 4 windows 2,078-2,353 at 2 MiB reads and
/// 3,312-3,573 at 64 KiB, 1 window 2,276-3,623 and 3,537-3,573, the kernel's read-ahead
/// alone 1,953-5,896 and 2,643-8,820 (half its runs 2-3x slower).
const DEPTH: u64 = 4;

/// What the fault path and the thread share.
#[derive(Debug, Default)]
struct Shared {
    /// The length of the file mapped (windows stop there).
    len: u64,
    /// Which reads are sequential and the window size.
    ramp: Ramp,
    /// End of the bytes asked ahead of the sequential run (0: none).
    ahead_end: AtomicU64,
    /// The pending window: start page << 16 | pages (0: none). One word, so the thread
    /// never sees the start of one request with the length of another.
    want: AtomicU64,
    /// Whether a trim is pending.
    trim: AtomicBool,
    /// Bytes read or written between trims (0: no drop-behind).
    trim_every: AtomicU64,
    /// Bytes read or written since the last trim began.
    since_trim: AtomicU64,
    /// Bumped when a trim ends; a writer too far ahead of the trims sleeps on it.
    trimmed: AtomicU32,
    /// Bumped by every request; the thread sleeps on it (a futex word).
    word: AtomicU32,
    /// Whether the caller reads runs of 2 MiB reads ahead itself ([`FileAhead::leave_huge_runs`]).
    caller_reads_huge: AtomicBool,
    /// Whether the thread runs (before, nothing is asked).
    running: AtomicBool,
    /// The process the thread runs in (a forked child has no thread to wait for).
    pid: AtomicU32,
    /// Tells the thread to end.
    stop: AtomicBool,
}

/// The background read-ahead of one file store.
#[derive(Debug)]
pub(crate) struct FileAhead {
    shared: Arc<Shared>,
    /// The thread, once started; joined on drop.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl FileAhead {
    /// Read-ahead for a file of `len` bytes; its thread starts with [`FileAhead::start`].
    pub(crate) fn new(len: u64) -> FileAhead {
        FileAhead {
            shared: Arc::new(Shared {
                len,
                ..Shared::default()
            }),
            thread: Mutex::new(None),
        }
    }

    /// Starts the thread over `file` unless it runs. The thread opens the file anew
    /// (read-only, through /proc/self/fd): its own open file has its own writeback-error
    /// cursor, so its waits for writeback never take an error from the store's `sync`.
    /// On an ordinary thread only (it spawns). A failure leaves the store without
    /// read-ahead beyond the kernel's and without drop-behind: slower or bigger, nothing else.
    pub(crate) fn start(&self, file: &File) {
        let mut thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        if thread.is_some() {
            return;
        }
        let own = format!("/proc/self/fd/{}", file.as_raw_fd());
        let Ok(file) = File::open(own) else { return };
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name("udax-ahead".into())
            .spawn(move || serve(&shared, &file));
        if let Ok(handle) = spawned {
            *thread = Some(handle);
            self.shared.pid.store(std::process::id(), SeqCst);
            self.shared.running.store(true, SeqCst);
        }
    }

    /// Drop-behind for a mapping under a budget of `budget` bytes: the file's own
    /// read-ahead off, and a trim every 1/64 of the budget (at least 256 KiB) read or
    /// written. The smallest budget of the mappings over the store wins.
    pub(crate) fn bound(&self, file: &File, budget: u64) {
        let every = (budget / 64).max(256 << 10);
        let old = self.shared.trim_every.load(Relaxed);
        if old == 0 || every < old {
            self.shared.trim_every.store(every, Relaxed);
        }
        // Advice only: without it, reads read ahead on their own, which trims drop.
        let _ = fadvise(file, 0, 0, libc::POSIX_FADV_RANDOM);
    }

    /// Leaves runs of 2 MiB reads to the caller, which reads them ahead itself
    /// (`Serving::reads_ahead`): no window is asked ahead of them (it would be read twice:
    /// into the cache, and by the caller's own read of it). Sticky: one mapping of the store
    /// that reads ahead is enough (another, in-thread, mapping's 2 MiB runs are then read
    /// one range at a time: slower, nothing else).
    pub(crate) fn leave_huge_runs(&self) {
        self.shared.caller_reads_huge.store(true, Relaxed);
    }

    /// Whether the caller reads ahead of sequential reads of `len` bytes itself.
    pub(crate) fn caller_reads_ahead(&self, len: u64) -> bool {
        len >= MAX_WINDOW && self.shared.caller_reads_huge.load(Relaxed)
    }

    /// Whether reads of the file read ahead on their own (no budget bounds its cache).
    pub(crate) fn kernel_reads_ahead(&self) -> bool {
        self.shared.trim_every.load(Relaxed) == 0
    }

    /// Records a read of `offset..offset + len` from the fault path and asks for what it
    /// calls for: the next window if it is sequential, a trim if one is due. Returns
    /// whether it is sequential (it continues the last read). Signal-safe.
    pub(crate) fn note_read(&self, offset: u64, len: u64) -> bool {
        let shared = &*self.shared;
        let sequential = shared.ramp.follows(offset, len);
        if !sequential {
            shared.ramp.reset();
        }
        if !shared.running.load(Relaxed) {
            return sequential;
        }
        let ahead_here = sequential && !self.caller_reads_ahead(len);
        let ask = self.count(len) | (ahead_here && self.ask_ahead(offset + len, len));
        if ask {
            wake(shared);
        }
        sequential
    }

    /// Records `len` bytes written (they fill the page cache too, dirty, and a trim can
    /// drop them only once written back). A writer that has written two trim intervals
    /// since the last trim began waits for it to end (at most 50 ms: the trims bound the
    /// cache only if they keep up with the writes, and writeback is slower than pwrite).
    /// Signal-safe: atomics and futex calls.
    pub(crate) fn note_write(&self, len: u64) {
        let shared = &*self.shared;
        if !shared.running.load(Relaxed) {
            return;
        }
        if self.count(len) {
            wake(shared);
        }
        let every = shared.trim_every.load(Relaxed);
        let trimmed = shared.trimmed.load(SeqCst);
        if every != 0
            && shared.since_trim.load(SeqCst) >= 2 * every
            && shared.pid.load(SeqCst) == std::process::id()
        {
            shared.trim.store(true, SeqCst);
            wake(shared);
            futex_wait(&shared.trimmed, trimmed, Some(50));
        }
    }

    /// Counts `len` bytes toward the next trim; whether one was just asked.
    fn count(&self, len: u64) -> bool {
        let shared = &*self.shared;
        let every = shared.trim_every.load(Relaxed);
        if every == 0 || shared.since_trim.fetch_add(len, Relaxed) + len < every {
            return false;
        }
        !shared.trim.swap(true, SeqCst)
    }

    /// How many windows a sequential run of reads of `len` bytes keeps asked ahead of it:
    /// [`DEPTH`]; one under a budget (whose page cache the trims keep to the run's window
    /// and the one ahead), and one for reads of a whole window (2 MiB faults, where four
    /// measured slower: DESIGN.md, "Read-ahead").
    fn depth(&self, len: u64) -> u64 {
        if self.kernel_reads_ahead() && len < MAX_WINDOW {
            DEPTH
        } else {
            1
        }
    }

    /// A sequential run of reads of `len` bytes is at `end`: asks the next window (at
    /// least one read long) if `end` has come within [`FileAhead::depth`] windows of what
    /// was asked, or the first one if nothing near was. Whether it asked.
    fn ask_ahead(&self, end: u64, len: u64) -> bool {
        let shared = &*self.shared;
        let depth = self.depth(len);
        let ahead = shared.ahead_end.load(Relaxed);
        let start = if ahead < end || ahead > end + (depth + 1) * MAX_WINDOW.max(len) {
            // A new run, or another's window: start again from here.
            shared.ramp.reset();
            end
        } else {
            ahead
        };
        if start - end > depth * shared.ramp.window().max(len) {
            return false; // still more than `depth` windows ahead: nothing to ask yet
        }
        let window = shared.ramp.grow().max(len);
        let stop = (start + window).min(shared.len);
        if stop <= start
            || shared
                .ahead_end
                .compare_exchange(ahead, stop, Relaxed, Relaxed)
                .is_err()
        {
            return false; // at the end, or another reader asked first
        }
        want(shared, start, stop);
        true
    }
}

/// Makes `start..stop` pending: appended to the pending request if it continues it (a run
/// asks several windows before the thread wakes: none is lost), else in its place.
fn want(shared: &Shared, start: u64, stop: u64) {
    let (first, pages) = (start / PAGE, (stop - start).div_ceil(PAGE));
    let mut pending = shared.want.load(Relaxed);
    loop {
        let (at, had) = (pending >> 16, pending & 0xffff);
        let next = if pending != 0 && at + had == first && had + pages <= 0xffff {
            at << 16 | (had + pages)
        } else {
            first << 16 | pages
        };
        match shared
            .want
            .compare_exchange_weak(pending, next, Relaxed, Relaxed)
        {
            Ok(_) => return,
            Err(now) => pending = now,
        }
    }
}

impl Drop for FileAhead {
    fn drop(&mut self) {
        let thread = self.thread.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = thread.take() {
            self.shared.stop.store(true, SeqCst);
            wake(&self.shared);
            let _ = handle.join();
        }
    }
}

/// The thread: serves the pending window and trim, then sleeps until the next request.
fn serve(shared: &Shared, file: &File) {
    loop {
        let seen = shared.word.load(SeqCst);
        if shared.stop.load(SeqCst) {
            return;
        }
        // The trim first: it is quick, and a WILLNEED may wait for room in the queue.
        if shared.trim.swap(false, SeqCst) {
            shared.since_trim.store(0, SeqCst);
            trim(shared, file);
            shared.trimmed.fetch_add(1, SeqCst);
            futex_wake(&shared.trimmed, i32::MAX);
        }
        let want = shared.want.swap(0, SeqCst);
        if want != 0 {
            let (start, pages) = ((want >> 16) * PAGE, want & 0xffff);
            let _ = fadvise(file, start, pages * PAGE, libc::POSIX_FADV_WILLNEED);
        }
        if want == 0 {
            futex_wait(&shared.word, seen, None);
        }
    }
}

/// Drops the file's cached pages but the sequential run's window and the one asked ahead,
/// after writing back and waiting for the dirty ones (DONTNEED only drops clean pages).
fn trim(shared: &Shared, file: &File) {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: sync_file_range takes an open fd and integers; it touches no memory of ours.
    // Its error (a failed writeback) goes to this thread's own open file, not the store's.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, flags) };
    let (at, ahead) = (shared.ramp.last_end(), shared.ahead_end.load(Relaxed));
    let keep = if ahead >= at && ahead - at <= 2 * MAX_WINDOW {
        at.saturating_sub(MAX_WINDOW) & !(PAGE - 1)..ahead
    } else {
        0..0
    };
    for (from, to) in [(0, keep.start), (keep.end, shared.len)] {
        if to > from {
            let _ = fadvise(file, from, to - from, libc::POSIX_FADV_DONTNEED);
        }
    }
}

/// Bumps the futex word and wakes the thread. Signal-safe (an atomic and a syscall).
fn wake(shared: &Shared) {
    shared.word.fetch_add(1, SeqCst);
    futex_wake(&shared.word, 1);
}

/// Wakes up to `count` sleepers on `word`.
fn futex_wake(word: &AtomicU32, count: i32) {
    // SAFETY: FUTEX_WAKE on a live word; the kernel writes no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            count,
        );
    }
}

/// Sleeps while `word` holds `seen`, at most `timeout_ms` if given (spurious wake-ups
/// are fine: every caller looks again).
fn futex_wait(word: &AtomicU32, seen: u32, timeout_ms: Option<i64>) {
    let timeout = timeout_ms.map(|ms| libc::timespec {
        tv_sec: ms / 1000,
        tv_nsec: (ms % 1000) * 1_000_000,
    });
    let timeout = timeout
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT on a live word, with a timespec that outlives the call or none;
    // the kernel only reads them.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            seen,
            timeout,
        );
    }
}

/// posix_fadvise(2) over `offset..offset + len` (0: to the end of the file).
pub(crate) fn fadvise(
    file: &File,
    offset: u64,
    len: u64,
    advice: libc::c_int,
) -> std::io::Result<()> {
    let off = |v: u64| libc::off_t::try_from(v).unwrap_or(libc::off_t::MAX);
    // SAFETY: posix_fadvise takes an open fd and integers; it touches no memory of ours.
    match unsafe { libc::posix_fadvise(file.as_raw_fd(), off(offset), off(len), advice) } {
        0 => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pending window as (start, len) in bytes, taken.
    fn take(ahead: &FileAhead) -> Option<(u64, u64)> {
        let want = ahead.shared.want.swap(0, SeqCst);
        (want != 0).then(|| ((want >> 16) * PAGE, (want & 0xffff) * PAGE))
    }

    #[test]
    fn under_a_budget_a_run_asks_one_growing_window_ahead_and_random_reads_nothing() {
        let ahead = FileAhead::new(1 << 30);
        ahead.shared.running.store(true, SeqCst); // no thread: the test takes the requests
        ahead.shared.trim_every.store(1 << 40, SeqCst); // a budget, whose trims never come
        // (A first read at 0 counts as sequential, as the kernel's does: start elsewhere.)
        assert!(
            !ahead.note_read(10 * PAGE, PAGE),
            "a first read is not sequential"
        );
        assert_eq!(take(&ahead), None);
        assert!(ahead.note_read(11 * PAGE, PAGE));
        assert_eq!(
            take(&ahead),
            Some((12 * PAGE, 128 << 10)),
            "the first window"
        );
        // The run is within one window of what was asked: the next, twice as big, from
        // where the last ended; then nothing until the run comes within a window again.
        let mut asked = Vec::new();
        for page in 12..1000 {
            ahead.note_read(page * PAGE, PAGE);
            asked.extend(take(&ahead).map(|window| (page, window)));
        }
        let windows: Vec<_> = asked.iter().map(|&(_, window)| window).collect();
        assert_eq!(
            windows[0],
            (12 * PAGE + (128 << 10), 256 << 10),
            "{asked:?}"
        );
        assert!(
            windows.windows(2).all(|w| w[1].0 == w[0].0 + w[0].1),
            "{asked:?}"
        );
        assert!(
            windows.iter().all(|&(_, len)| len <= MAX_WINDOW),
            "{asked:?}"
        );
        assert!(
            asked
                .iter()
                .all(|&(page, (start, _))| start - (page + 1) * PAGE <= MAX_WINDOW),
            "asked only within one window of the end: {asked:?}"
        );
        assert!(
            asked.len() < 10,
            "one request per window, not per read: {asked:?}"
        );
        for page in [5000, 17, 90_000, 3] {
            assert!(!ahead.note_read(page * PAGE, PAGE));
        }
        assert_eq!(take(&ahead), None, "random reads ask nothing");
    }

    #[test]
    fn without_a_budget_a_run_keeps_depth_windows_asked_none_lost_before_a_wake() {
        let ahead = FileAhead::new(1 << 30);
        ahead.shared.running.store(true, SeqCst);
        // The thread never wakes in between: the windows asked pile up in one request.
        for page in 10..20 {
            ahead.note_read(page * PAGE, PAGE);
        }
        let asked = ahead.shared.ahead_end.load(SeqCst);
        assert!(
            asked > 20 * PAGE + 2 * MAX_WINDOW,
            "deeper than one window: {asked}"
        );
        assert_eq!(
            take(&ahead),
            Some((12 * PAGE, asked - 12 * PAGE)),
            "one request from the first window to the last asked"
        );
        // Then, taken after every read: contiguous windows, never more than DEPTH ahead.
        for page in 20..5000 {
            ahead.note_read(page * PAGE, PAGE);
            if let Some((start, len)) = take(&ahead) {
                assert_eq!(start + len, ahead.shared.ahead_end.load(SeqCst));
                assert!(
                    start - (page + 1) * PAGE <= DEPTH * MAX_WINDOW,
                    "page {page}"
                );
                assert!(len <= MAX_WINDOW, "page {page}: {len}");
            }
        }
        let lead = ahead.shared.ahead_end.load(SeqCst) - 5000 * PAGE;
        assert!(lead > (DEPTH - 1) * MAX_WINDOW, "{lead}");
        // Reads of a whole window (2 MiB faults) keep one asked ahead.
        let from = 1 << 29;
        for read in 0..20 {
            ahead.note_read(from + read * MAX_WINDOW, MAX_WINDOW);
            let end = from + (read + 1) * MAX_WINDOW;
            let lead = ahead.shared.ahead_end.load(SeqCst).saturating_sub(end);
            assert!(lead <= MAX_WINDOW, "read {read}: {lead}");
        }
        assert!(
            ahead.shared.ahead_end.load(SeqCst) > from,
            "and it does ask"
        );
    }

    #[test]
    fn trims_are_asked_only_under_a_budget_every_interval() {
        let ahead = FileAhead::new(1 << 30);
        ahead.shared.running.store(true, SeqCst);
        ahead.note_read(1 << 20, 1 << 20);
        assert!(!ahead.shared.trim.load(SeqCst), "no budget, no trim");
        ahead.shared.trim_every.store(1 << 20, SeqCst);
        for page in 0..255 {
            ahead.note_read(page * 7 * PAGE, PAGE);
        }
        assert!(!ahead.shared.trim.load(SeqCst), "255 pages < 1 MiB");
        ahead.note_read(9 * PAGE, PAGE);
        assert!(ahead.shared.trim.load(SeqCst), "1 MiB read: a trim");
    }
}
