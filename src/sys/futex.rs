//! futex(2) wait and wake on a 32-bit atomic: the one sleeping primitive udax uses on
//! fault paths (no allocation, no user-space lock: safe in a signal handler).

use std::sync::atomic::AtomicU32;
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
