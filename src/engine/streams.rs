//! Which missing faults continue a sequential run, for
//! [`Granularity::SequentialAround`](crate::Granularity::SequentialAround): the last few
//! faults' page ranges, kept as cursors. A fault at the page right after a recorded
//! range (an ascending scan) or right before one (a descending scan, as a quicksort's
//! right-hand cursor) is sequential; any other is taken for random.
//!
//! Several scans interleave (threads, or a partition's two cursors), so more than one
//! cursor is kept: a fault replaces the oldest slot (round robin). A random fault matches
//! a slot only if it lands next to one of the last [`SLOTS`] faults, which in a mapping
//! of N pages happens with a probability of about 2 x SLOTS / N.
//!
//! Atomics only (no lock, no allocation): callable from a SIGBUS handler. Concurrent
//! faults race benignly: a slot may be overwritten before it is matched, or two faults
//! take the same slot, which only makes a sequential fault look random (served at 4 KiB)
//! or a random one sequential (served with its window): the pages installed are the same
//! either way, only how many come in one fault.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// How many recent faults are remembered.
pub(crate) const SLOTS: usize = 8;

/// The recent faults of one region.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    /// Each a recorded range, `start << 32 | end` in pages (0: none; a region of more than
    /// 2^32 pages - 16 TiB - folds page numbers, which only misclassifies).
    slots: [AtomicU64; SLOTS],
    /// The next slot to replace.
    next: AtomicUsize,
}

impl Streams {
    /// Whether a fault on page `index` continues a recorded range: it starts where one
    /// ended, or ends where one started.
    pub(crate) fn continues(&self, index: usize) -> bool {
        let index = index as u64 & u32::MAX as u64;
        self.slots.iter().any(|slot| {
            let word = slot.load(Relaxed);
            word != 0 && (word & u32::MAX as u64 == index || (word >> 32) == index + 1)
        })
    }

    /// Records the pages a fault installed (or asked for), replacing the oldest slot.
    pub(crate) fn record(&self, pages: Range<usize>) {
        let slot = self.next.fetch_add(1, Relaxed) % SLOTS;
        let word =
            ((pages.start as u64 & u32::MAX as u64) << 32) | (pages.end as u64 & u32::MAX as u64);
        self.slots[slot].store(word, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascending_and_descending_scans_continue_and_random_pages_do_not() {
        let streams = Streams::default();
        assert!(!streams.continues(10), "nothing recorded");
        streams.record(10..11);
        assert!(streams.continues(11), "ascending");
        assert!(streams.continues(9), "descending");
        assert!(!streams.continues(12));
        assert!(!streams.continues(10), "the same page again is not a scan");
        streams.record(16..32);
        assert!(streams.continues(32) && streams.continues(15));
        // Eight other faults push a range out.
        for page in 0..SLOTS {
            streams.record(1000 + 10 * page..1001 + 10 * page);
        }
        assert!(!streams.continues(11) && !streams.continues(32));
    }
}
