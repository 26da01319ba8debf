//! Eviction under the resident budget (the reclaim analog): choose victims with a CLOCK
//! (second chance) over the entry table and move them to Empty, writing Dirty ones back
//! first, so that a mapping larger than memory works.
//!
//! | entry | eviction                                                        | after |
//! |-------|-----------------------------------------------------------------|-------|
//! | Clean | drop the page (MADV_DONTNEED); the next access faults and reads the store | Empty |
//! | Dirty | write back (write-protect, copy out, store write), then drop    | Empty |
//! | Zero  | never chosen: the shared zero page holds no memory and is not in Rss | Zero |
//!
//! **Policy.** Only Clean and Dirty pages count against the budget (invariant 3 of the
//! entry table). A page is *hot* if a fault brought it in or wrote it (a missing fault, or
//! a write-protect fault on a Clean page) since the clock hand last passed it: the entry
//! table sets its referenced bit then (invariant 4). Accesses that do not fault (reads of a
//! resident page, writes to a page already Dirty) are invisible to user space, so a page
//! used only that way is hot for one sweep of the hand and a victim on the next; every
//! flush write-protects the dirty pages, so their next write marks them hot again. The
//! hand sweeps the table in index order, 64 entries at a time; a referenced entry loses
//! its bit (its second chance), an unreferenced resident one is evicted. Victims are
//! therefore found in ascending order, and consecutive ones are evicted as one run: one
//! write-protect, one store write of the Dirty pages, one MADV_DONTNEED.
//!
//! **Watermarks and slack.** After every fault, once its entry lock is dropped, the thread
//! that served it (a handler thread, or the faulting thread itself with in-thread
//! resolution) checks the resident count; above the budget (`high`) it evicts until the
//! count is at most `low = high - batch`, so the syscalls are amortized over a batch
//! (`batch` is 1/8 of the budget, at most one step of the hand: 64 pages, or 512 with
//! [`Granularity::Huge`], whose step is a whole aligned 2 MiB range so that a range
//! installed as one huge page is dropped whole). The count includes a page from the moment
//! its entry moves to Clean or Dirty, before the ioctl that maps it, until after the page
//! is dropped, so Rss never exceeds it. Each thread adds at most one fault's pages before
//! it evicts, so resident memory stays at or under **budget + T × P pages**, T being the
//! threads that resolve faults at once (the handler threads; with in-thread resolution,
//! the threads faulting at once) and P the pages one fault installs (1 on the 4 KiB path,
//! the window with fault-around, 512 on the 2 MiB path). The budget can be exceeded
//! further only when no victim can be taken in two sweeps: every resident page locked
//! (faults, a flush) or the store refusing writes of Dirty pages, which are never dropped
//! unwritten.
//!
//! **Races.** Eviction holds no entry lock when it starts and takes victims with
//! `try_lock` only, skipping busy entries, so it never waits while holding a lock and the
//! lock order of the entry table holds. If a write to page P races the eviction of P,
//! either it lands before the write-protect and is in the bytes written to the store, or it
//! takes a write-protect fault, which waits for P's lock; when the eviction unlocks P it is
//! Empty, the fault only wakes the writer (fault table: write-protect on Empty), whose
//! retry faults as missing and reads the store, which holds everything written before.
//! A read racing the drop likewise faults as missing and refills from the store. If the
//! store write fails, the pages stay Dirty and resident, and the error goes to the next
//! flush.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arrayvec::ArrayVec;

use crate::PAGE_SIZE;
use crate::entries::{Age, EntryGuard, State};
use crate::error::Error;
use crate::huge::HUGE_PAGES;
use crate::mapping::{Granularity, Shared};
use crate::stats::Counters;
use crate::writeback::writeback_locked;

/// Entries the clock hand looks at per step (and the most victims one step takes) on the
/// 4 KiB path and with fault-around.
const CHUNK: usize = 64;

/// Locked victims of one step, at most a 2 MiB range, kept on the stack (up to 8 KiB):
/// eviction may run in a SIGBUS handler, where nothing may allocate.
type Run<'a> = ArrayVec<EntryGuard<'a>, HUGE_PAGES>;

/// The smallest budget accepted, in pages: a single instruction may need several pages
/// resident at once (a copy between two page-crossing operands needs four).
pub(crate) const MIN_BUDGET_PAGES: u64 = 16;

/// The budget of one mapping and its clock hand.
pub(crate) struct Budget {
    /// Evict once more than this many pages are resident (the budget in pages).
    high: u64,
    /// ...down to this many.
    low: u64,
    /// Entries the hand looks at per step: `CHUNK`, or a whole aligned 2 MiB range with
    /// [`Granularity::Huge`], so that a range installed as one huge page is dropped whole
    /// (dropping a part splits it, and frees nothing until all of it is dropped).
    step: usize,
    /// The next entry the clock looks at; below the mapping's page count, a multiple of
    /// `step`.
    hand: AtomicUsize,
    /// Testing only: see `Options::evict_delay`.
    delay: Option<Duration>,
}

