//! Fault-around (the kernel's do_fault_around analog): with [`Granularity::FaultAround`]
//! a read fault on an Empty page also installs its Empty neighbours inside the aligned
//! window holding it, in the same fault, so a sequential reader takes one fault per window.
//!
//! What is installed is the stretch of free, Empty pages around the faulting page, inside
//! the window, over the faulting page's extent (all hole: zero pages; all data: one read
//! and one copy). It stops at the first page on either side that is present or locked,
//! and at a change of extent: a batched ZEROPAGE or COPY stops with EAGAIN at the first
//! present page and a retry there gives EEXIST (PERF-NOTES.md item 4), so present pages
//! are never handed to one, and each fault makes exactly one `fault::insert` call (one
//! ioctl, one fault counted). Pages beyond a present page get their own window when they
//! fault. Neighbours are locked with `try_lock` only, never waited for.
//!
//! Write faults are served at 4 KiB, as the kernel does (fault-around maps only for reads).
//!
//! [`Granularity::FaultAround`]: crate::Granularity::FaultAround

use std::ops::Range;

use crate::PAGE_SIZE;
use crate::entries::{EntryGuard, State};
use crate::error::Error;
use crate::fault::{self, Source};
use crate::huge::{Guards, join};
use crate::mapping::Shared;
use crate::stats::Counters;
use crate::store::{Extent, ExtentKind, Store, StoreError};

/// Serves a read fault on the Empty entry `guard` together with its neighbours in the
/// aligned window of `window` bytes; `None` when the 4 KiB path should serve it (a window
/// of one page, or a store error, which the 4 KiB path then reports for this page alone).
pub(crate) fn fill<'a>(
    shared: &'a Shared,
    guard: &mut EntryGuard<'a>,
    window: usize,
    scratch: &mut [u8],
) -> Option<Result<(), Error>> {
    let index = guard.index();
    let bounds = window_of(index, window, shared.region.len / PAGE_SIZE)?;
    let mut below = lock_free_empty(shared, (bounds.start..index).rev());
    below.reverse();
    let mut above = lock_free_empty(shared, index + 1..bounds.end);
    let free = index - below.len()..index + 1 + above.len();
    let (kind, run) = extent_run(&*shared.store, free.clone(), index).ok()?;
    // Release the neighbours outside the extent before the I/O.
    below.drain(..run.start - free.start);
    above.truncate(run.end - index - 1);
    let offset = shared.page_offset(run.start);
    let source = match kind {
        ExtentKind::Hole => Source::Hole,
        ExtentKind::Data => {
            let len = run.len() * PAGE_SIZE;
            if scratch.len() < len {
                return None;
            }
            shared.store.read_at(offset, &mut scratch[..len]).ok()?;
            Counters::add(&shared.counters.bytes_read, len as u64);
            Source::Data(&scratch[..len])
        }
    };
    // Counted before the install wakes the faulting thread; what was not mapped taken back.
    let neighbours = (below.len() + above.len()) as u64;
    Counters::add(&shared.counters.fault_around_pages, neighbours);
    let installed = {
        let mut run = join(&mut below, guard, &mut above);
        fault::insert(shared, &mut run, source, false)
    };
    let around = below.iter().chain(&above);
    let mapped = around.filter(|g| g.state() != State::Empty).count() as u64;
    Counters::sub(&shared.counters.fault_around_pages, neighbours - mapped);
    match installed {
        Ok(()) => Some(Ok(())),
        // The install stopped before the faulting page: serve it alone.
        Err(_) if guard.state() == State::Empty => None,
        Err(_) => Some(Ok(())),
    }
}

/// The aligned window of `window` bytes holding page `index`, clipped to a mapping of
/// `pages` pages; `None` if the window is a single page.
pub(crate) fn window_of(index: usize, window: usize, pages: usize) -> Option<Range<usize>> {
    let window_pages = window / PAGE_SIZE;
    if window_pages <= 1 {
        return None;
    }
    let start = index - index % window_pages;
    Some(start..(start + window_pages).min(pages))
}

/// Locks the pages of `indices` in order while each is free and Empty; stops at the first
/// that is not (never waits).
fn lock_free_empty<'a>(shared: &'a Shared, indices: impl Iterator<Item = usize>) -> Guards<'a> {
    let mut locked = Guards::new();
    for index in indices {
        match shared.entries.try_lock(index) {
            // A window is at most 2 MiB; past the guards' room, stop as at a busy page.
            Some(guard) if guard.state() == State::Empty => {
                if locked.try_push(guard).is_err() {
                    break;
                }
            }
            _ => break,
        }
    }
    locked
}

/// The extent kind of page `index` and the pages of `span` (which holds `index`) that
/// share it, asking the store from the start of `span`.
fn extent_run(
    store: &dyn Store,
    span: Range<usize>,
    index: usize,
) -> Result<(ExtentKind, Range<usize>), StoreError> {
    let mut at = span.start;
    loop {
        let (kind, pages) = page_run(store.extent((at * PAGE_SIZE) as u64)?);
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
    fn windows_are_aligned_and_clipped() {
        assert_eq!(window_of(5, 65536, 100), Some(0..16));
        assert_eq!(window_of(16, 65536, 100), Some(16..32));
        assert_eq!(window_of(97, 65536, 100), Some(96..100));
        assert_eq!(window_of(5, 4096, 100), None);
        assert_eq!(window_of(5, 100, 100), None);
        assert_eq!(window_of(600, 2 << 20, 4096), Some(512..1024));
    }

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
        let store = crate::MemStore::new(16 * PAGE_SIZE as u64);
        for page in [4usize, 5, 9] {
            store
                .write_at((page * PAGE_SIZE) as u64, &[1])
                .expect("write");
        }
        let run = |span: Range<usize>, index| extent_run(&store, span, index).expect("extent");
        assert_eq!(run(0..16, 2), (ExtentKind::Hole, 0..4));
        assert_eq!(run(0..16, 5), (ExtentKind::Data, 4..6));
        assert_eq!(run(0..16, 7), (ExtentKind::Hole, 6..9));
        assert_eq!(run(3..8, 7), (ExtentKind::Hole, 6..8));
        assert_eq!(run(0..16, 12), (ExtentKind::Hole, 10..16));
    }
}
