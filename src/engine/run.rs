//! Runs of locked entries: the span a wide fault serves (a 2 MiB range, a fault-around
//! window) locked around the faulting page's entry, and kept on the stack: the wide paths
//! allocate nothing, so they may run inside the faulting thread's SIGBUS handler.
//!
//! Neighbours are only ever taken with `try_lock`, never waited for: the faulting page's
//! own lock is already held, and waiting while holding an entry lock could deadlock
//! against a fault that holds a neighbour (lock order: see `entries`).

use std::ops::Range;

use arrayvec::ArrayVec;

use crate::HUGE_PAGES;
use crate::engine::entries::{Entries, EntryGuard, State};

/// A set of pages of one run (indices relative to its start, below 512), on the stack.
#[derive(Clone, Copy, Default)]
pub(crate) struct PageSet([u64; HUGE_PAGES / 64]);

impl PageSet {
    /// Adds page `page`.
    pub(crate) fn insert(&mut self, page: usize) {
        self.0[page / 64] |= 1 << (page % 64);
    }

    /// Whether page `page` is in the set.
    pub(crate) fn contains(&self, page: usize) -> bool {
        self.0[page / 64] & (1 << (page % 64)) != 0
    }

    /// Whether no page is in the set.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.iter().all(|&word| word == 0)
    }
}

/// Guards of a 2 MiB range at most, on the stack (8 KiB).
pub(crate) type Guards<'a> = ArrayVec<EntryGuard<'a>, HUGE_PAGES>;

/// A consecutive run of guards for `install::insert`, on the stack.
pub(crate) type Run<'g, 'a> = ArrayVec<&'g mut EntryGuard<'a>, HUGE_PAGES>;

/// The locked neighbours of a held entry: `below` and `above` it, ascending, so that
/// below + held + above is a consecutive run of indices.
pub(crate) struct Span<'a> {
    held: usize,
    below: Guards<'a>,
    above: Guards<'a>,
}

impl<'a> Span<'a> {
    /// Locks every entry of `range` except `held` (whose lock the caller has), all of
    /// which must be in `state`. Never waits: if any is locked or in another state,
    /// releases what it took and returns `None`.
    pub(crate) fn lock_all(
        entries: &'a Entries,
        range: Range<usize>,
        held: usize,
        state: State,
    ) -> Option<Span<'a>> {
        // A cheap look first: most ranges that fail, fail here without a locked instruction.
        if range.clone().any(|index| entries.peek(index) != state) {
            return None;
        }
        let mut span = Span {
            held,
            below: Guards::new(),
            above: Guards::new(),
        };
        for index in range.filter(|&index| index != held) {
            let guard = entries.try_lock(index)?;
            if guard.state() != state {
                return None;
            }
            let side = if index < held {
                &mut span.below
            } else {
                &mut span.above
            };
            side.try_push(guard).ok()?;
        }
        Some(span)
    }

    /// Locks the free, Empty entries next to `held` inside `window` (which holds it),
    /// outwards on each side until the first that is locked or not Empty (never waits).
    pub(crate) fn lock_free(entries: &'a Entries, window: Range<usize>, held: usize) -> Span<'a> {
        let mut below = lock_while_free(entries, (window.start..held).rev(), State::Empty);
        below.reverse();
        let above = lock_while_free(entries, held + 1..window.end, State::Empty);
        Span { held, below, above }
    }

    /// Locks the free entries in `state` before `held`, down to `start`, until the first
    /// that is locked or in another state (never waits).
    pub(crate) fn lock_behind(
        entries: &'a Entries,
        held: usize,
        start: usize,
        state: State,
    ) -> Span<'a> {
        let mut below = lock_while_free(entries, (start..held).rev(), state);
        below.reverse();
        Span {
            held,
            below,
            above: Guards::new(),
        }
    }

    /// Locks the free entries in `state` after `held`, up to `end`, until the first that
    /// is locked or in another state (never waits).
    pub(crate) fn lock_ahead(
        entries: &'a Entries,
        held: usize,
        end: usize,
        state: State,
    ) -> Span<'a> {
        let above = lock_while_free(entries, held + 1..end, state);
        Span {
            held,
            below: Guards::new(),
            above,
        }
    }

    /// The indices of the run, the held entry included.
    pub(crate) fn pages(&self) -> Range<usize> {
        self.held - self.below.len()..self.held + 1 + self.above.len()
    }

    /// The sub-range of `pages()` around the held entry over which every neighbour, out
    /// from the held one on each side, satisfies `pred`.
    pub(crate) fn stretch(&self, pred: impl Fn(&EntryGuard<'a>) -> bool) -> Range<usize> {
        let below = self
            .below
            .iter()
            .rev()
            .take_while(|guard| pred(guard))
            .count();
        let above = self.above.iter().take_while(|guard| pred(guard)).count();
        self.held - below..self.held + 1 + above
    }

    /// Releases the neighbours outside `keep` (a sub-range of `pages()` holding the held
    /// entry), before a slow step they take no part in.
    pub(crate) fn keep(&mut self, keep: Range<usize>) {
        let start = self.pages().start;
        self.below.drain(..keep.start.saturating_sub(start));
        self.above.truncate(keep.end.saturating_sub(self.held + 1));
    }

    /// The whole run, `held` (the guard of the held entry) in its place, as one
    /// consecutive run for `install::insert`.
    pub(crate) fn join<'g>(&'g mut self, held: &'g mut EntryGuard<'a>) -> Run<'g, 'a> {
        debug_assert_eq!(held.index(), self.held);
        // At most a 2 MiB range: `below` and `above` together hold at most 511 guards.
        let mut run = Run::new();
        run.extend(self.below.iter_mut());
        run.push(held);
        run.extend(self.above.iter_mut());
        run
    }
}

