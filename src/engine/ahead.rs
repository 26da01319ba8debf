//! The sequential run of a region's 2 MiB faults, and the ranges read ahead of it
//! (`engine::read_ahead`): where the run last faulted, which range is the next to read
//! ahead, and which ranges are being read now. Atomics only.
//!
//! Ranges are numbered by 2 MiB unit of the region. A missing fault on range `r`
//! continues the run if `r` is the range after the last fault's, or past it but not past
//! the ranges read ahead since (the run skipped those: they were in before it got
//! there). Concurrent faults race benignly on `last` and `next`: a run may be taken for
//! random (nothing is read ahead until its next fault) or a range read ahead that the
//! run never reaches (a read of 2 MiB for nothing). The marks of ranges being read are
//! exact (see [`Ahead::reading`]): a fault left to a read-ahead must get its wake.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};

/// Ranges read ahead of the last fault, at most: two, so that the two handler threads of
/// this kind of machine each read one while the run consumes a third.
pub(crate) const DEPTH: usize = 2;

/// Ranges being read ahead at once, at most (one per handler thread: a pool has up to 4).
const READING: usize = 4;

/// The run and its read-ahead.
#[derive(Debug, Default)]
pub(crate) struct Ahead {
    /// The last fault's range + 1 (0: none yet).
    last: AtomicUsize,
    /// The next range to read ahead; those before it are claimed (read, being read, or
    /// given up).
    next: AtomicUsize,
    /// Ranges + 1 being read ahead now (0: a free mark).
    reading: [AtomicUsize; READING],
}

/// The mark of a range being read ahead; dropping it clears the mark. The reader wakes
/// the range's waiters after the drop (see [`Ahead::reading`]).
pub(crate) struct Reading<'a> {
    mark: &'a AtomicUsize,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.mark.store(0, SeqCst);
    }
}

impl Ahead {
    /// Records a missing fault on `range`; whether it continues the run.
    pub(crate) fn note_fault(&self, range: usize) -> bool {
        let previous = self.last.swap(range + 1, Relaxed);
        // `previous` is the last range + 1: equal to `range` for the range after it.
        let next = self.next.load(Relaxed);
        let continues = previous != 0 && (range == previous || (range > previous && range <= next));
        if !continues {
            // A new run: nothing beyond it is claimed.
            self.next.store(range + 1, Relaxed);
        } else if next < range + 1 {
            self.next.store(range + 1, Relaxed);
        }
        continues
    }

    /// Claims the next range to read ahead of the run, if it is within [`DEPTH`] of the
    /// last fault and below `ranges` (the region's whole ranges). Each range is claimed once.
    pub(crate) fn claim(&self, ranges: usize) -> Option<usize> {
        let mut next = self.next.load(Relaxed);
        loop {
            let last = self.last.load(Relaxed);
            if last == 0 || next >= last + DEPTH || next >= ranges {
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
                .map(|_| Reading { mark })
        })
    }

    /// Whether `range` is being read ahead (a missing fault on it may be left alone).
    pub(crate) fn is_reading(&self, range: usize) -> bool {
        self.reading
            .iter()
            .any(|mark| mark.load(SeqCst) == range + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_claims_depth_ranges_ahead_of_its_last_fault_and_a_jump_starts_anew() {
        let ahead = Ahead::default();
        assert!(!ahead.note_fault(10), "the first fault starts a run");
        assert_eq!(ahead.claim(100), Some(11));
        assert!(ahead.note_fault(11), "the next range continues it");
        assert_eq!(ahead.claim(100), Some(12));
        assert_eq!(ahead.claim(100), Some(13));
        assert_eq!(ahead.claim(100), None, "no more than DEPTH ahead");
        // Ranges 12 and 13 went in before the run got there: its next fault is at 14.
        assert!(
            ahead.note_fault(14),
            "a fault past ranges read ahead continues the run"
        );
        assert!(!ahead.note_fault(40), "a jump is a new run");
        assert_eq!(ahead.claim(100), Some(41), "claims restart after the jump");
        assert!(!ahead.note_fault(3), "going back is a new run");
        assert_eq!(ahead.claim(5), Some(4));
        assert_eq!(ahead.claim(5), None, "never past the region's last range");
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
