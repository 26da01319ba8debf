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
//! Cost: one lock and one ioctl per page of the region, once.

use crate::engine::entries::State;
use crate::engine::region::Region;

/// Gives up on `region` (its faults can no longer be read; `errno` says why): marks it,
/// then makes every page answer without a handler, as the table above says.
pub(crate) fn abandon(region: &Region, errno: i32) {
    // First, so that a flush running now keeps what it writes back writable.
    if !region.mark_abandoned(errno) {
        return;
    }
    for index in 0..region.pages() {
        let mut guard = region.entries.lock(index);
        match guard.state() {
            State::Empty => poison(region, index),
            State::Zero => {
                // The zero page equals the store: dropping it loses nothing.
                let _ = region.discard(index, 1);
                guard.set(State::Empty);
                poison(region, index);
            }
            State::Clean | State::Dirty => {
                guard.set(State::Dirty);
                let _ = region.writeprotect(index, 1, false, true);
            }
        }
    }
}

/// Poisons the missing page `index`, waking whoever waits on it (into its SIGBUS).
fn poison(region: &Region, index: usize) {
    if region.poison(index).is_err() {
        // Present after all: the access can go on.
        let _ = region.wake(index, 1);
    }
}