/// Locks the entries of `indices` in order while each is free and in `state`; stops at
/// the first that is not, or when the guards' room (2 MiB) is full.
fn lock_while_free<'a>(
    entries: &'a Entries,
    indices: impl Iterator<Item = usize>,
    state: State,
) -> Guards<'a> {
    let mut locked = Guards::new();
    for index in indices {
        match entries.try_lock(index) {
            Some(guard) if guard.state() == state => {
                if locked.try_push(guard).is_err() {
                    break;
                }
            }
            _ => break,
        }
    }
    locked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_free_stops_at_busy_or_present_neighbours() {
        let entries = Entries::new(16).expect("entries");
        entries.lock(2).set(State::Zero);
        let busy = entries.lock(9);
        let mut held = entries.lock(5);
        let mut span = Span::lock_free(&entries, 0..16, 5);
        assert_eq!(span.pages(), 3..9);
        span.keep(4..7);
        assert_eq!(span.pages(), 4..7);
        let run = span.join(&mut held);
        let indices: Vec<usize> = run.iter().map(|guard| guard.index()).collect();
        assert_eq!(indices, vec![4, 5, 6]);
        drop(run);
        drop(busy);
    }

    /// A refill's stretch: the neighbours evicted dirty, out from the held entry.
    #[test]
    fn stretch_stops_at_the_first_neighbour_that_fails() {
        let entries = Entries::new(16).expect("entries");
        for index in [1, 3, 4, 6, 7, 9] {
            entries.lock(index).set(State::Dirty);
            entries.lock(index).set_evicted(true);
        }
        let _held = entries.lock(5);
        let span = Span::lock_free(&entries, 0..16, 5);
        assert_eq!(span.pages(), 0..16);
        assert_eq!(span.stretch(|guard| guard.was_evicted_dirty()), 3..8);
    }

    #[test]
    fn lock_all_takes_every_entry_or_none() {
        let entries = Entries::new(8).expect("entries");
        let held = entries.lock(3);
        let span = Span::lock_all(&entries, 0..8, 3, State::Empty).expect("all Empty and free");
        assert_eq!(span.pages(), 0..8);
        assert!(entries.try_lock(7).is_none(), "the span holds its entries");
        drop(span);
        let busy = entries.lock(6);
        assert!(Span::lock_all(&entries, 0..8, 3, State::Empty).is_none());
        assert!(
            entries.try_lock(0).is_some(),
            "a failed span releases what it took"
        );
        drop((busy, held));
        entries.lock(1).set(State::Clean);
        let held = entries.lock(3);
        assert!(Span::lock_all(&entries, 0..8, 3, State::Empty).is_none());
        drop(held);
    }
}
