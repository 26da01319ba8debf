//! The sequential run of a region's faults, and the 2 MiB ranges read ahead of it
//! (`engine::read_ahead`): where the run last faulted, which range is the next to read
//! ahead, and which ranges are being read now. Atomics only.
//!
//! Faults are numbered by *unit*, what one read fault of the region fills: a 2 MiB range
//! (`Granularity::Huge`), a fault-around window or a page. Ranges are numbered by 2 MiB
//! unit of the region. A missing fault on unit `u` continues the run if `u` is the unit
//! after the last fault's, or past it in a later range but not past the ranges read ahead
//! since (the run skipped those: they were in before it got there). Two faults in one range
//! that are not adjacent never continue a run, so random faults do not start read-aheads.
//! Concurrent faults race benignly on `last` and `next`: a run may be taken for
//! random (nothing is read ahead until its next fault) or a range read ahead that the
//! run never reaches (a read of 2 MiB for nothing). The marks of ranges being read are
//! exact (see [`Ahead::reading`]): a fault left to a read-ahead must get its wake.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::time::Duration;

use crate::sys::futex;

/// Ranges read ahead of the last fault, at most: two, so that the two handler threads of
/// this kind of machine each read one while the run consumes a third.
pub(crate) const DEPTH: usize = 2;

/// Ranges being read ahead at once, at most (one per handler thread: a pool has up to 4).
const READING: usize = 4;

/// The run and its read-ahead.
#[derive(Debug, Default)]
pub(crate) struct Ahead {
    /// The last fault's unit + 1 (0: none yet).
    last: AtomicUsize,
    /// The next range to read ahead; those before it are claimed (read, being read, or
    /// given up).
    next: AtomicUsize,
    /// Ranges + 1 being read ahead now (0: a free mark).
    reading: [AtomicUsize; READING],
    /// Bumped when a mark is dropped: faulting threads that serve themselves wait on it
    /// for a range being read (`Ahead::wait_read`; handler threads' faults are woken
    /// through the uffd instead).
    read: AtomicU32,
    /// Threads in `Ahead::wait_read`, sleeping on `read`: a dropped mark wakes them only
    /// if there are any (handler threads' regions never have: no futex call a range).
    waiting: futex::Waiters,
    /// Bumped by every request for a read-ahead (`Ahead::ask`): the read-ahead thread of
    /// an in-thread region sleeps on it.
    asked: AtomicU32,
}

/// The mark of a range being read ahead; dropping it clears the mark. The reader wakes
/// the range's waiters after the drop (see [`Ahead::reading`]).
pub(crate) struct Reading<'a> {
    mark: &'a AtomicUsize,
    ahead: &'a Ahead,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.mark.store(0, SeqCst);
        // After the clear: a waiter that saw the mark read `read` before it looked (and
        // counted itself before that: `futex::Waiters`), so the bump changes what it
        // sleeps on, or it comes after the bump and its look finds the mark gone.
        self.ahead.read.fetch_add(1, SeqCst);
        self.ahead.waiting.wake(&self.ahead.read);
    }
}

impl Ahead {
    /// Records a missing fault on unit `unit`, of `per_range` units a range (1: a fault
    /// fills its whole range); whether it continues the run.
    pub(crate) fn note_fault(&self, unit: usize, per_range: usize) -> bool {
        let previous = self.last.swap(unit + 1, Relaxed);
        let range = unit / per_range;
        // The first range left to read ahead: the fault's own (its pages past the fault's
        // unit), unless the fault fills it all.
        let first = range + usize::from(per_range == 1);
        let next = self.next.load(Relaxed);
        // `previous` is the last unit + 1: equal to `unit` for the unit after it.
        let adjacent = previous != 0 && unit == previous;
        let skipped =
            previous != 0 && unit > previous && range > (previous - 1) / per_range && range <= next;
        if !(adjacent || skipped) || next < first {
            // A new run: nothing beyond it is claimed. Or a run past its claims.
            self.next.store(first, Relaxed);
        }
        adjacent || skipped
    }

