//! Eviction under the resident budget (the reclaim analog): choose victims with a CLOCK
//! (second chance) over the entry table and move them to Empty, writing Dirty ones back
//! first, so that a region larger than memory works.
//!
//! | entry | eviction                                                        | after |
//! |-------|-----------------------------------------------------------------|-------|
//! | Clean | drop the page (MADV_DONTNEED); the next access faults and reads the store | Empty |
//! | Dirty | write back (write-protect, copy out, store write), then drop    | Empty, evicted dirty |
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
//! **Refill.** A Dirty page evicted leaves its entry marked evicted-dirty (entry table,
//! invariant 6), so that the read fault that brings it back installs it writable and Dirty
//! (fault table: refill) and its rewrite takes no write-protect fault, each of which costs
//! an un-protect and a TLB shootdown. A refilled page that is not rewritten is written back
//! once more when next evicted, and comes back writable again, until a flush leaves it
//! Clean and protected: one store write per eviction of it, never one per access. Only
//! regions with synchronous tracking at 4 KiB or fault-around granularity are marked
//! ([`refills`]).
//!
//! **Watermarks and slack.** After every fault, once its entry lock is dropped, the thread
//! that served it (a handler thread, or the faulting thread itself with in-thread
//! resolution) checks the resident count; above the budget (`high`) it evicts until the
//! count is at most `low = high - batch`, so the syscalls are amortized over a batch
//! (`batch` is 1/8 of the budget, at most one step of the hand: 64 pages, or 512 with
//! [`Granularity::Huge`], whose step is a whole aligned 2 MiB
//! range so that a range installed as one huge page is dropped whole). The count
//! includes a page from the moment its entry moves to Clean or Dirty, before the ioctl
//! that maps it, until after the page is dropped, so Rss never exceeds it. Each thread
//! adds at most one fault's pages before it evicts, so resident memory stays at or under **budget + T × P pages**, T being the
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
//!
//! **Limits.** Memory the kernel has pinned for I/O into the mapping (an O_DIRECT read or
//! an io_uring fixed buffer in flight) is invisible here: evicting such a page drops it
//! while the device may still write it, as a flush may clean it. Eviction runs in the
//! fault-serving thread after the fault is resolved, allocation-free (so also in a SIGBUS
//! handler): a handler thread has already woken the faulting thread, and only the faults
//! queued behind it on that handler wait; with in-thread resolution the faulting thread
//! pays for the batch itself.

use std::time::Duration;

use crate::engine::budget::Budget;
use crate::engine::config::{DirtyTracking, Granularity};
use crate::engine::entries::{Age, EntryGuard, State};
use crate::engine::region::Region;
use crate::engine::run::{Guards, PageSet};
use crate::engine::shared_budget::Evictable;
use crate::engine::stats::Counters;
use crate::engine::writeback::{Then, writeback_locked};
use crate::error::Error;
use crate::{HUGE_PAGES, PAGE_SIZE};

/// Called after every fault, with no entry lock held: evicts down to the low watermark
/// if the resident pages exceed the budget.
pub(crate) fn after_fault(region: &Region) {
    let Some(budget) = &region.budget else {
        return;
    };
    if let Some(shared) = &region.config.shared_budget {
        shared.after_fault();
        return;
    }
    // Under `SequentialAround` the clock keeps room for one wide fault below the high
    // mark, so a sequential read can take its window (`has_room`). `has_room` is read
    // without a lock: concurrent wide faults may each pass it, so Rss stays within the
    // budget plus one fault's pages (at most one window) per serving thread (invariant 11).
    let reserve = wide_reserve(region).min(budget.high - budget.low);
    if region.entries.resident().0 + reserve > budget.high {
        evict_until(region, budget, budget.low.saturating_sub(reserve));
    }
}

/// The pages a `SequentialAround` region keeps free below its high mark for one wide
/// fault (0 for other granularities); capped by the caller at the clock's batch, so a small
/// budget is not emptied after every fault (it then mostly faults at 4 KiB).
fn wide_reserve(region: &Region) -> u64 {
    match region.config.granularity {
        Granularity::SequentialAround(window) => (window / PAGE_SIZE).min(HUGE_PAGES) as u64,
        _ => 0,
    }
}

/// Whether a wide fault of `pages` pages fits under the region's own budget (always
/// without one; never under a shared budget, whose other regions' faults race it).
pub(crate) fn has_room(region: &Region, pages: usize) -> bool {
    match (&region.budget, &region.config.shared_budget) {
        (None, _) => true,
        (Some(_), Some(_)) => false,
        (Some(budget), None) => region.entries.resident().0 + pages as u64 <= budget.high,
    }
}

/// A region under a shared budget: evicted through its own clock.
impl Evictable for Region {
    fn resident_pages(&self) -> u64 {
        self.entries.resident().0
    }

