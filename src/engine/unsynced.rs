//! What a failed store sync leaves behind (the fsync-gate pattern): the pages written
//! back since the last successful sync, so that a failed sync can make them Dirty again,
//! and the failure that sticks when some of them are no longer in memory to write again.
//!
//! A sync that fails may have lost every write since the previous good one (Linux marks
//! the failed page-cache pages clean and reports the error once: a second fsync returns 0
//! with the data gone). So after a failed sync:
//! - pages flush wrote since the last good sync that are still resident go back to Dirty:
//!   the next flush writes them again from memory, and succeeds only if that write and its
//!   sync do;
//! - pages that left memory since (written back by eviction, or Clean ones dropped) cannot
//!   be written again: the failure sticks, and every later flush fails with
//!   [`Error::WritebackLost`].
//!
//! Invariants:
//! 1. `flushed` holds every page a flush wrote back (or tried to) since the last good sync;
//!    it is touched only by flush, which is serialized (`Region::flushing`).
//! 2. `evicted` counts pages eviction wrote back since the last good sync; eviction may run
//!    in a signal handler, so it is an atomic, added to without locks.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Error;

/// The pages written since the last successful sync, and the sticky failure.
#[derive(Default)]
pub(crate) struct Unsynced {
    /// Invariant 1: pages a flush wrote since the last good sync, and the sticky loss.
    state: Mutex<State>,
    /// Invariant 2: pages eviction wrote back since the last good sync.
    evicted: AtomicU64,
}

#[derive(Default)]
struct State {
    flushed: Vec<usize>,
    /// Set once a sync failed after pages had left memory: (pages, errno).
    lost: Option<(u64, i32)>,
}

impl Unsynced {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Eviction wrote back `pages` pages (lock-free: eviction may run in a signal handler).
    pub(crate) fn note_evicted(&self, pages: u64) {
        if pages > 0 {
            self.evicted.fetch_add(pages, Ordering::Relaxed);
        }
    }

    /// A flush is about to write back `pages`.
    pub(crate) fn note_flushed(&self, pages: &[usize]) {
        self.state().flushed.extend_from_slice(pages);
    }

    /// The evicted count now: what a sync starting now covers.
    pub(crate) fn evicted_before_sync(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// The sync succeeded: the pages written before it are durable. `evicted` is the count
    /// read before the sync (evictions racing it stay counted for the next one).
    pub(crate) fn synced(&self, evicted: u64) {
        self.state().flushed.clear();
        self.evicted.fetch_sub(evicted, Ordering::Relaxed);
    }

    /// The sync failed with `errno`: hands the pages flush wrote since the last good sync
    /// to `redirty`, which makes each resident one Dirty again and returns whether it
    /// could; if any could not, or eviction wrote pages since, the loss sticks.
    pub(crate) fn sync_failed(&self, errno: i32, mut redirty: impl FnMut(usize) -> bool) {
        let mut state = self.state();
        let flushed = std::mem::take(&mut state.flushed);
        let mut lost = self.evicted.swap(0, Ordering::Relaxed);
        for index in flushed {
            lost += u64::from(!redirty(index));
        }
        if lost > 0 {
            let before = state.lost.map_or(0, |(pages, _)| pages);
            state.lost = Some((before + lost, errno));
        }
    }

    /// The sticky failure, if a sync ever failed after pages had left memory.
    pub(crate) fn lost(&self) -> Option<Error> {
        self.state()
            .lost
            .map(|(pages, errno)| Error::WritebackLost {
                pages,
                source: std::io::Error::from_raw_os_error(errno),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_sync_redirties_what_it_can_and_sticks_for_the_rest() {
        let unsynced = Unsynced::default();
        unsynced.note_flushed(&[1, 2, 3]);
        unsynced.sync_failed(libc::EIO, |_| true);
        assert!(unsynced.lost().is_none(), "every page was made Dirty again");
        unsynced.note_flushed(&[1, 2]);
        let before = unsynced.evicted_before_sync();
        unsynced.synced(before);
        unsynced.note_evicted(4);
        unsynced.note_flushed(&[5]);
        unsynced.sync_failed(libc::EIO, |index| index != 5);
        match unsynced.lost() {
            Some(Error::WritebackLost { pages: 5, source }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EIO))
            }
            other => panic!("expected WritebackLost of 5 pages, got {other:?}"),
        }
        unsynced.synced(unsynced.evicted_before_sync());
        assert!(unsynced.lost().is_some(), "the loss sticks");
    }
}
