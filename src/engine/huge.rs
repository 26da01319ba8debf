//! The 2 MiB path (the dax_iomap_pmd_fault analog): with [`Granularity::Huge`] a missing
//! fault resolves the whole aligned 2 MiB range holding its page at once, when the
//! kernel's conditions hold (DESIGN.md, section 4;
//! invariants 8 and 9).
//!
//! Conditions, checked in this order; each failure falls back to the 4 KiB path and is
//! counted in `huge_fallbacks`:
//! 1. the range lies inside the region ([`range_of`]);
//! 2. all 512 entries are Empty and free: they are locked with `try_lock` in ascending
//!    order and all released at once if any is held or not Empty (`run::Span::lock_all`),
//!    never waiting while holding entry locks (the faulting page's own lock is held);
//! 3. the store reports one extent over the whole range, all hole or all data
//!    ([`uniform`]);
//! 4. the store answers: a failed extent query, allocation or read falls back, so that
//!    the 4 KiB path reports the error of the faulting page itself, not of a neighbour.
//!
//! A 4 KiB fault never upgrades to 2 MiB: once any entry of a range is present, the range
//! is served page by page until all of it is Empty again.
//!
//! How a range is installed ([`plan`]), always through `fill::fill` with a run of 512:
//! - holes: the kernel's huge zero page, one PMD moved in (`install::insert_zero_page`),
//!   where the kernel can be trusted with it (`sys::huge_zero`) and the region moves huge
//!   pages in; else 512 zero-page entries; either way one write-protect and one
//!   PAGEMAP_SCAN. A write splits the PMD; the other 511 pages stay Zero and protected;
//! - data: one transparent huge page filled with the range's bytes and moved in
//!   (`install::move_in`: UFFDIO_MOVE into the range after MADV_DONTNEED freed its page
//!   table, which maps it as one huge page), write-protected; or, where no huge page can
//!   be had (THP off, no free slot, UFFDIO_MOVE unavailable, the move failed), one 2 MiB
//!   UFFDIO_COPY with the write-protect mode: still one fault, as 512 small pages.
//!
//! A write fault on a hole range, with `Options::write_around` (the default) and room
//! under the budget, installs the whole range writable and Dirty, allocating only its
//! own page; the others are marked unwritten, and writeback skips them while they are
//! all zero. A write fault on a data range (or without write-around) installs the range
//! as a read would, then upgrades its own page (`fill::upgrade`): dirty tracking stays
//! exact at 4 KiB; a later write that continues a sequential write lifts the rest of
//! the range at once ([`lift`]), and flush compares those pages with the store.
//! Lifting the protection of one page of a huge mapping splits it in the kernel; the
//! other 511 stay protected and Clean.
//! With `Options::huge_dirty` a write instead installs the whole range writable and Dirty
//! (one writable huge mapping), and a write-protect fault on a range that is all Clean or
//! all Zero upgrades the whole range ([`upgrade`]), like the kernel's PMD entries.
//!
//! The move window (a moved-in page arrives writable) is closed in `install::move_in`.
//!
//! Never touches the store's bytes beyond the range, and never waits for an entry lock.

use std::ops::Range;

use crate::engine::config::Granularity;
use crate::engine::entries::{EntryGuard, State};
use crate::engine::evict;
use crate::engine::fill::{self, Mkwrite, Width, has_room};
use crate::engine::install::{Source, insert, window_stores};
use crate::engine::policy::{Access, Decision, decide};
use crate::engine::region::Region;
use crate::engine::run::{PageSet, Span};
use crate::engine::stats::Counters;
use crate::error::Error;
use crate::store::{Extent, ExtentKind};
use crate::{HUGE_PAGE_SIZE, HUGE_PAGES};

/// Why a fault was not served as a whole 2 MiB range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// The aligned range crosses the end of the region.
    PastEnd,
    /// An entry of the range is present or locked by another fault.
    Occupied,
    /// The store reports more than one extent over the range.
    Mixed,
    /// The store failed to say, allocate or read, or the install failed before it
    /// reached the faulting page.
    Failed,
    /// The caller has no 2 MiB buffer to read the range into.
    NoBuffer,
}

