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
            Granularity::Page | Granularity::FaultAround(_) | Granularity::SequentialAround(_) => {
                CHUNK
            }
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

    /// Moves the hand one step around a table of `pages` entries, jumping over pages
    /// that hold no memory: the step starts at the first resident page at or after the
    /// hand (`next_resident`, wrapping to the start of the table once), aligned down to a
    /// step. Returns the entries to look at and whether the hand wrapped (to get here, or
    /// after this step), or `None` if no page is resident.
    pub(crate) fn advance(
        &self,
        pages: usize,
        next_resident: impl Fn(usize) -> Option<usize>,
    ) -> Option<(std::ops::Range<usize>, bool)> {
        let step = self.step;
        let hand = self.hand.load(Ordering::Relaxed);
        let (found, wrapped) = match next_resident(hand.min(pages)) {
            Some(index) => (index, false),
            None => (next_resident(0)?, true),
        };
        let start = found - found % step;
        let end = (start + step).min(pages);
        // Racing evictors may both take this step; the second finds its victims locked
        // or gone and moves on, so a lost update only costs a repeated look.
        self.hand
            .store(if end < pages { end } else { 0 }, Ordering::Relaxed);
        Some((start..end, wrapped || end >= pages))
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

    /// Every page resident: the hand steps through the table and wraps.
    #[test]
    fn the_hand_steps_and_wraps() {
        let all = |from: usize| Some(from);
        let budget = Budget::new(1 << 20, Granularity::Page, None).expect("budget");
        let steps: Vec<_> = (0..4).map(|_| budget.advance(150, all)).collect();
        let expected = [
            (0..64, false),
            (64..128, false),
            (128..150, true),
            (0..64, false),
        ];
        assert_eq!(steps, expected.map(Some));
        let budget = Budget::new(1 << 20, Granularity::FaultAround(1 << 16), None);
        let budget = budget.expect("budget");
        assert_eq!(budget.advance(10, all), Some((0..10, true)));
        assert_eq!(budget.advance(10, all), Some((0..10, true)));
        let budget = Budget::new(1 << 20, Granularity::Huge, None).expect("budget");
        let steps: Vec<_> = (0..3).map(|_| budget.advance(1024, all)).collect();
        let expected = [(0..512, false), (512..1024, true), (0..512, false)];
        assert_eq!(steps, expected.map(Some));
    }

    /// The hand jumps over pages that hold no memory, wraps to the first resident page,
    /// and says so; with nothing resident there is no step.
    #[test]
    fn the_hand_visits_resident_pages_only() {
        let resident = [70usize, 1_000_000_007];
        let next = |from: usize| resident.iter().copied().find(|&page| page >= from);
        let budget = Budget::new(1 << 20, Granularity::Page, None).expect("budget");
        let pages = 1usize << 30;
        assert_eq!(budget.advance(pages, next), Some((64..128, false)));
        let far = 1_000_000_007 - 1_000_000_007 % 64;
        assert_eq!(budget.advance(pages, next), Some((far..far + 64, false)));
        assert_eq!(budget.advance(pages, next), Some((64..128, true)));
        assert_eq!(budget.advance(pages, |_| None), None);
    }
}
