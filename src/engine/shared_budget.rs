//! [`SharedBudget`]: one resident budget held by several regions (UMap's global page
//! buffer), so that the pages of all of them together stay under it.
//!
//! Each region keeps its own clock hand (a `Budget` of the same size, whose watermarks go
//! unused); after a fault, the serving thread sums the resident pages of every live region
//! of the shared budget, and above `high` evicts down to `low`, always from the region that
//! holds the most pages at that moment (so a region that streams through its data does not
//! keep the others' pages out, nor lose all its own while an idle one keeps hundreds). One
//! thread evicts at a time (it holds the list's lock): the others wait for it rather than evict the same
//! excess again, so the total overshoots by at most one fault's pages per serving thread of
//! all the regions, as with a region's own budget.
//!
//! Regions are held weakly: a mapping that is closed drops out of the sum. The lock is
//! taken by handler threads only (a mapping with in-thread resolution cannot hold a shared
//! budget: the lock is not for signal handlers), and nothing is allocated while it is held.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::PAGE_SIZE;
use crate::error::Error;

/// The smallest budget, in pages: the same as a region's own (`budget::MIN_BUDGET_PAGES`,
/// not imported: `budget` sits above `config`, which holds this type).
const MIN_BUDGET_PAGES: u64 = 16;

/// What the shared budget needs of a region: its resident count and its clock.
pub(crate) trait Evictable: Send + Sync {
    /// Pages resident now (Clean or Dirty).
    fn resident_pages(&self) -> u64;
    /// Runs the region's clock until at most `target` of its pages are resident (or two
    /// sweeps found too few victims).
    fn evict_down_to(&self, target: u64);
}

/// A resident budget several mappings share: their Clean and Dirty pages together stay
/// at or under it (plus one fault's pages per thread serving faults at once). A cheap
/// handle: clones share one budget. Give it to each mapping with
/// [`Options::shared_budget`](crate::Options::shared_budget).
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use udax::{Mapping, MemStore, Options, SharedBudget};
///
/// let budget = SharedBudget::new(1 << 20)?;                       // 1 MiB for both
/// let options = Options::default().shared_budget(&budget);
/// let a = Mapping::new(Arc::new(MemStore::new(4 << 20)), options.clone())?;
/// let b = Mapping::new(Arc::new(MemStore::new(4 << 20)), options)?;
/// for page in 0..1024 {
///     a.write_at(page * 4096, &[1])?;
///     b.write_at(page * 4096, &[2])?;
/// }
/// assert!(budget.peak_pages() <= 256 + 8);                        // 1 MiB + a page per thread
/// a.close()?;
/// b.close()?;
/// # Ok::<(), udax::Error>(())
/// ```
#[derive(Clone)]
pub struct SharedBudget {
    inner: Arc<Inner>,
}

/// The budget itself.
struct Inner {
    /// Evict once more than this many pages are resident in all regions together.
    high: u64,
    /// ...down to this many.
    low: u64,
    /// The most pages seen resident together after a fault.
    peak: AtomicU64,
    /// The regions holding the budget; also the lock one evicting thread holds.
    regions: Mutex<Vec<Weak<dyn Evictable>>>,
}

impl std::fmt::Debug for SharedBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBudget")
            .field("bytes", &self.bytes())
            .field("resident_pages", &self.resident_pages())
            .finish()
    }
}

impl SharedBudget {
    /// A budget of `bytes` (rounded down to whole pages, at least 64 KiB).
    ///
    /// # Errors
    /// [`Error::BudgetTooSmall`] under 64 KiB.
    pub fn new(bytes: u64) -> Result<SharedBudget, Error> {
        let high = bytes / PAGE_SIZE as u64;
        if high < MIN_BUDGET_PAGES {
            return Err(Error::BudgetTooSmall {
                budget: bytes,
                minimum: MIN_BUDGET_PAGES * PAGE_SIZE as u64,
            });
        }
        // The batch of a region's own budget: an eighth, at most 64 pages.
        let batch = (high / 8).clamp(1, 64);
        Ok(SharedBudget {
            inner: Arc::new(Inner {
                high,
                low: high - batch,
                peak: AtomicU64::new(0),
                regions: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The budget in bytes (whole pages).
    pub fn bytes(&self) -> u64 {
        self.inner.high * PAGE_SIZE as u64
    }

    /// Pages resident now in all the live mappings holding the budget.
    pub fn resident_pages(&self) -> u64 {
        resident(&self.lock())
    }

    /// The most pages seen resident together after a fault.
    pub fn peak_pages(&self) -> u64 {
        self.inner.peak.load(Ordering::Relaxed)
    }

    /// Adds a region to the budget (and forgets regions that are gone).
    pub(crate) fn register(&self, region: Weak<dyn Evictable>) {
        let mut regions = self.lock();
        regions.retain(|r| r.strong_count() > 0);
        regions.push(region);
    }

    /// Called after every fault of a region holding the budget, with no entry lock held:
    /// evicts down to the low watermark, largest region first, if all of them together
    /// hold more than the budget.
    pub(crate) fn after_fault(&self) {
        let regions = self.lock();
        let total = resident(&regions);
        self.inner.peak.fetch_max(total, Ordering::Relaxed);
        if total <= self.inner.high {
            return;
        }
        // Each round takes from the largest region; a region whose clock finds no victim
        // leaves the excess to the next round, so at most one round per region.
        let mut excess = total - self.inner.low;
        for _ in 0..regions.len() {
            let Some((largest, pages)) = regions
                .iter()
                .filter_map(Weak::upgrade)
                .map(|r| {
                    let pages = r.resident_pages();
                    (r, pages)
                })
                .max_by_key(|(_, pages)| *pages)
            else {
                return;
            };
            largest.evict_down_to(pages.saturating_sub(excess));
            excess = excess.saturating_sub(pages.saturating_sub(largest.resident_pages()));
            if excess == 0 {
                return;
            }
        }
    }

    /// The regions, locked (a panic elsewhere leaves the list usable).
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<dyn Evictable>>> {
        self.inner
            .regions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Pages resident in the live regions of `regions`.
fn resident(regions: &[Weak<dyn Evictable>]) -> u64 {
    regions
        .iter()
        .filter_map(Weak::upgrade)
        .map(|r| r.resident_pages())
        .sum()
}
