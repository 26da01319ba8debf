//! The one fill routine: install a locked run of Empty entries from the store, as one
//! fault (one page, a fault-around window or a 2 MiB range): allocate a hole that is to be
//! written, read data, count, insert. And its sibling for present pages, [`upgrade`].
//!
//! The caller has asked the store what the run holds ([`extent_run`], or the 2 MiB path's
//! uniform-extent check) and trimmed the run to that one extent. A wide fill is counted
//! ([`Width`]) before the insert wakes the faulting thread, so that its counters are
//! right the moment the access completes, and taken back for what it did not install.
//!
//! Errors: a failed allocation, read or install is returned, and the caller decides: the
//! 4 KiB path poisons the page (`fault::fail`), a wide path falls back to 4 KiB, which
//! then reports the error of the faulting page itself. An install that stops after the
//! faulting page went in is a success: the neighbours it did not reach stay Empty for
//! their own faults.

use std::ops::Range;

use crate::PAGE_SIZE;
use crate::engine::entries::{EntryGuard, State};
use crate::engine::install::{Source, insert};
use crate::engine::region::Region;
use crate::engine::stats::Counters;
use crate::engine::zero::is_zero;
use crate::error::Error;
use crate::store::{Extent, ExtentKind, Store, StoreError};

/// How wide a fill is, for its counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Width {
    /// One page (the faulting one): counted by `insert` alone.
    Page,
    /// A fault-around window: every neighbour installed counts in `fault_around_pages`.
    Around,
    /// A 2 MiB range: one `huge_faults`, if the faulting page went in.
    Huge,
}

/// Whether a fill installs its run writable and Dirty, and which of a hole it allocates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mkwrite {
    /// Write-protected: a read.
    No,
    /// Writable and Dirty, a hole allocated first (DAX: a write allocates at the fault).
    Yes,
    /// Writable and Dirty, but of a hole only the faulting page is allocated: the others
    /// are marked unwritten (entries invariant 7), allocated by their writeback if they
    /// are written, skipped by it while they are not (write-around, `huge.rs`). Over
    /// data, as `Yes`.
    Around,
}

impl Mkwrite {
    /// `Yes` for a write, `No` for a read.
    pub(crate) fn of(write: bool) -> Mkwrite {
        if write { Mkwrite::Yes } else { Mkwrite::No }
    }
}