    fn evict_down_to(&self, target: u64) {
        if let Some(budget) = &self.budget {
            evict_until(self, budget, target);
        }
    }
}

/// Runs the clock until at most `target` pages are resident, or the hand wrapped three
/// times without getting there (the first sweep may only have cleared referenced bits;
/// a third start covers a sweep begun mid-table). The hand visits resident pages only,
/// so a sweep costs the resident pages (plus a summary word per 4096 pages), however
/// large the region.
fn evict_until(region: &Region, budget: &Budget, target: u64) {
    let pages = region.pages();
    let mut run = Guards::new();
    let mut wraps = 0;
    while wraps < 3 {
        let resident = region.entries.resident().0;
        if resident <= target {
            return;
        }
        let next_resident = |from| region.entries.next_resident(from);
        let Some((chunk, wrapped)) = budget.advance(pages, next_resident) else {
            return;
        };
        wraps += usize::from(wrapped);
        Counters::add(&region.counters.evict_scanned, chunk.len() as u64);
        evict_chunk(region, budget, chunk, resident - target, &mut run);
    }
}

/// Looks at the entries of `chunk` in ascending order and evicts up to `wanted` cold
/// resident ones, consecutive victims together. `run` is an empty buffer for the guards.
fn evict_chunk<'a>(
    region: &'a Region,
    budget: &Budget,
    chunk: std::ops::Range<usize>,
    mut wanted: u64,
    run: &mut Guards<'a>,
) {
    for index in chunk {
        if wanted == 0 {
            break;
        }
        if region.entries.age(index) != Age::Cold {
            continue;
        }
        // Never wait here: a locked entry is being faulted, flushed or evicted.
        let Some(guard) = region.entries.try_lock(index) else {
            continue;
        };
        // Re-check under the lock: a fault may have dropped or referenced it since.
        if !guard.state().is_resident() || guard.is_referenced() {
            continue;
        }
        if run.last().is_some_and(|last| last.index() + 1 != index) {
            evict_run(region, budget, run);
        }
        run.push(guard);
        wanted -= 1;
    }
    evict_run(region, budget, run);
}

/// Evicts the consecutive locked entries in `run`, records a failure for the next flush,
/// and unlocks them (leaving `run` empty).
fn evict_run(region: &Region, budget: &Budget, run: &mut Guards<'_>) {
    if let Some(first) = run.first().map(|guard| guard.index())
        && let Err(error) = evict_range(region, run, budget.delay)
    {
        region.record_error(first, &error);
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
    region: &Region,
    guards: &mut [EntryGuard<'_>],
    delay: Option<Duration>,
) -> Result<(), Error> {
    let Some(first) = guards.first() else {
        return Ok(());
    };
    let first = first.index();
    // Which pages were Dirty, to mark them evicted dirty once dropped (a run is at most
    // one step of the hand: 512 pages).
    debug_assert!(guards.len() <= crate::HUGE_PAGES);
    let mut was_dirty = PageSet::default();
    guards
        .iter()
        .enumerate()
        .filter(|(_, guard)| guard.state() == State::Dirty)
        .for_each(|(page, _)| was_dirty.insert(page));
    let dirty = writeback_dirty(region, guards)?;
    if let Some(delay) = delay {
        std::thread::sleep(delay);
    }
    // Every page is now equal to the store (Clean or Zero, or a write-around page never
    // written: Dirty, all zero over a hole) and write-protected: a write from here on
    // faults and waits for our locks.
    region.discard(first, guards.len())?;
    // Only now, written and dropped, does a page count as evicted dirty: if the writeback
    // or the drop failed, it is still resident and no mark is left.
    let refill = refills(region);
    for (page, guard) in guards.iter_mut().enumerate() {
        guard.set_evicted(refill && was_dirty.contains(page));
    }
    Counters::add(&region.counters.evictions, guards.len() as u64);
    Counters::add(&region.counters.evicted_dirty, dirty);
    Ok(())
}

/// Whether the region's pages evicted dirty come back writable (see Refill above):
/// synchronous tracking only (asynchronous tracking takes no write-protect fault to save),
/// at 4 KiB or fault-around granularity (a 2 MiB unit refills through its own path).
fn refills(region: &Region) -> bool {
    region.config.tracking == Some(DirtyTracking::Sync)
        && region.config.granularity != Granularity::Huge
}

/// Writes back each run of consecutive Dirty entries among `guards`; returns how many
/// pages it wrote.
fn writeback_dirty(region: &Region, guards: &mut [EntryGuard<'_>]) -> Result<u64, Error> {
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
        // Write-around pages never written stay protected and are dropped with the rest.
        let wrote = writeback_locked(region, run, Then::Drop)?;
        // Written but not yet synced: if the next sync fails, these cannot be written again.
        region.unsynced.note_evicted(wrote);
        written += wrote;
        rest = tail;
    }
    Ok(written)
}