/// The aligned 2 MiB range of pages holding `index`, in a region of `pages` pages.
pub(crate) fn range_of(index: usize, pages: usize) -> Result<Range<usize>, Fallback> {
    let start = index - index % HUGE_PAGES;
    let end = start + HUGE_PAGES;
    if end > pages {
        return Err(Fallback::PastEnd);
    }
    Ok(start..end)
}

/// What the whole range is, given the store's extent at its start.
pub(crate) fn uniform(extent: Extent) -> Result<ExtentKind, Fallback> {
    if extent.len < HUGE_PAGE_SIZE as u64 {
        return Err(Fallback::Mixed);
    }
    Ok(extent.kind)
}

/// How a fault the 2 MiB path takes is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// How the whole range is installed: write-protected, or writable and Dirty (a hole
    /// range allocated first, or with write-around only at the faulting page).
    pub(crate) mkwrite: Mkwrite,
    /// Then make the faulting page writable and Dirty.
    pub(crate) upgrade: bool,
}

/// The plan for a fault (`write` or read) on a range of `kind`, given the region's
/// `huge_dirty` and `write_around` options.
pub(crate) fn plan(write: bool, kind: ExtentKind, huge_dirty: bool, write_around: bool) -> Plan {
    let (mkwrite, upgrade) = match (write, kind) {
        (false, _) => (Mkwrite::No, false),
        (true, _) if huge_dirty => (Mkwrite::Yes, false),
        (true, ExtentKind::Hole) if write_around => (Mkwrite::Around, false),
        (true, _) => (Mkwrite::No, true),
    };
    Plan { mkwrite, upgrade }
}

/// Serves a missing fault on the Empty entry `guard` as a whole 2 MiB range; `None` when
/// it falls back to 4 KiB (counted). An error is the faulting page's (see `fault::fail`).
pub(crate) fn fill<'a>(
    region: &'a Region,
    guard: &mut EntryGuard<'a>,
    write: bool,
    scratch: &mut [u8],
) -> Option<Result<(), Error>> {
    count(region, fill_range(region, guard, write, scratch))
}

/// Serves a write to a present page by upgrading more than its page: with
/// `Options::huge_dirty` its whole range when all of it is Clean (lift the protection of
/// 2 MiB); with `huge_dirty` or write-around its whole range when all of it is Zero (drop
/// the zero pages, install 2 MiB writable as a write to the Empty hole range would); with
/// write-around, a write to a Clean page right after two Dirty ones (a sequential write
/// over data) lifts the protection of the Clean pages after it to the range's end
/// ([`lift`]). `None` when the 4 KiB upgrade serves it.
pub(crate) fn upgrade<'a>(
    region: &'a Region,
    guard: &mut EntryGuard<'a>,
) -> Option<Result<(), Error>> {
    let config = &region.config;
    if config.granularity != Granularity::Huge {
        return None;
    }
    let index = guard.index();
    match guard.state() {
        State::Clean if config.huge_dirty => {
            count(region, upgrade_range(region, guard, State::Clean))
        }
        State::Zero if config.huge_dirty || write_around(region) => {
            count(region, upgrade_range(region, guard, State::Zero))
        }
        State::Clean if config.write_around && continues_a_write(region, index) => {
            let end = (index - index % HUGE_PAGES + HUGE_PAGES).min(region.pages());
            Some(lift(region, guard, index + 1..end))
        }
        _ => None,
    }
}

/// Whether a write to page `index` may lift the pages after it: the two pages before it,
/// in its range, are Dirty (a sequential write), and the region has no budget. Two, not
/// one, so that sparse random writes (1% of the pages) almost never lift a range they
/// will not write (one in 10,000 writes, not one in 100): a lifted page costs a read of
/// the store at the next flush. No budget, because eviction cannot compare (it may run
/// in a signal handler, with no buffer): it would write every lifted page back.
fn continues_a_write(region: &Region, index: usize) -> bool {
    let dirty = |index| region.entries.peek(index) == State::Dirty;
    region.budget.is_none() && index % HUGE_PAGES >= 2 && dirty(index - 1) && dirty(index - 2)
}

