//! The resident budget of a region: its watermarks and the eviction clock's hand (the
//! policy that acts on them is `evict`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::engine::config::Granularity;
use crate::error::Error;
use crate::{HUGE_PAGES, PAGE_SIZE};

/// Entries the clock hand looks at per step (and the most victims one step takes) on the
/// 4 KiB path and with fault-around.
const CHUNK: usize = 64;

/// The smallest budget accepted, in pages: a single instruction may need several pages
/// resident at once (a copy between two page-crossing operands needs four).
pub(crate) const MIN_BUDGET_PAGES: u64 = 16;

/// The budget of one region and its clock hand.
pub(crate) struct Budget {
    /// Evict once more than this many pages are resident (the budget in pages).
    pub(crate) high: u64,
    /// ...down to this many.
    pub(crate) low: u64,
    /// Entries the hand looks at per step: `CHUNK`, or a whole aligned 2 MiB range with
    /// [`Granularity::Huge`], so that a range installed as one huge page is dropped whole
    /// (dropping a part splits it, and frees nothing until all of it is dropped).
    step: usize,
    /// The next entry the clock looks at; below the region's page count, a multiple of
    /// `step`.
    hand: AtomicUsize,
    /// Testing only: see `Options::evict_delay`.
    pub(crate) delay: Option<Duration>,
}

impl Budget {
    /// A budget of `bytes` of resident pages (rounded down to whole pages) for a region
    /// of the given granularity.
    pub(crate) fn new(
        bytes: u64,
        granularity: Granularity,
        delay: Option<Duration>,
    ) -> Result<Budget, Error> {
        let high = bytes / PAGE_SIZE as u64;
        if high < MIN_BUDGET_PAGES {
            return Err(Error::BudgetTooSmall {
                budget: bytes,
                minimum: MIN_BUDGET_PAGES * PAGE_SIZE as u64,
            });
        }
        let step = match granularity {
            Granularity::Huge => HUGE_PAGES,
            Granularity::Page | Granularity::FaultAround(_) => CHUNK,
        };
        let batch = (high / 8).clamp(1, step as u64);
        Ok(Budget {
            high,
            low: high - batch,
            step,
            hand: AtomicUsize::new(0),
            delay,
        })
    }

    /// Moves the hand one step around a table of `pages` entries and returns the entries
    /// to look at.
    pub(crate) fn advance(&self, pages: usize) -> std::ops::Range<usize> {
        let step = self.step;
        let next = |hand: usize| Some(if hand + step < pages { hand + step } else { 0 });
        let moved = self
            .hand
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, next);
        // `next` never refuses, so `moved` is Ok; both arms hold the old hand.
        let start = moved.unwrap_or_else(|start| start);
        start..(start + step).min(pages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_batch_an_eighth_of_the_budget_up_to_a_step() {
        let pages = |bytes: u64| {
            let budget = Budget::new(bytes, Granularity::Page, None);
            budget.map(|b| (b.high, b.low))
        };
        assert_eq!(pages(16 * 4096).ok(), Some((16, 14)));
        assert_eq!(pages(2 << 20).ok(), Some((512, 448)));
        assert_eq!(pages(256 << 20).ok(), Some((65_536, 65_472)));
        assert_eq!(pages((16 * 4096) + 4095).ok(), Some((16, 14)));
        assert!(matches!(
            pages(15 * 4096),
            Err(Error::BudgetTooSmall {
                budget: 61_440,
                minimum: 65_536
            })
        ));
        let huge = Budget::new(256 << 20, Granularity::Huge, None).expect("budget");
        assert_eq!((huge.low, huge.step), (65_536 - 512, 512));
    }

    #[test]
    fn the_hand_steps_and_wraps() {
        let budget = Budget::new(1 << 20, Granularity::Page, None).expect("budget");
        let steps: Vec<_> = (0..4).map(|_| budget.advance(150)).collect();
        assert_eq!(steps, vec![0..64, 64..128, 128..150, 0..64]);
        let budget = Budget::new(1 << 20, Granularity::FaultAround(1 << 16), None);
        let budget = budget.expect("budget");
        assert_eq!(budget.advance(10), 0..10);
        assert_eq!(budget.advance(10), 0..10);
        let budget = Budget::new(1 << 20, Granularity::Huge, None).expect("budget");
        let steps: Vec<_> = (0..3).map(|_| budget.advance(1024)).collect();
        assert_eq!(steps, vec![0..512, 512..1024, 0..512]);
    }
}
