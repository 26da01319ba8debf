//! futex(2) wait and wake on a 32-bit atomic: the one sleeping primitive udax uses on
//! fault paths (no allocation, no user-space lock: safe in a signal handler).

use std::sync::atomic::AtomicU32;

/// Sleeps while `word` equals `expected` (or returns spuriously).
pub(crate) fn wait(word: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT reads the aligned u32 behind `word`, which outlives the call; a
    // null timeout means no timeout. Errors (EAGAIN: value changed, EINTR) just return.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

/// Wakes every thread sleeping on `word`.
pub(crate) fn wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the address of `word` as a key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
}