impl Budget {
    /// A budget of `bytes` of resident pages (rounded down to whole pages) for a mapping
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
    fn advance(&self, pages: usize) -> std::ops::Range<usize> {
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

/// Called after every fault, with no entry lock held: evicts down to the low watermark
/// if the resident pages exceed the budget.
pub(crate) fn after_fault(shared: &Shared) {
    let Some(budget) = &shared.budget else {
        return;
    };
    if shared.entries.resident().0 > budget.high {
        evict_until(shared, budget, budget.low);
    }
}

/// Runs the clock until at most `target` pages are resident, or two full sweeps found
/// too few victims (the first sweep may only have cleared referenced bits).
fn evict_until(shared: &Shared, budget: &Budget, target: u64) {
    let pages = shared.region.len / PAGE_SIZE;
    let mut run = Run::new();
    let mut scanned = 0;
    while scanned <= 2 * pages {
        let resident = shared.entries.resident().0;
        if resident <= target {
            return;
        }
        let chunk = budget.advance(pages);
        scanned += chunk.len();
        evict_chunk(shared, budget, chunk, resident - target, &mut run);
    }
}

/// Looks at the entries of `chunk` in ascending order and evicts up to `wanted` cold
/// resident ones, consecutive victims together. `run` is an empty buffer for the guards.
fn evict_chunk<'a>(
    shared: &'a Shared,
    budget: &Budget,
    chunk: std::ops::Range<usize>,
    mut wanted: u64,
    run: &mut Run<'a>,
) {
    for index in chunk {
        if wanted == 0 {
            break;
        }
        if shared.entries.age(index) != Age::Cold {
            continue;
        }
        // Never wait here: a locked entry is being faulted, flushed or evicted.
        let Some(guard) = shared.entries.try_lock(index) else {
            continue;
        };
        // Re-check under the lock: a fault may have dropped or referenced it since.
        if !guard.state().is_resident() || guard.is_referenced() {
            continue;
        }
        if run.last().is_some_and(|last| last.index() + 1 != index) {
            evict_run(shared, budget, run);
        }
        run.push(guard);
        wanted -= 1;
    }
    evict_run(shared, budget, run);
}

/// Evicts the consecutive locked entries in `run`, records a failure for the next flush,
/// and unlocks them (leaving `run` empty).
fn evict_run(shared: &Shared, budget: &Budget, run: &mut Run<'_>) {
    if let Some(first) = run.first().map(|guard| guard.index())
        && let Err(error) = evict_range(shared, run, budget.delay)
    {
        shared.record_error(first, &error);
    }
    run.clear();
}

/// Evicts consecutive locked entries (Clean, Dirty or Zero): writes back the Dirty ones
/// (write-protect, copy out, store write: Clean), then drops every page: Empty.
///
/// On a failed store write nothing is dropped: the pages written before stay Clean, the
/// rest Dirty, all resident. `delay` (testing only) sleeps between the writeback and the
/// drop, with the locks held, to widen the window a racing write must get through.
pub(crate) fn evict_range(
    shared: &Shared,
    guards: &mut [EntryGuard<'_>],
    delay: Option<Duration>,
) -> Result<(), Error> {
    let Some(first) = guards.first() else {
        return Ok(());
    };
    let address = shared.page_address(first.index());
    let dirty = writeback_dirty(shared, guards)?;
    if let Some(delay) = delay {
        std::thread::sleep(delay);
    }
    // Every page is now equal to the store (Clean or Zero) and write-protected: a write
    // from here on faults and waits for our locks.
    shared
        .region
        .try_discard(address, guards.len() * PAGE_SIZE)?;
    for guard in guards.iter_mut() {
        guard.set(State::Empty);
    }
    Counters::add(&shared.counters.evictions, guards.len() as u64);
    Counters::add(&shared.counters.evicted_dirty, dirty);
    Ok(())
}

/// Writes back each run of consecutive Dirty entries among `guards`; returns how many
/// pages it wrote.
fn writeback_dirty(shared: &Shared, guards: &mut [EntryGuard<'_>]) -> Result<u64, Error> {
    let mut written = 0;
    let mut rest = guards;
    while !rest.is_empty() {
        let clean = rest
            .iter()
            .take_while(|g| g.state() != State::Dirty)
            .count();
        rest = &mut rest[clean..];
        let dirty = rest
            .iter()
            .take_while(|g| g.state() == State::Dirty)
            .count();
        let (run, tail) = rest.split_at_mut(dirty);
        writeback_locked(shared, run)?;
        written += dirty as u64;
        rest = tail;
    }
    Ok(written)
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