/// Fills the locked Empty `run` (consecutive, holding the faulting page `held`) from the
/// store, which holds `kind` over all of it: a hole is allocated first as `mkwrite` says;
/// data is read into `scratch` (which must hold the run: see [`has_room`]).
pub(crate) fn fill(
    region: &Region,
    run: &mut [&mut EntryGuard<'_>],
    held: usize,
    kind: ExtentKind,
    mkwrite: Mkwrite,
    width: Width,
    scratch: &mut [u8],
) -> Result<(), Error> {
    let offset = region.page_offset(run[0].index());
    let len = run.len() * PAGE_SIZE;
    let around = mkwrite == Mkwrite::Around && kind == ExtentKind::Hole;
    let source = match kind {
        ExtentKind::Hole => {
            match mkwrite {
                Mkwrite::No => {}
                Mkwrite::Yes => region.store.allocate(offset, len as u64)?,
                Mkwrite::Around => region
                    .store
                    .allocate(region.page_offset(held), PAGE_SIZE as u64)?,
            }
            Source::Hole
        }
        ExtentKind::Data => {
            // Callers check `has_room`; never a panic on a fault path all the same.
            let buf = scratch.get_mut(..len).ok_or_else(|| Error::Os {
                op: "fill (scratch buffer too small)",
                source: std::io::Error::from_raw_os_error(libc::ENOBUFS),
            })?;
            region.store.read_at(offset, buf)?;
            Counters::add(&region.counters.bytes_read, len as u64);
            // A dense snapshot stores its zeros as data. In memory that only fills (another
            // process's), a run that reads as zeros gets the zero page: read once, never
            // copied, no memory.
            if region.is_foreign() && mkwrite == Mkwrite::No && is_zero(buf) {
                Source::Hole
            } else {
                Source::Data(buf)
            }
        }
    };
    let writable = mkwrite != Mkwrite::No;
    counted(region, run, held, width, |run| {
        // Counted before the insert wakes the faulting thread, as every fault is.
        let around_pages = if around { run.len() as u64 - 1 } else { 0 };
        Counters::add(&region.counters.write_around_pages, around_pages);
        let inserted = insert(region, run, source, writable);
        if around {
            // Also after an install that stopped part-way: its prefix went in.
            let marked = mark_unwritten(run, held);
            Counters::sub(&region.counters.write_around_pages, around_pages - marked);
        }
        inserted
    })
}

/// Write-around: marks the pages of `run` that went in writable over the hole, other
/// than the allocated `held`, unwritten (entries invariant 7), and returns how many.
/// Still under their locks, so a flush cannot have taken them yet; a store into one
/// since the insert woke the faulting thread is found by the writeback's zero check,
/// which follows its write-protect.
fn mark_unwritten(run: &mut [&mut EntryGuard<'_>], held: usize) -> u64 {
    let mut marked = 0;
    for guard in run.iter_mut() {
        if guard.index() != held && guard.state() == State::Dirty {
            guard.set_ahead(false);
            marked += 1;
        }
    }
    marked
}

/// Whether `scratch` can hold a fill of `pages` pages of `kind` (holes need no buffer).
pub(crate) fn has_room(scratch: &[u8], kind: ExtentKind, pages: usize) -> bool {
    kind == ExtentKind::Hole || scratch.len() >= pages * PAGE_SIZE
}

/// Runs `install` over `run` (consecutive entries in one state) counted as one fault of
/// `width`: counted before (the install wakes the faulting thread), taken back for what it
/// did not change. A wide fault is `Ok` once the faulting page `held` has changed state,
/// even if the install stopped past it; the neighbours it did not reach are left for their
/// own faults.
pub(crate) fn counted(
    region: &Region,
    run: &mut [&mut EntryGuard<'_>],
    held: usize,
    width: Width,
    install: impl FnOnce(&mut [&mut EntryGuard<'_>]) -> Result<(), Error>,
) -> Result<(), Error> {
    let counters = &region.counters;
    let (counter, counted) = match width {
        // The 4 KiB path: `insert` counts the fault; nothing else to count or forgive.
        Width::Page => return install(run),
        Width::Around => (&counters.fault_around_pages, run.len() as u64 - 1),
        Width::Huge => (&counters.huge_faults, 1),
    };
    let before = run[0].state();
    Counters::add(counter, counted);
    let installed = install(run);
    let changed = |guard: &EntryGuard<'_>| guard.state() != before;
    let held_in = run
        .iter()
        .any(|guard| guard.index() == held && changed(guard));
    let kept = match width {
        Width::Around => {
            run.iter().filter(|guard| changed(guard)).count() as u64 - u64::from(held_in)
        }
        Width::Page | Width::Huge => u64::from(held_in),
    };
    Counters::sub(counter, counted - kept);
    match installed {
        Err(_) if held_in => Ok(()),
        other => other,
    }
}

/// A write to present pages (Zero, Clean, or Dirty but protected): allocates the blocks
/// behind zero pages first when `allocate`, then makes the run writable and Dirty.
pub(crate) fn upgrade(
    region: &Region,
    run: &mut [&mut EntryGuard<'_>],
    allocate: bool,
) -> Result<(), Error> {
    if allocate {
        let offset = region.page_offset(run[0].index());
        region
            .store
            .allocate(offset, (run.len() * PAGE_SIZE) as u64)?;
    }
    insert(region, run, Source::Hole, true)
}

/// The extent kind of page `index` and the pages of `span` (which holds `index`) that
/// share it, asking `store` (where page 0 lies at `offset`) from the start of `span`.
pub(crate) fn extent_run(
    store: &dyn Store,
    offset: u64,
    span: Range<usize>,
    index: usize,
) -> Result<(ExtentKind, Range<usize>), StoreError> {
    let mut at = span.start;
    loop {
        let (kind, pages) = page_run(store.extent(offset + (at * PAGE_SIZE) as u64)?);
        let end = at + pages;
        if end > index {
            return Ok((kind, at..end.min(span.end)));
        }
        at = end;
    }
}

/// An extent reported at a page boundary, in whole pages (at least one): a hole covers the
/// pages wholly inside it; a page only partly hole holds data and is read as data.
pub(crate) fn page_run(extent: Extent) -> (ExtentKind, usize) {
    let page = PAGE_SIZE as u64;
    match extent.kind {
        ExtentKind::Hole if extent.len >= page => (ExtentKind::Hole, (extent.len / page) as usize),
        ExtentKind::Hole => (ExtentKind::Data, 1),
        ExtentKind::Data => (ExtentKind::Data, extent.len.div_ceil(page).max(1) as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_become_whole_pages() {
        use ExtentKind::*;
        let run = |kind, len| page_run(Extent { kind, len });
        assert_eq!(run(Hole, 8192), (Hole, 2));
        assert_eq!(run(Hole, 8192 + 100), (Hole, 2));
        assert_eq!(run(Hole, 100), (Data, 1));
        assert_eq!(run(Data, 1), (Data, 1));
        assert_eq!(run(Data, 4097), (Data, 2));
    }

    #[test]
    fn the_run_is_the_faulting_page_extent() {
        let store = crate::store::MemStore::new(16 * PAGE_SIZE as u64);
        for page in [4usize, 5, 9] {
            store
                .write_at((page * PAGE_SIZE) as u64, &[1])
                .expect("write");
        }
        let run = |span: Range<usize>, index| extent_run(&store, 0, span, index).expect("extent");
        assert_eq!(run(0..16, 2), (ExtentKind::Hole, 0..4));
        assert_eq!(run(0..16, 5), (ExtentKind::Data, 4..6));
        assert_eq!(run(0..16, 7), (ExtentKind::Hole, 6..9));
        assert_eq!(run(3..8, 7), (ExtentKind::Hole, 6..8));
        assert_eq!(run(0..16, 12), (ExtentKind::Hole, 10..16));
        // The same store seen from page 4 on (a region starting there).
        let run = |span: Range<usize>, index| {
            extent_run(&store, 4 * PAGE_SIZE as u64, span, index).expect("extent")
        };
        assert_eq!(run(0..12, 1), (ExtentKind::Data, 0..2));
    }
}
