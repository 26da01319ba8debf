//! What a handler thread does when its own loop fails: poll(2) or read(2) of the
//! userfaultfd, not a fault (the engine answers those). A thread that just returned would
//! leave every later fault of its regions waiting forever; this one never does.
//!
//! Policy ([`on_serve_error`]): every failure is recorded in each region the thread serves,
//! so the next flush of each reports it. The thread retries after a backoff (1 ms,
//! doubling, [`RETRIES`] times: about a quarter of a second in all, which rides out a
//! transient ENOMEM), still stoppable while it waits. If every retry fails, it gives up
//! on the uffd ([`give_up`]): each region is abandoned (`engine::abandon`: pages not
//! present are poisoned, so their accesses get SIGBUS, present ones are made writable and
//! Dirty), every later flush returns [`Error::HandlerFailed`], and the thread only waits
//! for its stop.
//!
//! Failures can be injected for tests ([`inject_serve_failures`]): the next reads of any
//! uffd by any handler thread of the process fail.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::time::Duration;

use crate::engine::abandon::abandon;
use crate::engine::region::Region;
use crate::error::Error;

/// Failures in a row a handler thread retries before it gives up on its uffd.
pub(crate) const RETRIES: u32 = 8;

/// The first wait before a retry; each next one doubles it.
const FIRST_BACKOFF: Duration = Duration::from_millis(1);

/// Reads still to fail, and with which errno (testing only).
static INJECTED: AtomicU32 = AtomicU32::new(0);
static INJECTED_ERRNO: AtomicI32 = AtomicI32::new(libc::EIO);

/// Testing only: the next `count` reads of a userfaultfd by handler threads (any mapping
/// in this process) fail with `errno`, as if read(2) had (`u32::MAX`: all of them; 0
/// stops). Each one is handled as a real failure would be.
#[doc(hidden)]
pub fn inject_serve_failures(count: u32, errno: i32) {
    INJECTED_ERRNO.store(errno, Ordering::Relaxed);
    INJECTED.store(count, Ordering::Release);
}

/// An injected failure for this read, if one is due.
pub(crate) fn injected() -> Option<Error> {
    let take = |left: u32| match left {
        0 => None,
        u32::MAX => Some(u32::MAX),
        left => Some(left - 1),
    };
    INJECTED
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, take)
        .ok()
        .map(|_| Error::Os {
            op: "read(userfaultfd)",
            source: io::Error::from_raw_os_error(INJECTED_ERRNO.load(Ordering::Relaxed)),
        })
}

/// What a handler thread does after a failure of its loop.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Wait this long (or until stopped), then poll again.
    Retry(Duration),
    /// Give up on the uffd ([`give_up`]) and wait only for the stop.
    GiveUp,
}

/// A handler thread's poll or read of its uffd failed with `error`, the `failures`-th
/// time in a row: records it in every region it serves (the next flush of each reports
/// it) and says what to do next.
pub(crate) fn on_serve_error(regions: &[Arc<Region>], error: &Error, failures: u32) -> Next {
    for region in regions {
        region.record_error(0, error);
    }
    if failures > RETRIES {
        return Next::GiveUp;
    }
    Next::Retry(FIRST_BACKOFF * 2u32.pow(failures.saturating_sub(1)))
}

/// Gives up on the uffd whose reads keep failing with `error`: abandons every region it
/// serves, so that each access answers without a handler (SIGBUS where a page is missing).
pub(crate) fn give_up(regions: &[Arc<Region>], error: &Error) {
    let errno = match error {
        Error::Os { source, .. } => source.raw_os_error(),
        Error::Uffd(crate::sys::uffd::UffdError::Ioctl { source, .. }) => source.raw_os_error(),
        _ => None,
    };
    for region in regions {
        abandon(region, errno.unwrap_or(libc::EIO));
    }
}

/// Waits until `stop_fd` is readable or `timeout` has passed (`None`: no timeout);
/// returns whether a stop was asked for.
pub(crate) fn wait_for_stop(stop_fd: libc::c_int, timeout: Option<Duration>) -> bool {
    let millis = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as libc::c_int);
    let mut fd = libc::pollfd {
        fd: stop_fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `fd` is one initialised pollfd.
        let ready = unsafe { libc::poll(&mut fd, 1, millis) };
        if ready > 0 {
            return true;
        }
        if ready == 0 {
            return false;
        }
        // poll itself failing: wait a little without it, and look again.
        std::thread::sleep(timeout.unwrap_or(Duration::from_millis(10)));
        if timeout.is_some() {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_then_give_up() {
        let error = Error::Os {
            op: "poll",
            source: io::Error::from_raw_os_error(libc::ENOMEM),
        };
        assert_eq!(
            on_serve_error(&[], &error, 1),
            Next::Retry(Duration::from_millis(1))
        );
        assert_eq!(
            on_serve_error(&[], &error, RETRIES),
            Next::Retry(Duration::from_millis(128))
        );
        assert_eq!(on_serve_error(&[], &error, RETRIES + 1), Next::GiveUp);
    }
}