/// A write to the Clean page `guard` that continues a sequential write: lifts the
/// protection of it and of the free Clean pages of `next` next to it (after it, or
/// before it for a descending write), in one ioctl (one fault instead of one per page),
/// all Dirty. Without a budget the others are marked lifted (entries invariant 7), so
/// that a flush writes only those whose bytes then differ from the store's; under one
/// they are plain Dirty (eviction cannot compare: it may run in a signal handler, with
/// no buffer), and a lifted page the write never reaches is written back unchanged. No
/// memory is added: the pages are resident already. The marks follow the ioctl that
/// wakes the faulting thread; a flush racing that waits for our entry locks, so it never
/// finds a lifted page unmarked.
pub(crate) fn lift<'a>(
    region: &'a Region,
    guard: &mut EntryGuard<'a>,
    next: Range<usize>,
) -> Result<(), Error> {
    let index = guard.index();
    let mut span = if next.start > index {
        Span::lock_ahead(&region.entries, index, next.end, State::Clean)
    } else {
        Span::lock_behind(&region.entries, index, next.start, State::Clean)
    };
    let mut run = span.join(guard);
    let ahead = run.len() as u64 - 1;
    // Counted before the insert wakes the faulting thread, as every fault is.
    let counter = &region.counters.write_around_pages;
    Counters::add(counter, ahead);
    let lifted = insert(region, &mut run, Source::Hole, true);
    let mut marked = 0;
    let compared = region.budget.is_none();
    for entry in run.iter_mut().filter(|entry| entry.index() != index) {
        if entry.state() == State::Dirty {
            if compared {
                entry.set_ahead(true);
            }
            marked += 1;
        }
    }
    Counters::sub(counter, ahead - marked);
    lifted
}

/// Whether a write into a hole range may install it whole (`Options::write_around`):
/// only if its 512 pages fit under the region's budget, whose Rss bound is one fault's
/// pages per serving thread (a write-protected zero range costs no memory).
fn write_around(region: &Region) -> bool {
    region.config.write_around && evict::has_room(region, HUGE_PAGES)
}

/// Counts a fallback (2 MiB faults are counted by `fill::counted`).
fn count(
    region: &Region,
    outcome: Result<Result<(), Error>, Fallback>,
) -> Option<Result<(), Error>> {
    match outcome {
        Ok(served) => Some(served),
        Err(_) => {
            Counters::add(&region.counters.huge_fallbacks, 1);
            None
        }
    }
}

/// Fills the Empty range of the locked entry `guard` for a `write` or a read, uncounted
/// when it falls back (`fill` counts; a read-ahead, `engine::read_ahead`, does not).
pub(crate) fn fill_range<'a>(
    region: &'a Region,
    guard: &mut EntryGuard<'a>,
    write: bool,
    scratch: &mut [u8],
) -> Result<Result<(), Error>, Fallback> {
    let index = guard.index();
    let range = range_of(index, region.pages())?;
    let mut span = Span::lock_all(&region.entries, range.clone(), index, State::Empty)
        .ok_or(Fallback::Occupied)?;
    let offset = region.page_offset(range.start);
    let extent = region.store.extent(offset).map_err(|_| Fallback::Failed)?;
    let kind = uniform(extent)?;
    if !has_room(scratch, kind, HUGE_PAGES) {
        return Err(Fallback::NoBuffer);
    }
    let config = &region.config;
    let plan = plan(write, kind, config.huge_dirty, write_around(region));
    let mut run = span.join(guard);
    let filled = fill::fill(
        region,
        &mut run,
        index,
        kind,
        plan.mkwrite,
        Width::Huge,
        scratch,
    );
    filled.map_err(|_| Fallback::Failed)?;
    drop(run);
    drop(span);
    // A write on the exact path: the page is Zero, Clean, or Dirty if a store got into
    // the install window; upgrade it as a write-protect fault would, in the same trip.
    match (plan.upgrade, decide(Access::Write, guard.state(), false)) {
        (true, Decision::Upgrade { allocate }) => Ok(fill::upgrade(region, &mut [guard], allocate)),
        _ => Ok(Ok(())),
    }
}