    /// Claims the next range to read ahead of the run, if it is within [`DEPTH`] ranges
    /// past the last fault's (of `per_range` units a range) and below `ranges` (the
    /// region's ranges, the last one possibly partial). Each range is claimed once.
    pub(crate) fn claim(&self, ranges: usize, per_range: usize) -> Option<usize> {
        let mut next = self.next.load(Relaxed);
        loop {
            let last = self.last.load(Relaxed);
            if last == 0 || next > (last - 1) / per_range + DEPTH || next >= ranges {
                return None;
            }
            match self
                .next
                .compare_exchange_weak(next, next + 1, Relaxed, Relaxed)
            {
                Ok(_) => return Some(next),
                Err(now) => next = now,
            }
        }
    }

    /// Marks `range` as being read ahead, if a mark is free. While the mark is held a
    /// missing fault on the range is left to the reader ([`Ahead::is_reading`]), who must
    /// wake the range *after* dropping the mark, whatever became of the read: a fault
    /// that saw the mark was queued before it looked, so before the drop, so before that
    /// wake (a wake before the drop could come before the fault was queued, and a failed
    /// read installs nothing that would stop it from sleeping).
    pub(crate) fn reading(&self, range: usize) -> Option<Reading<'_>> {
        self.reading.iter().find_map(|mark| {
            mark.compare_exchange(0, range + 1, SeqCst, Relaxed)
                .ok()
                .map(|_| Reading { mark, ahead: self })
        })
    }

    /// Whether `range` is being read ahead (a missing fault on it may be left alone).
    pub(crate) fn is_reading(&self, range: usize) -> bool {
        self.reading
            .iter()
            .any(|mark| mark.load(SeqCst) == range + 1)
    }

    /// Waits until `range` is no longer being read ahead, at most `limit` (a reader that
    /// went away, or never drops its mark, costs that much and no more). Signal-safe:
    /// atomics and futex calls.
    pub(crate) fn wait_read(&self, range: usize, limit: Duration) {
        const STEP: Duration = Duration::from_millis(10);
        if !self.is_reading(range) {
            return;
        }
        let _waiting = self.waiting.enter();
        for _ in 0..limit.as_millis().div_ceil(STEP.as_millis()) {
            // Loaded before the look: a mark dropped after it bumps `read` past `seen`.
            let seen = self.read.load(SeqCst);
            if !self.is_reading(range) {
                break;
            }
            futex::wait(&self.read, seen, Some(STEP));
        }
    }

    /// Asks for a read-ahead (a fault continued the run): wakes the region's read-ahead
    /// thread, if it has one. Signal-safe: an atomic and a futex wake.
    pub(crate) fn ask(&self) {
        self.asked.fetch_add(1, SeqCst);
        futex::wake(&self.asked, 1);
    }

    /// The request count now: the read-ahead thread reads ahead, then sleeps in
    /// [`Ahead::wait_asked`] with it unless a request came meanwhile.
    pub(crate) fn asked(&self) -> u32 {
        self.asked.load(SeqCst)
    }

    /// Sleeps until a request after `seen` ([`Ahead::asked`]), or spuriously.
    pub(crate) fn wait_asked(&self, seen: u32) {
        futex::wait(&self.asked, seen, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_claims_depth_ranges_ahead_of_its_last_fault_and_a_jump_starts_anew() {
        let ahead = Ahead::default();
        assert!(!ahead.note_fault(10, 1), "the first fault starts a run");
        assert_eq!(ahead.claim(100, 1), Some(11));
        assert!(ahead.note_fault(11, 1), "the next range continues it");
        assert_eq!(ahead.claim(100, 1), Some(12));
        assert_eq!(ahead.claim(100, 1), Some(13));
        assert_eq!(ahead.claim(100, 1), None, "no more than DEPTH ahead");
        // Ranges 12 and 13 went in before the run got there: its next fault is at 14.
        assert!(
            ahead.note_fault(14, 1),
            "a fault past ranges read ahead continues the run"
        );
        assert!(!ahead.note_fault(40, 1), "a jump is a new run");
        assert_eq!(
            ahead.claim(100, 1),
            Some(41),
            "claims restart after the jump"
        );
        assert!(!ahead.note_fault(3, 1), "going back is a new run");
        assert_eq!(ahead.claim(5, 1), Some(4));
        assert_eq!(
            ahead.claim(5, 1),
            None,
            "never past the region's last range"
        );
    }

    #[test]
    fn a_run_of_pages_reads_the_rest_of_its_range_first_and_random_pages_start_nothing() {
        let ahead = Ahead::default();
        let per_range = 512;
        assert!(!ahead.note_fault(5 * per_range, per_range));
        assert!(
            !ahead.note_fault(5 * per_range + 9, per_range),
            "a later page of the same range is not a run"
        );
        let ahead = Ahead::default();
        assert!(!ahead.note_fault(5 * per_range, per_range));
        assert!(
            ahead.note_fault(5 * per_range + 1, per_range),
            "the next page is"
        );
        assert_eq!(
            ahead.claim(100, per_range),
            Some(5),
            "the rest of its own range"
        );
        assert_eq!(ahead.claim(100, per_range), Some(6));
        assert_eq!(ahead.claim(100, per_range), Some(7));
        assert_eq!(
            ahead.claim(100, per_range),
            None,
            "then DEPTH ranges past it"
        );
        assert!(
            ahead.note_fault(8 * per_range, per_range),
            "the first page past the ranges read ahead continues the run"
        );
        assert_eq!(
            ahead.claim(100, per_range),
            Some(8),
            "its range's rest first"
        );
        assert!(
            !ahead.note_fault(20 * per_range + 3, per_range),
            "a jump is a new run"
        );
    }

    #[test]
    fn a_wait_for_a_range_ends_when_its_mark_drops_and_is_bounded_when_it_never_does() {
        let ahead = std::sync::Arc::new(Ahead::default());
        ahead.wait_read(7, Duration::from_secs(60)); // not being read: returns at once
        let mark = ahead.reading(7).expect("a free mark");
        let waiter = {
            let ahead = std::sync::Arc::clone(&ahead);
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                ahead.wait_read(7, Duration::from_secs(60));
                started.elapsed()
            })
        };
        // Dropped once the waiter is counted (asleep, or about to be), at most 10 s on.
        let counted = std::time::Instant::now();
        while ahead.waiting.count() == 0 && counted.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(mark);
        let waited = waiter.join().expect("the waiter");
        assert!(
            waited < Duration::from_secs(30),
            "the wait outlived the mark: {waited:?}"
        );
        assert_eq!(ahead.waiting.count(), 0, "the waiter counted itself out");
        assert_eq!(
            ahead.waiting.wakes.load(SeqCst),
            1,
            "its mark's drop woke it"
        );
        drop(ahead.reading(8).expect("a free mark"));
        assert_eq!(
            ahead.waiting.wakes.load(SeqCst),
            1,
            "a mark dropped with nobody waiting makes no futex call"
        );
        let _held = ahead.reading(7).expect("a free mark");
        let started = std::time::Instant::now();
        ahead.wait_read(7, Duration::from_millis(30));
        assert!(ahead.is_reading(7));
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a mark never dropped holds a wait up to its limit only"
        );
    }

    #[test]
    fn a_range_is_reading_while_its_mark_is_held_and_marks_run_out() {
        let ahead = Ahead::default();
        let marks: Vec<_> = (0..READING).map(|r| ahead.reading(r).unwrap()).collect();
        assert!(ahead.is_reading(0) && ahead.is_reading(READING - 1));
        assert!(ahead.reading(99).is_none(), "every mark is taken");
        drop(marks);
        assert!(
            !ahead.is_reading(0),
            "a dropped mark no longer holds its range"
        );
        assert!(ahead.reading(99).is_some());
    }
}
