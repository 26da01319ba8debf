//! Writeback (the dax_writeback_mapping_range analog): flush writes back exactly the
//! dirty pages, write-protecting each run before copying it out, then syncs the store.
//!
//! For each run of consecutive dirty pages: lock the entries (ascending), write-protect
//! the run, write it to the store straight from the region's memory, mark the pages Clean, unlock.
//! If a write to a page races its writeback, either it lands before the write-protect
//! and is in the bytes written, or it comes after and takes a write-protect fault, which
//! waits for the entry lock and then re-dirties the page (one new fault).

use crate::PAGE_SIZE;
use crate::engine::config::DirtyTracking;
use crate::engine::entries::{EntryGuard, State};
use crate::engine::region::PageKind;
use crate::engine::region::Region;
use crate::engine::stats::Counters;
use crate::engine::zero::is_zero;
use crate::error::Error;
use crate::store::StoreError;
use crate::sys::pagemap::{MAX_REGIONS, PageRegion};

/// Longest run written with one store call (2 MiB): a dirty 2 MiB range mapped as one
/// huge page is write-protected whole, which keeps the huge mapping (a part would split it).
const MAX_RUN: usize = 512;

/// Writes back every page dirtied before the call, makes the store durable, and returns
/// the first error: a failed writeback, a failed sync (whose pages stay Dirty, or whose
/// loss sticks: `unsynced.rs`), dirty pages dropped because the store shrank, or a fault
/// that failed since the last flush.
pub(crate) fn flush(region: &Region) -> Result<(), Error> {
    let _serial = region.flushing.lock().unwrap_or_else(|e| e.into_inner());
    // A store into a zero page still being mapped completes without a fault; the fault
    // marks the page Dirty before its window closes, so after this wait it is indexed.
    region.wait_zero_windows();
    let collected = match region.config.tracking {
        Some(DirtyTracking::Async) => collect_written(region),
        Some(DirtyTracking::Sync) => claim_window_stores(region),
        None => Ok(()),
    };
    let mut truncated = drop_beyond_end(region)?;
    let dirty = region.entries.take_dirty();
    region.unsynced.note_flushed(&dirty);
    for (done, run) in runs(&dirty).enumerate() {
        match writeback_range(region, run.clone()) {
            Ok(()) => {}
            Err(error @ Error::Truncated { .. }) => {
                truncated = Some(merge_truncated(truncated.take(), error));
            }
            Err(error) => {
                // Invariant 2: keep every page still Dirty findable by the next flush.
                let rest = runs(&dirty).skip(done + 1).flatten();
                for index in run.chain(rest) {
                    if region.entries.peek(index) == State::Dirty {
                        region.entries.remark_dirty(index);
                    }
                }
                return Err(error);
            }
        }
    }
    collected?;
    sync(region)?;
    Counters::add(&region.counters.flushes, 1);
    if let Some(error) = region.unsynced.lost().or_else(|| region.abandoned_error()) {
        return Err(error);
    }
    match pending_error(region, truncated) {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// The error this flush reports besides its own writeback's: a drop past a shrunk end
/// (`truncated`) merged with one eviction reported, else the first fault-time error; a
/// drop that must wait behind a fault's error is kept for the next flush.
fn pending_error(region: &Region, truncated: Option<Error>) -> Option<Error> {
    match (truncated, region.take_error()) {
        (None, pending) => pending,
        (Some(dropped), None) => Some(dropped),
        (Some(dropped), Some(evicted @ Error::Truncated { .. })) => {
            Some(merge_truncated(Some(evicted), dropped))
        }
        (Some(dropped), Some(fault)) => {
            region.record_error(0, &dropped);
            Some(fault)
        }
    }
}

/// Makes the store durable. If that fails, the pages written since the last good sync go
/// back to Dirty (the next flush writes them again), or, for those no longer in memory,
/// the loss sticks (`unsynced.rs`).
fn sync(region: &Region) -> Result<(), Error> {
    let evicted = region.unsynced.evicted_before_sync();
    match region.store.sync() {
        Ok(()) => {
            region.unsynced.synced(evicted);
            Ok(())
        }
        Err(error) => {
            let errno = match &error {
                StoreError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
                _ => libc::EIO,
            };
            region
                .unsynced
                .sync_failed(errno, |index| redirty(region, index));
            Err(error.into())
        }
    }
}

/// After a failed sync: makes page `index` Dirty again if it is still in memory (a Clean
/// page holds the bytes written; a Dirty one will be written anyway). False if it left.
fn redirty(region: &Region, index: usize) -> bool {
    let mut guard = region.entries.lock(index);
    match guard.state() {
        State::Clean => {
            guard.set(State::Dirty);
            true
        }
        State::Dirty => {
            region.entries.remark_dirty(index);
            true
        }
        // A zero page was never written; an Empty one was evicted since it was written.
        State::Zero => true,
        State::Empty => false,
    }
}

/// The store shrank below the region's end (another process truncated it): drops every
/// page at or past the new end, so that its next access faults and gets SIGBUS as the
/// kernel's mmap of a truncated file does, and returns [`Error::Truncated`] if dirty pages
/// were among them. One size query (`Store::current_len`) per flush.
fn drop_beyond_end(region: &Region) -> Result<Option<Error>, Error> {
    let size = region.store.current_len()?;
    let end = region.page_offset(region.pages());
    if size >= end {
        return Ok(None);
    }
    let page = PAGE_SIZE as u64;
    let first = size
        .next_multiple_of(page)
        .saturating_sub(region.page_offset(0))
        .div_ceil(page) as usize;
    let mut dirty = 0;
    for index in first..region.pages() {
        if region.entries.peek(index) == State::Empty {
            continue;
        }
        let mut guard = region.entries.lock(index);
        dirty += u64::from(guard.state() == State::Dirty);
        drop_locked(region, std::slice::from_mut(&mut guard))?;
    }
    Ok((dirty > 0).then_some(Error::Truncated { size, pages: dirty }))
}

/// Drops the pages of consecutive locked entries, whatever they hold: they become Empty.
/// Only for pages past the end of a store that shrank: their bytes have nowhere to go.
fn drop_locked(region: &Region, guards: &mut [EntryGuard<'_>]) -> Result<(), Error> {
    let Some(first) = guards.first() else {
        return Ok(());
    };
    region.discard(first.index(), guards.len())?;
    for guard in guards.iter_mut() {
        guard.set(State::Empty);
    }
    Ok(())
}

/// One [`Error::Truncated`] for a flush that dropped pages more than once: the latest
/// size, the pages of both.
fn merge_truncated(earlier: Option<Error>, later: Error) -> Error {
    match (earlier, later) {
        (Some(Error::Truncated { pages, .. }), Error::Truncated { size, pages: more }) => {
            Error::Truncated {
                size,
                pages: pages + more,
            }
        }
        (_, later) => later,
    }
}

/// Asynchronous dirty tracking: finds the pages written since they were last protected,
/// re-protecting them in the same walk (PAGEMAP_SCAN with PM_SCAN_WP_MATCHING), and marks
/// them Dirty. A write after the walk un-protects its page again (the kernel resolves it)
/// and the next flush finds it. Every written page is marked even if an allocation fails
/// (its data is only in memory now); the first error is returned.
fn collect_written(region: &Region) -> Result<(), Error> {
    let (start, end) = (region.base(), region.base() + region.len());
    let mut regions = [PageRegion::default(); MAX_REGIONS];
    let mut done = start;
    let mut first_error = None;
    while done < end {
        let walk_start = done;
        let (count, walk_end) = region.scan_written(done, &mut regions)?;
        for range in new_ranges(&regions[..count], &mut done) {
            for address in range.step_by(PAGE_SIZE) {
                if let Some(index) = region.page_index(address)
                    && let Err(error) = mark_written(region, index)
                {
                    first_error.get_or_insert(error);
                }
            }
        }
        // The walk may stop early (output full); it never goes backwards.
        done = done.max(walk_end);
        if done == walk_start {
            break;
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The parts of `regions` at or after `done`, advancing `done` past them. The kernel may
/// report a walk end before regions it already returned (DESIGN.md, section 9); clipping
/// at `done` keeps each page once.
fn new_ranges(regions: &[PageRegion], done: &mut usize) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::with_capacity(regions.len());
    for region in regions {
        let start = (region.start as usize).max(*done);
        let end = region.end as usize;
        if start < end {
            ranges.push(start..end);
            *done = end;
        }
    }
    ranges
}

/// Synchronous tracking: finds the Zero pages that hold a store which got into their
/// zero-page window (`install::settle`) and makes them Dirty, so that this flush writes
/// them. One PAGEMAP_SCAN of the region for its private pages, only while it has zero
/// pages protected unverified; each one whose entry says Zero is asked again under its
/// lock (the first answer may be stale: the page evicted and mapped again since).
///
/// The mark is cleared before the scan: a zero page protected after the clear marks it
/// again (and its store, if any, is in the page table before the mark), so none is left
/// unasked by every later flush.
fn claim_window_stores(region: &Region) -> Result<(), Error> {
    if !region
        .unverified_zero
        .swap(false, std::sync::atomic::Ordering::SeqCst)
    {
        return Ok(());
    }
    let mut candidates = Vec::new();
    let scanned = region.for_each_run(0, region.pages(), PageKind::Private, |pages| {
        candidates.extend(pages.filter(|&index| region.entries.peek(index) == State::Zero))
    });
    if let Err(error) = scanned {
        // Not known: ask again next time.
        region
            .unverified_zero
            .store(true, std::sync::atomic::Ordering::SeqCst);
        return Err(error);
    }
    for index in candidates {
        let mut guard = region.entries.lock(index);
        if guard.state() != State::Zero {
            continue;
        }
        let mut private = false;
        let asked = region.for_each_run(index, 1, PageKind::Private, |_| private = true);
        // Not known (the scan failed): Dirty, never wrong.
        if private || asked.is_err() {
            guard.set(State::Dirty);
        }
    }
    Ok(())
}

/// A page the kernel saw written: make its entry Dirty (allocating behind a zero page).
fn mark_written(region: &Region, index: usize) -> Result<(), Error> {
    let mut guard = region.entries.lock(index);
    let before = guard.state();
    if before == State::Empty || before == State::Dirty {
        return Ok(());
    }
    // Dirty first, so the bytes stay findable even if the allocation fails.
    guard.set(State::Dirty);
    Counters::add(
        &region.counters.mkwrite_faults,
        u64::from(before == State::Clean),
    );
    Counters::add(
        &region.counters.zero_to_dirty,
        u64::from(before == State::Zero),
    );
    if before == State::Zero {
        region
            .store
            .allocate(region.page_offset(index), PAGE_SIZE as u64)?;
    }
    Ok(())
}

/// Splits ascending indices into runs of consecutive pages, at most `MAX_RUN` long.
fn runs(indices: &[usize]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut rest = indices;
    std::iter::from_fn(move || {
        let (&first, _) = rest.split_first()?;
        let mut len = 1;
        while len < rest.len() && len < MAX_RUN && rest[len] == first + len {
            len += 1;
        }
        rest = &rest[len..];
        Some(first..first + len)
    })
}

/// Writes back the Dirty pages among `run` (ascending, consecutive indices).
pub(crate) fn writeback_range(region: &Region, run: std::ops::Range<usize>) -> Result<(), Error> {
    let mut guards: Vec<EntryGuard<'_>> = Vec::with_capacity(run.len());
    for index in run {
        let guard = region.entries.lock(index);
        if guard.state() == State::Dirty {
            guards.push(guard);
        } else {
            // Cleaned or evicted since it was marked: nothing to write; the lock is
            // dropped here, and no later index is locked yet, so the order holds.
            drop(guard);
            writeback_locked(region, &mut guards, Then::Keep)?;
            guards.clear();
        }
    }
    writeback_locked(region, &mut guards, Then::Keep).map(drop)
}

/// What becomes of a write-around page a writeback finds never written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Then {
    /// Flush: it stays Dirty and writable (protection lifted again), for the next flush
    /// to look at again.
    Keep,
    /// Eviction: it stays protected, to be dropped with the rest of the run (a write let
    /// in now would be lost by the drop).
    Drop,
}

/// Writes back consecutive locked Dirty pages: write-protect, copy out, mark Clean;
/// returns how many pages were written. A page made writable ahead of its first write
/// (entries invariant 7) is not written while it still equals the store: a write-around
/// page still all zero over its hole ([`Then`] says what becomes of it), a lifted one
/// equal to the store's bytes (read back for the comparison by a flush only; it becomes
/// Clean). The comparison follows the write-protect, so a store racing it either is in
/// the bytes compared or faults and waits for our lock.
pub(crate) fn writeback_locked(
    region: &Region,
    guards: &mut [EntryGuard<'_>],
    then: Then,
) -> Result<u64, Error> {
    let Some(first) = guards.first() else {
        return Ok(0);
    };
    let first = first.index();
    region.writeprotect(first, guards.len(), true, false)?;
    let stored = match then {
        Then::Keep if guards.iter().any(|guard| guard.is_lifted()) => {
            stored_bytes(region, first, guards.len())
        }
        _ => None,
    };
    let fate = |guard: &EntryGuard<'_>| fate(region, guard, stored.as_deref(), first);
    let mut written = 0;
    let mut rest = guards;
    while let Some(head) = rest.first() {
        let kind = fate(head);
        let len = rest.iter().take_while(|guard| fate(guard) == kind).count();
        let (run, tail) = rest.split_at_mut(len);
        match kind {
            Fate::Write => {
                write_out(region, run)?;
                written += len as u64;
            }
            Fate::Unchanged => skip_unchanged(region, run, then)?,
        }
        rest = tail;
    }
    Ok(written)
}

/// What a writeback does with a locked, write-protected Dirty page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Write,
    /// Made writable ahead of its first write and still equal to the store.
    Unchanged,
}

/// The fate of page `guard` of a run from `first`, given the store's bytes of the run
/// (`stored`, read for lifted pages). Never skips in an abandoned region, whose pages
/// stay writable (`keep_writable`).
fn fate(region: &Region, guard: &EntryGuard<'_>, stored: Option<&[u8]>, first: usize) -> Fate {
    let (unwritten, lifted) = (guard.is_unwritten(), guard.is_lifted());
    if !(unwritten || lifted) || region.is_abandoned() {
        return Fate::Write;
    }
    // SAFETY: the page is present (Dirty), write-protected, and its entry locked by us.
    let Ok(now) = (unsafe { region.bytes(guard.index(), 1) }) else {
        return Fate::Write;
    };
    let at = (guard.index() - first) * PAGE_SIZE;
    let same = match stored.and_then(|stored| stored.get(at..at + PAGE_SIZE)) {
        Some(stored) if lifted => now == stored,
        _ => unwritten && is_zero(now),
    };
    if same { Fate::Unchanged } else { Fate::Write }
}

/// The store's bytes of `pages` pages from `first`, for comparing lifted pages; `None`
/// if they cannot be read (the pages are then written: always correct).
fn stored_bytes(region: &Region, first: usize, pages: usize) -> Option<Vec<u8>> {
    let mut bytes = vec![0; pages * PAGE_SIZE];
    region
        .store
        .read_at(region.page_offset(first), &mut bytes)
        .ok()?;
    Counters::add(&region.counters.bytes_read, bytes.len() as u64);
    Some(bytes)
}

/// Pages made writable ahead of their first write and found unchanged: counted, not
/// written. A lifted page equals the store's bytes: Clean (it stays protected). A
/// write-around page, for a flush: made writable again (waking a write that faulted on
/// the protection) and marked for the next flush, still unwritten; for eviction: left
/// protected, dropped with its run.
fn skip_unchanged(region: &Region, guards: &mut [EntryGuard<'_>], then: Then) -> Result<(), Error> {
    Counters::add(&region.counters.unwritten_skipped, guards.len() as u64);
    let mut rest = guards;
    while let Some(head) = rest.first() {
        let lifted = head.is_lifted();
        let len = rest.iter().take_while(|g| g.is_lifted() == lifted).count();
        let (run, tail) = rest.split_at_mut(len);
        if lifted {
            run.iter_mut().for_each(|guard| guard.set(State::Clean));
        } else if then == Then::Keep {
            region.writeprotect(run[0].index(), len, false, true)?;
            run.iter()
                .for_each(|guard| region.entries.remark_dirty(guard.index()));
        }
        rest = tail;
    }
    Ok(())
}

/// Copies consecutive locked, write-protected Dirty pages out to the store, then marks
/// them Clean.
fn write_out(region: &Region, guards: &mut [EntryGuard<'_>]) -> Result<(), Error> {
    let Some(first) = guards.first() else {
        return Ok(());
    };
    let first = first.index();
    let offset = region.page_offset(first);
    let pages = guards.len();
    // SAFETY: the pages are present (Dirty), now write-protected, and their entries
    // locked by us.
    let bytes = unsafe { region.bytes(first, pages)? };
    // On failure the pages stay Dirty (and protected: the next write re-faults and
    // lifts it); the caller re-marks them for the next flush.
    if let Err(error) = region.store.write_at(offset, bytes) {
        return match error {
            StoreError::BeyondEnd { size, .. } => writeback_within(region, guards, size),
            other => Err(other.into()),
        };
    }
    if region.is_abandoned() {
        keep_writable(region, guards, first)?;
    } else {
        for guard in guards.iter_mut() {
            guard.set(State::Clean);
        }
    }
    Counters::add(&region.counters.pages_written_back, guards.len() as u64);
    Counters::add(&region.counters.bytes_written, bytes.len() as u64);
    Ok(())
}

/// After writing back pages of an abandoned region (`engine::abandon`): nobody reads its
/// write-protect faults any more, so the pages are made writable again (waking a write
/// that came while they were protected) and stay Dirty, for the next flush to write again.
fn keep_writable(region: &Region, guards: &[EntryGuard<'_>], first: usize) -> Result<(), Error> {
    region.writeprotect(first, guards.len(), false, true)?;
    for guard in guards {
        region.entries.remark_dirty(guard.index());
    }
    Ok(())
}

/// A writeback of consecutive locked Dirty pages found the store shrunk to `size`: writes
/// back the pages before the new end and drops the rest (nothing is written past the
/// end, so the file does not grow back), then reports the drop.
fn writeback_within(
    region: &Region,
    guards: &mut [EntryGuard<'_>],
    size: u64,
) -> Result<(), Error> {
    let end = size.next_multiple_of(PAGE_SIZE as u64);
    let kept = guards
        .iter()
        .take_while(|guard| region.page_offset(guard.index()) < end)
        .count();
    let (head, tail) = guards.split_at_mut(kept);
    // A second shrink while writing the head reports itself; its pages add to ours.
    let written = write_out(region, head);
    drop_locked(region, tail)?;
    let dropped = Error::Truncated {
        size,
        pages: tail.len() as u64,
    };
    match written {
        Ok(()) => Err(dropped),
        Err(error @ Error::Truncated { .. }) => Err(merge_truncated(Some(dropped), error)),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(start: u64, end: u64) -> PageRegion {
        PageRegion {
            start,
            end,
            categories: 0,
        }
    }

    #[test]
    fn scan_results_are_clipped_to_new_pages() {
        let mut done = 0x1000;
        let first = new_ranges(&[region(0x1000, 0x3000), region(0x5000, 0x6000)], &mut done);
        assert_eq!(first, vec![0x1000..0x3000, 0x5000..0x6000]);
        assert_eq!(done, 0x6000);
        // A later call that restarts before regions already returned yields only new pages.
        let again = new_ranges(&[region(0x5000, 0x8000), region(0x9000, 0xa000)], &mut done);
        assert_eq!(again, vec![0x6000..0x8000, 0x9000..0xa000]);
        assert!(new_ranges(&[region(0x2000, 0x9000)], &mut done).is_empty());
    }

    #[test]
    fn runs_split_at_gaps_and_at_the_cap() {
        let indices: Vec<usize> = [0, 1, 2, 5, 7, 8]
            .into_iter()
            .chain(10..10 + MAX_RUN + 3)
            .collect();
        let found: Vec<_> = runs(&indices).collect();
        assert_eq!(
            found,
            vec![
                0..3,
                5..6,
                7..9,
                10..10 + MAX_RUN,
                10 + MAX_RUN..13 + MAX_RUN
            ]
        );
        assert_eq!(runs(&[]).count(), 0);
    }
}
