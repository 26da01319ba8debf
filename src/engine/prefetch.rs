//! Prefetch: installing pages of a region before anything faults on them (a recorded
//! working set, replayed right after a snapshot restore's handshake). Each stretch of
//! free, Empty pages over one extent becomes one fill: one read and one COPY (or one
//! ZEROPAGE), at most 2 MiB. Pages that are locked (a fault is on them) or present are
//! skipped: their fault serves them. Entries are taken with `try_lock` only, so a
//! prefetch never waits on a fault, nor a fault long on a prefetch.

use std::ops::Range;

use crate::engine::entries::{EntryGuard, State};
use crate::engine::fill::{Mkwrite, Width, extent_run, fill, has_room};
use crate::engine::hugetlb;
use crate::engine::region::Region;
use crate::{HUGE_PAGES, PAGE_SIZE};

/// Installs what it can of `pages` of `region` (clipped to it); returns how many pages it
/// installed. `scratch` holds at least 2 MiB. Failures are not errors: a page that could
/// not be prefetched is served when it faults.
pub(crate) fn prefetch(region: &Region, pages: Range<usize>, scratch: &mut [u8]) -> usize {
    let end = pages.end.min(region.pages());
    let mut at = pages.start;
    let mut installed = 0;
    while at < end {
        if region.is_hugetlb() {
            let unit = region.unit_of(at);
            if let Some(mut guard) = region.entries.try_lock(unit) {
                let empty = guard.state() == State::Empty;
                if empty && hugetlb::fill(region, &mut guard, scratch).is_ok() {
                    installed += HUGE_PAGES;
                }
            }
            at = unit + HUGE_PAGES;
            continue;
        }
        let span = at..end.min(at + HUGE_PAGES);
        at = match fill_stretch(region, span, scratch) {
            Stretch::Filled(next, pages) => {
                installed += pages;
                next
            }
            Stretch::Skipped(next) => next,
        };
    }
    installed
}

/// What [`fill_stretch`] did, and where the next one starts.
enum Stretch {
    /// Installed this many pages.
    Filled(usize, usize),
    /// Installed nothing (a busy or present page, or a failed fill).
    Skipped(usize),
}

/// Fills the stretch of free Empty pages of one extent at the start of `span`.
fn fill_stretch(region: &Region, span: Range<usize>, scratch: &mut [u8]) -> Stretch {
    let start = span.start;
    let Ok((kind, run)) = extent_run(&*region.store, region.page_offset(0), span, start) else {
        return Stretch::Skipped(start + 1);
    };
    let mut guards: Vec<EntryGuard<'_>> = Vec::with_capacity(run.len());
    for index in run {
        match region.entries.try_lock(index) {
            Some(guard) if guard.state() == State::Empty => guards.push(guard),
            _ => break,
        }
    }
    if guards.is_empty() || !has_room(scratch, kind, guards.len()) {
        return Stretch::Skipped(start + 1);
    }
    let next = start + guards.len();
    let mut stretch: Vec<&mut EntryGuard<'_>> = guards.iter_mut().collect();
    // Counted as one fault of its kind (a batch), as a fault-around window's first page.
    match fill(
        region,
        &mut stretch,
        start,
        kind,
        Mkwrite::No,
        Width::Page,
        scratch,
    ) {
        Ok(()) => Stretch::Filled(next, next - start),
        Err(_) => Stretch::Skipped(next),
    }
}

/// The page of `region` at store offset `offset`, if the region maps it.
pub(crate) fn page_at(region: &Region, offset: u64) -> Option<usize> {
    let first = region.page_offset(0);
    let page = usize::try_from(offset.checked_sub(first)? / PAGE_SIZE as u64).ok()?;
    (page < region.pages()).then_some(page)
}
