//! The last run of one kind (data, or hole) a store reported, remembered without locks (a
//! seqlock over atomics: readers never block, so it may be read inside a signal handler;
//! nothing here allocates).
//!
//! A data run stays true until a hole is punched (udax's own writes turn holes into data,
//! never data into holes), which forgets it. A hole run stays true until udax writes or
//! allocates inside it, which [`ExtentCache::cut`]s the written range out of it.
//!
//! **Remembering races changing.** A query reads the store, then remembers its answer; a
//! write that lands between the two would leave a stale run. So a query takes a
//! [`Token`] (the sequence) *before* asking the store, and [`ExtentCache::remember`] only
//! stores if the sequence has not moved since: every cut and forget moves it, so an answer
//! older than a cut is dropped, never remembered.

use std::sync::atomic::{AtomicU64, Ordering, fence};

/// One remembered run `start..end`.
#[derive(Debug, Default)]
pub(crate) struct ExtentCache {
    /// Even: stable; odd: a writer is between its two stores. Moves on every change.
    sequence: AtomicU64,
    start: AtomicU64,
    end: AtomicU64,
}

/// The cache's sequence when a query began (see the module doc).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Token(u64);

impl ExtentCache {
    /// Takes a token before asking the store.
    pub(crate) fn token(&self) -> Token {
        Token(self.sequence.load(Ordering::Acquire))
    }

    /// The bytes from `offset` to the end of the remembered run, if it holds `offset`.
    pub(crate) fn run_at(&self, offset: u64) -> Option<u64> {
        let before = self.sequence.load(Ordering::Acquire);
        if before & 1 == 1 {
            return None;
        }
        let start = self.start.load(Ordering::Relaxed);
        let end = self.end.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if self.sequence.load(Ordering::Relaxed) != before {
            return None;
        }
        (start <= offset && offset < end).then(|| end - offset)
    }

    /// Remembers the run `start..end` that a query begun at `token` found, unless the
    /// cache changed since (a cut or forget made the answer stale) or a writer is busy.
    pub(crate) fn remember(&self, token: Token, start: u64, end: u64) {
        let Token(before) = token;
        if before & 1 == 1
            || self
                .sequence
                .compare_exchange(before, before + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.store(before, start, end);
    }

    /// Forgets the remembered run (a hole was punched, or the file shrank).
    pub(crate) fn forget(&self) {
        self.change(|_, _| (0, 0));
    }

    /// Removes `start..end` (just written or allocated) from the remembered run, keeping
    /// the larger piece left. Waits out a concurrent writer so the cut cannot be lost.
    pub(crate) fn cut(&self, start: u64, end: u64) {
        self.change(|run_start, run_end| {
            if end <= run_start || run_end <= start {
                return (run_start, run_end);
            }
            let head = start.saturating_sub(run_start);
            let tail = run_end.saturating_sub(end);
            if tail >= head {
                (end.max(run_start), run_end)
            } else {
                (run_start, start)
            }
        });
    }

    /// Replaces the run by `new(start, end)`, taking the write side even if busy (the
    /// write side is a few stores and never faults, so it is never held across a signal
    /// of ours: the spin ends). Always moves the sequence.
    fn change(&self, new: impl Fn(u64, u64) -> (u64, u64)) {
        loop {
            let before = self.sequence.load(Ordering::Relaxed);
            if before & 1 == 0
                && self
                    .sequence
                    .compare_exchange(before, before + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                let (start, end) = new(
                    self.start.load(Ordering::Relaxed),
                    self.end.load(Ordering::Relaxed),
                );
                self.store(before, start, end);
                return;
            }
            std::hint::spin_loop();
        }
    }

    /// The write side's stores, the sequence at `before + 1` (odd) taken by the caller.
    fn store(&self, before: u64, start: u64, end: u64) {
        fence(Ordering::Release);
        self.start.store(start, Ordering::Relaxed);
        self.end.store(end, Ordering::Relaxed);
        self.sequence.store(before + 2, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_one_run_until_forgotten() {
        let cache = ExtentCache::default();
        assert_eq!(cache.run_at(0), None);
        cache.remember(cache.token(), 4096, 16384);
        assert_eq!(cache.run_at(4095), None);
        assert_eq!(cache.run_at(4096), Some(12288));
        assert_eq!(cache.run_at(16383), Some(1));
        assert_eq!(cache.run_at(16384), None);
        cache.forget();
        assert_eq!(cache.run_at(8192), None);
    }

    #[test]
    fn a_cut_removes_the_written_range_and_keeps_the_larger_piece() {
        let cache = ExtentCache::default();
        cache.remember(cache.token(), 0, 10 * 4096);
        cache.cut(0, 4096);
        assert_eq!(cache.run_at(0), None);
        assert_eq!(cache.run_at(4096), Some(9 * 4096));
        cache.cut(8 * 4096, 9 * 4096);
        assert_eq!(cache.run_at(4096), Some(7 * 4096));
        assert_eq!(cache.run_at(9 * 4096), None);
        cache.cut(20 * 4096, 21 * 4096);
        assert_eq!(cache.run_at(4096), Some(7 * 4096));
    }

    #[test]
    fn an_answer_older_than_a_cut_is_not_remembered() {
        let cache = ExtentCache::default();
        let token = cache.token();
        // A write lands between the query and its remember.
        cache.cut(0, 4096);
        cache.remember(token, 0, 10 * 4096);
        assert_eq!(cache.run_at(0), None);
    }
}
