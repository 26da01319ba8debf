//! Fault-around (the kernel's do_fault_around analog): with [`Granularity::FaultAround`]
//! a read fault on an Empty page also installs its Empty neighbours inside the aligned
//! window holding it, in the same fault, so a sequential reader takes one fault per window.
//!
//! What is installed is the stretch of free, Empty pages around the faulting page, inside
//! the window, over the faulting page's extent (all hole: zero pages; all data: one read
//! and one copy). It stops at the first page on either side that is present or locked,
//! and at a change of extent: a batched ZEROPAGE or COPY stops with EAGAIN at the first
//! present page and a retry there gives EEXIST (DESIGN.md, section 9), so
//! present pages are never handed to one, and each fault makes exactly one
//! `install::insert` call (one ioctl, one fault counted). Pages beyond a present page get
//! their own window when they fault. Neighbours are locked with `try_lock` only, never
//! waited for. A window is at most 2 MiB, as the kernel caps fault_around_bytes at one
//! page table.
//!
//! Write faults are served at 4 KiB, as the kernel does (fault-around maps only for reads).
//!
//! A refill (a read of a page evicted dirty: see the fault table) installs only the
//! stretch of neighbours that were evicted dirty too, writable and Dirty like the faulting
//! page when the store holds data, and a plain read of data stops at the first neighbour
//! evicted dirty (left, with its mark, to its own refill); over a hole both read the
//! window as zero pages.
//!
//! [`Granularity::FaultAround`]: crate::Granularity::FaultAround

use std::ops::Range;

use crate::engine::config::Granularity;
use crate::engine::entries::{EntryGuard, State};
use crate::engine::fill::{Mkwrite, Width, extent_run, fill, has_room};
use crate::engine::huge;
use crate::engine::region::Region;
use crate::engine::run::Span;
use crate::error::Error;
use crate::store::ExtentKind;
use crate::{HUGE_PAGES, PAGE_SIZE};

/// Serves a read fault on the Empty entry `guard` together with its neighbours in the
/// aligned window of `window` bytes; `None` when the 4 KiB path should serve it (a window
/// of one page, or a store error, which the 4 KiB path then reports for this page alone).
/// With `refill` (the page was evicted dirty), data comes back writable and Dirty, over
/// the neighbours evicted dirty only.
pub(crate) fn fill_around<'a>(
    region: &'a Region,
    guard: &mut EntryGuard<'a>,
    window: usize,
    refill: bool,
    scratch: &mut [u8],
) -> Option<Result<(), Error>> {
    let index = guard.index();
    let bounds = window_of(index, window, region.pages())?;
    let mut span = Span::lock_free(&region.entries, bounds, index);
    let (kind, mut pages) =
        extent_run(&*region.store, region.page_offset(0), span.pages(), index).ok()?;
    if kind == ExtentKind::Data {
        // Data neighbours come back as the faulting page does: a refill takes those evicted
        // dirty too, a plain read those that were not (each keeps its mark for its own fault).
        let alike = span.stretch(|neighbour| neighbour.was_evicted_dirty() == refill);
        pages = pages.start.max(alike.start)..pages.end.min(alike.end);
    }
    let mkwrite = Mkwrite::of(refill && kind == ExtentKind::Data);
    // Release the neighbours outside the extent before the I/O.
    span.keep(pages.clone());
    if !has_room(scratch, kind, pages.len()) {
        return None;
    }
    let mut run = span.join(guard);
    fill(
        region,
        &mut run,
        index,
        kind,
        mkwrite,
        Width::Around,
        scratch,
    )
    .ok()?;
    Some(Ok(()))
}

/// The aligned window of `window` bytes (at most 2 MiB) holding page `index`, clipped to a
/// region of `pages` pages; `None` if the window is a single page.
pub(crate) fn window_of(index: usize, window: usize, pages: usize) -> Option<Range<usize>> {
    let window_pages = (window / PAGE_SIZE).min(HUGE_PAGES);
    if window_pages <= 1 {
        return None;
    }
    let start = index - index % window_pages;
    Some(start..(start + window_pages).min(pages))
}

/// Serves a write to a Clean page that continues a sequential write (the two pages
/// before it Dirty, or the two after it: a descending write, as a partition's right-hand
/// cursor makes) by lifting the protection of the free Clean pages ahead of it to its
/// window's edge too ([`huge::lift`]): one write-protect fault a window instead of one a
/// page. Under [`Granularity::SequentialAround`] (the default under a budget, whose
/// clean pages come back and are written again: a budgeted sort's first pass took one
/// write-protect fault, one handler round trip and one TLB shootdown, per page), with
/// write-around on. `None` when the 4 KiB upgrade serves it.
///
/// [`Granularity::SequentialAround`]: crate::Granularity::SequentialAround
pub(crate) fn upgrade<'a>(
    region: &'a Region,
    guard: &mut EntryGuard<'a>,
) -> Option<Result<(), Error>> {
    let Granularity::SequentialAround(window) = region.config.granularity else {
        return None;
    };
    if !region.config.write_around || guard.state() != State::Clean {
        return None;
    }
    let (index, pages) = (guard.index(), region.pages());
    let window = window_of(index, window, pages)?;
    let dirty = |index: usize| region.entries.peek(index) == State::Dirty;
    if index >= 2 && dirty(index - 1) && dirty(index - 2) && index + 1 < window.end {
        return Some(huge::lift(region, guard, index + 1..window.end));
    }
    if index + 2 < pages && dirty(index + 1) && dirty(index + 2) && index > window.start {
        return Some(huge::lift(region, guard, window.start..index));
    }
    None
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
        // Wider windows are capped at 2 MiB (a run of guards holds no more).
        assert_eq!(window_of(600, 8 << 20, 4096), Some(512..1024));
    }
}
