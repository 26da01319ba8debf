//! Giving up on a region whose faults nobody can read any more (its handler threads can
//! no longer poll or read the userfaultfd): every page must then answer its accesses
//! without a handler, so that no access ever waits for one.
//!
//! | entry | after                                                                        |
//! |-------|------------------------------------------------------------------------------|
//! | Empty | poisoned: an access gets SIGBUS (EFAULT in the kernel), as for a failed fault |
//! | Zero  | dropped and poisoned (a write would take a write-protect fault nobody reads) |
//! | Clean | Dirty, protection lifted: writes go on unseen, and flush writes it back       |
//! | Dirty | protection lifted                                                            |
//!
//! From then on a flush still write-protects each run while it copies it out (a write in
//! that window waits, and is woken when the protection is lifted again), but leaves the
//! pages Dirty and writable, and returns [`Error::HandlerFailed`](crate::Error::HandlerFailed).
//! Cost, once: a lock per page, and an ioctl per run of up to 2 MiB of missing pages
//! and per present page.

use crate::engine::entries::State;
use crate::engine::install::holds_window_store;
use crate::engine::region::Region;
use crate::engine::run::Guards;

/// Gives up on `region` (its faults can no longer be read; `errno` says why): marks it,
/// then makes every page answer without a handler, as the table above says.
pub(crate) fn abandon(region: &Region, errno: i32) {
    // First, so that a flush running now keeps what it writes back writable.
    if !region.mark_abandoned(errno) {
        return;
    }
    // Consecutive missing pages are poisoned together, up to 2 MiB at a time.
    let mut missing = Guards::new();
    for index in 0..region.pages() {
        let mut guard = region.entries.lock(index);
        if guard.state() == State::Zero && holds_window_store(region, index) {
            // A store got into its zero-page window (`install::settle`): kept, as Dirty.
            guard.set(State::Dirty);
        }
        if guard.state() == State::Zero {
            // The zero page equals the store: dropping it loses nothing.
            let _ = region.discard(index, 1);
            guard.set(State::Empty);
        }
        if guard.state() == State::Empty {
            if missing.is_full() {
                poison(region, &mut missing);
            }
            missing.push(guard);
            continue;
        }
        // Clean or Dirty: keep it, writable from now on.
        guard.set(State::Dirty);
        let _ = region.writeprotect(index, 1, false, true);
        // Released before the run is poisoned, the run is not consecutive with it any more.
        drop(guard);
        poison(region, &mut missing);
    }
    poison(region, &mut missing);
}

/// Poisons the consecutive locked missing pages of `run`, waking whoever waits on them
/// (into their SIGBUS), and unlocks them.
fn poison(region: &Region, run: &mut Guards<'_>) {
    let Some(first) = run.first().map(|guard| guard.index()) else {
        return;
    };
    if region.poison_run(first, run.len()).is_err() {
        // Stopped at a page present after all: one by one, so that each missing page is
        // poisoned and each present one's access can go on.
        for guard in run.iter() {
            if region.poison(guard.index()).is_err() {
                let _ = region.wake(guard.index(), 1);
            }
        }
    }
    run.clear();
}
