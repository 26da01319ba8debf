//! Read-ahead into the mapping: handler threads read the 2 MiB ranges ahead of a
//! sequential run of read faults and install them before the run gets there, as the
//! kernel's mmap read-ahead brings a file's next folios in while the faulting thread still
//! works on the last ones. One handler serves the run's fault while another reads the
//! next range, so that two ranges are read at once.
//!
//! At any granularity but a budget's (`Config::read_ahead_unit`): a run is faults on
//! consecutive units (2 MiB ranges, fault-around windows or pages: see `ahead`). At
//! 2 MiB the fault fills its own range and the next ranges are read ahead; finer, the rest
//! of the fault's own range is read ahead first. Only where it cannot change what the
//! mapping holds or costs beyond its next pages: served by handler threads (a faulting
//! thread serving itself has no one to read ahead for it), not foreign memory, no budget,
//! a run of read faults (a range read ahead of writes would take a write-protect fault
//! where the write's own fault installs it writable at once).
//!
//! A range read ahead is installed exactly as read faults install it: data Clean and
//! write-protected (counted in `read_faults`), a hole as the (huge) zero page
//! (`zero_faults`), no block allocated; at 2 MiB one range as one `huge_faults` (the
//! 2 MiB path's own checks: every entry free and Empty, one extent), finer each stretch
//! of free Empty pages of one extent as one read fault over a 2 MiB fault-around window
//! (`fault_around_pages`). Each range counts once in `read_ahead_ranges`. So every
//! invariant of a read holds.
//!
//! A missing fault on a range being read ahead is left to the reader, who wakes the range
//! once done, whether it installed it or not (a failed read installs nothing: the access
//! faults again and is served as any other, error included). See `ahead::Ahead::reading`
//! for why that wake comes after the mark is dropped.

use crate::HUGE_PAGE_SIZE;
use crate::HUGE_PAGES;
use crate::engine::around::fill_around;
use crate::engine::config::Granularity;
use crate::engine::entries::State;
use crate::engine::huge;
use crate::engine::region::Region;
use crate::engine::stats::Counters;
use crate::sys::uffd::Fault;

/// The unit of `fault` and the units of a range (see `ahead`), if the region reads ahead
/// and it is a missing read fault.
fn unit_of(region: &Region, fault: &Fault) -> Option<(usize, usize)> {
    let unit = region.config.read_ahead_unit()?;
    if fault.write || fault.write_protect || region.is_foreign() || region.is_hugetlb() {
        return None;
    }
    let index = region.page_index(fault.address)?;
    Some((index / unit, HUGE_PAGES / unit))
}

/// Records a fault a handler thread is about to serve; whether it continues a
/// sequential run (then call [`read_ahead`] once the queued faults are served).
pub(crate) fn continues_run(region: &Region, fault: &Fault) -> bool {
    unit_of(region, fault).is_some_and(|(unit, per_range)| region.ahead.note_fault(unit, per_range))
}

/// Whether `fault` may be left alone: its range is being read ahead, and the reader wakes it.
pub(crate) fn is_being_read(region: &Region, fault: &Fault) -> bool {
    unit_of(region, fault)
        .is_some_and(|(unit, per_range)| region.ahead.is_reading(unit / per_range))
}

/// Reads ahead the ranges the region's run calls for (at most `ahead::DEPTH` past its
/// last fault's), each into `scratch` (2 MiB), until one cannot be read ahead.
pub(crate) fn read_ahead(region: &Region, scratch: &mut [u8]) {
    let Some(unit) = region.config.read_ahead_unit() else {
        return;
    };
    let ranges = region.pages().div_ceil(HUGE_PAGES);
    while let Some(range) = region.ahead.claim(ranges, HUGE_PAGES / unit) {
        if !read_range(region, range, scratch) {
            return;
        }
    }
}

/// Reads `range` ahead under its mark, then wakes it (after the mark is dropped: see
/// `ahead::Ahead::reading`). Whether it went in.
fn read_range(region: &Region, range: usize, scratch: &mut [u8]) -> bool {
    let first = range * HUGE_PAGES;
    let pages = HUGE_PAGES.min(region.pages() - first);
    let Some(mark) = region.ahead.reading(range) else {
        return false;
    };
    // Counted before the install wakes anyone, as every fault is; taken back if it failed.
    let counter = &region.counters.read_ahead_ranges;
    Counters::add(counter, 1);
    let installed = if region.config.granularity == Granularity::Huge {
        install_range(region, first, scratch)
    } else {
        install_pages(region, first, pages, scratch)
    };
    if !installed {
        Counters::sub(counter, 1);
    }
    drop(mark);
    let _ = region.wake(first, pages);
    installed
}

/// Installs the whole 2 MiB range from page `first` as a read fault would, if it is
/// free and Empty; the 2 MiB path's own checks (every entry Empty and free, one extent)
/// decide the rest. Entries are taken with `try_lock` only: a range a fault is serving
/// is left to it.
fn install_range(region: &Region, first: usize, scratch: &mut [u8]) -> bool {
    let Some(mut guard) = region.entries.try_lock(first) else {
        return false;
    };
    if guard.state() != State::Empty {
        return false;
    }
    matches!(
        huge::fill_range(region, &mut guard, false, scratch),
        Ok(Ok(()))
    )
}

/// Installs the free Empty pages among the `pages` from page `first` (a range the region
/// fills a page or a window at a time), as a read fault with a 2 MiB fault-around window
/// would: each stretch of one extent between present pages in one read and one install
/// (`around::fill_around`). Whether any went in. The pages of the run's own range before
/// its last fault are present, so its rest is one stretch; a page a fault holds is
/// skipped (`try_lock`), and so is a stretch whose read failed (its faults report it).
fn install_pages(region: &Region, first: usize, pages: usize, scratch: &mut [u8]) -> bool {
    let mut installed = false;
    for index in first..first + pages {
        if region.entries.peek(index) != State::Empty {
            continue;
        }
        let Some(mut guard) = region.entries.try_lock(index) else {
            continue;
        };
        if guard.state() != State::Empty {
            continue;
        }
        let filled = fill_around(region, &mut guard, HUGE_PAGE_SIZE, false, scratch);
        installed |= matches!(filled, Some(Ok(())));
    }
    installed
}
