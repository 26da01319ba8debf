//! futex(2) wait and wake on a 32-bit atomic: the one sleeping primitive udax uses on
//! fault paths (no allocation, no user-space lock: safe in a signal handler).

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;

/// Sleeps while `word` equals `expected`, at most `timeout` if given (or returns
/// spuriously: every caller looks again).
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let timeout = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let timeout = timeout
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT reads the aligned u32 behind `word`, which outlives the call, and
    // the timespec, which does too (or none: no timeout). Errors (EAGAIN: value changed,
    // EINTR, ETIMEDOUT) just return.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            timeout,
        );
    }
}

/// Wakes up to `count` threads sleeping on `word` (`i32::MAX`: all).
pub(crate) fn wake(word: &AtomicU32, count: i32) {
    // SAFETY: FUTEX_WAKE only uses the address of `word` as a key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            count,
        );
    }
}

/// The threads sleeping (or about to) on a futex word, counted so that a waker makes the
/// FUTEX_WAKE call only when one is: a fault path with no waiter makes no syscall.
///
/// The protocol, all SeqCst: a waiter counts itself ([`Waiters::enter`]) before it reads
/// the word it sleeps on, and sleeps only while the word still holds what it read (the
/// futex compares atomically); a waker changes the word, then looks ([`Waiters::wake`]).
/// If the waker sees no waiter, the waiter's count comes later in the single order, so
/// its read of the word comes after the change and sees it: it does not sleep on the old
/// value. Otherwise the waker wakes it.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    count: AtomicU32,
    /// FUTEX_WAKE calls made (tests assert that a change with no waiter makes none).
    #[cfg(test)]
    pub(crate) wakes: AtomicU32,
}

/// A counted waiter; dropping it counts it out.
pub(crate) struct Waiting<'a> {
    waiters: &'a Waiters,
}

impl Waiters {
    /// Counts the caller in, before its first read of the word it will sleep on.
    pub(crate) fn enter(&self) -> Waiting<'_> {
        self.count.fetch_add(1, SeqCst);
        Waiting { waiters: self }
    }

    /// Wakes every thread sleeping on `word`, which the caller has just changed, if any
    /// waiter is counted.
    pub(crate) fn wake(&self, word: &AtomicU32) {
        if self.count.load(SeqCst) != 0 {
            #[cfg(test)]
            self.wakes.fetch_add(1, SeqCst);
            wake(word, i32::MAX);
        }
    }

    /// Waiters counted now.
    #[cfg(test)]
    pub(crate) fn count(&self) -> u32 {
        self.count.load(SeqCst)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.waiters.count.fetch_sub(1, SeqCst);
    }
}