fn upgrade_range<'a>(
    region: &'a Region,
    guard: &mut EntryGuard<'a>,
    state: State,
) -> Result<Result<(), Error>, Fallback> {
    let index = guard.index();
    let range = range_of(index, region.pages())?;
    let mut span =
        Span::lock_all(&region.entries, range.clone(), index, state).ok_or(Fallback::Occupied)?;
    let mut run = span.join(guard);
    let upgraded = if state == State::Zero {
        // A store that got into a zero page's window (`install::settle`): that page is
        // Dirty, the range no longer all zeros; the 4 KiB upgrade serves the write.
        let mut all = PageSet::default();
        (0..HUGE_PAGES).for_each(|page| all.insert(page));
        let stores = window_stores(region, range.start, HUGE_PAGES, &all);
        if !stores.is_empty() {
            for (page, entry) in run.iter_mut().enumerate() {
                if stores.contains(page) {
                    entry.set(State::Dirty);
                }
            }
            return Err(Fallback::Occupied);
        }
        // Zero pages hold nothing: drop them (a store to one faults and waits for our
        // locks) and install the range as a write to the Empty hole range would.
        let _ = region.discard(range.start, HUGE_PAGES);
        run.iter_mut().for_each(|entry| entry.set(State::Empty));
        let config = &region.config;
        let plan = plan(
            true,
            ExtentKind::Hole,
            config.huge_dirty,
            write_around(region),
        );
        let kind = ExtentKind::Hole;
        fill::fill(
            region,
            &mut run,
            index,
            kind,
            plan.mkwrite,
            Width::Huge,
            &mut [],
        )
    } else {
        fill::counted(region, &mut run, index, Width::Huge, |run| {
            insert(region, run, Source::Hole, true)
        })
    };
    upgraded.map_err(|_| Fallback::Failed)?;
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PAGE_SIZE;

    fn extent(kind: ExtentKind, len: usize) -> Extent {
        Extent {
            kind,
            len: len as u64,
        }
    }

    #[test]
    fn the_range_must_lie_inside_the_mapping() {
        assert_eq!(range_of(0, 1024), Ok(0..512));
        assert_eq!(range_of(700, 1024), Ok(512..1024));
        assert_eq!(range_of(1023, 1024), Ok(512..1024));
        // A 3 MiB mapping: the second range crosses its end.
        assert_eq!(range_of(600, 768), Err(Fallback::PastEnd));
        assert_eq!(range_of(3, 16), Err(Fallback::PastEnd));
        assert_eq!(range_of(511, 512), Ok(0..512));
    }

    #[test]
    fn the_store_must_report_one_extent_over_the_range() {
        use ExtentKind::*;
        assert_eq!(uniform(extent(Hole, HUGE_PAGE_SIZE)), Ok(Hole));
        assert_eq!(uniform(extent(Data, 64 << 20)), Ok(Data));
        assert_eq!(
            uniform(extent(Data, HUGE_PAGE_SIZE - 1)),
            Err(Fallback::Mixed)
        );
        assert_eq!(uniform(extent(Hole, PAGE_SIZE)), Err(Fallback::Mixed));
    }

    #[test]
    fn plans_keep_dirty_tracking_exact_unless_asked() {
        use ExtentKind::{Data, Hole};
        use Mkwrite::{Around, No, Yes};
        let rows = [
            // (write, kind, huge_dirty, write_around) -> (mkwrite, upgrade)
            ((false, Hole, false, true), (No, false)),
            ((false, Data, true, true), (No, false)),
            ((true, Data, false, true), (No, true)),
            ((true, Hole, false, false), (No, true)),
            ((true, Hole, false, true), (Around, false)),
            ((true, Hole, true, true), (Yes, false)),
            ((true, Data, true, false), (Yes, false)),
        ];
        for ((write, kind, huge_dirty, around), (mkwrite, upgrade)) in rows {
            let expected = Plan { mkwrite, upgrade };
            let row = format!("{write} {kind:?} {huge_dirty} {around}");
            assert_eq!(plan(write, kind, huge_dirty, around), expected, "{row}");
        }
    }
}
