//! Read-ahead into the mapping: handler threads read the 2 MiB ranges ahead of a
//! sequential run of faults and install them before the run gets there, as the kernel's
//! mmap read-ahead brings a file's next folios in while the faulting thread still works
//! on the last ones. One handler serves the run's fault while another reads the next
//! range, so that two ranges are read at once.
//!
//! Only where it cannot change what the mapping holds or costs beyond its next pages: a
//! region that fills 2 MiB ranges (`Granularity::Huge`), served by handler threads (a
//! faulting thread serving itself has no one to read ahead for it), not foreign memory,
//! no budget, a run of read faults (a range read ahead of writes would take a
//! write-protect fault where the write's own fault installs it writable at once), and a
//! range the store reports as one extent. A range read ahead is installed exactly as a
//! read fault installs it: data Clean and write-protected (counted in `read_faults`), a
//! hole as the (huge) zero page (`zero_faults`), no block allocated; each counted in
//! `huge_faults` and `read_ahead_ranges`. So every invariant of a read holds.
//!
//! A missing fault on a range being read ahead is left to the reader, who wakes the range
//! once done, whether it installed it or not (a failed read installs nothing: the access
//! faults again and is served as any other, error included). See `ahead::Ahead::reading`
//! for why that wake comes after the mark is dropped.

use crate::HUGE_PAGES;
use crate::engine::config::Granularity;
use crate::engine::entries::State;
use crate::engine::huge;
use crate::engine::region::Region;
use crate::engine::stats::Counters;
use crate::sys::uffd::Fault;

/// The range of `fault` if the region reads ahead and it is a missing read fault.
fn range_of(region: &Region, fault: &Fault) -> Option<usize> {
    let config = &region.config;
    let reads_ahead =
        config.granularity == Granularity::Huge && config.wakes && !region.is_foreign();
    if !reads_ahead || fault.write || fault.write_protect || region.budget.is_some() {
        return None;
    }
    region
        .page_index(fault.address)
        .map(|index| index / HUGE_PAGES)
}

/// Records a fault a handler thread is about to serve; whether it continues a
/// sequential run (then call [`read_ahead`] once the queued faults are served).
pub(crate) fn continues_run(region: &Region, fault: &Fault) -> bool {
    range_of(region, fault).is_some_and(|range| region.ahead.note_fault(range))
}

/// Whether `fault` may be left alone: its range is being read ahead, and the reader wakes it.
pub(crate) fn is_being_read(region: &Region, fault: &Fault) -> bool {
    range_of(region, fault).is_some_and(|range| region.ahead.is_reading(range))
}

/// Reads ahead the ranges the region's run calls for (at most `ahead::DEPTH` past its
/// last fault), each into `scratch` (2 MiB), until one cannot be read ahead.
pub(crate) fn read_ahead(region: &Region, scratch: &mut [u8]) {
    let ranges = region.pages() / HUGE_PAGES;
    while let Some(range) = region.ahead.claim(ranges) {
        if !read_range(region, range, scratch) {
            return;
        }
    }
}

/// Reads `range` ahead under its mark, then wakes it (after the mark is dropped: see
/// `ahead::Ahead::reading`). Whether it went in.
fn read_range(region: &Region, range: usize, scratch: &mut [u8]) -> bool {
    let first = range * HUGE_PAGES;
    let Some(mark) = region.ahead.reading(range) else {
        return false;
    };
    let installed = install_range(region, first, scratch);
    drop(mark);
    let _ = region.wake(first, HUGE_PAGES);
    installed
}

/// Installs the range from page `first` as a read fault would, if it is free and Empty;
/// the 2 MiB path's own checks (every entry Empty and free, one extent) decide the rest.
/// Entries are taken with `try_lock` only: a range a fault is serving is left to it.
fn install_range(region: &Region, first: usize, scratch: &mut [u8]) -> bool {
    let Some(mut guard) = region.entries.try_lock(first) else {
        return false;
    };
    if guard.state() != State::Empty {
        return false;
    }
    // Counted before the install wakes anyone, as every fault is; taken back if it failed.
    let counter = &region.counters.read_ahead_ranges;
    Counters::add(counter, 1);
    let installed = matches!(
        huge::fill_range(region, &mut guard, false, scratch),
        Ok(Ok(()))
    );
    if !installed {
        Counters::sub(counter, 1);
    }
    installed
}
