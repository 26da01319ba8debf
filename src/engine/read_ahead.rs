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
//! mapping holds or costs beyond its next pages: not foreign memory, no budget, a run of
//! read faults (a range read ahead of writes would take a write-protect fault where the
//! write's own fault installs it writable at once). Handler threads read ahead once their
//! queue is empty; a region whose faulting threads serve themselves (in-thread) has a
//! read-ahead thread of its own (`resolve::ahead_thread`), asked by the fault that
//! continued the run ([`ask_after`]), and a fault on a range it is reading waits for it
//! ([`wait_for_reader`]).
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
//! faults again and is served as any other, error included); in-thread, the fault waits
//! for the mark to drop, then is served as any other (a wake, if the range went in). See
//! `ahead::Ahead::reading` for why that wake comes after the mark is dropped.

use crate::HUGE_PAGE_SIZE;
use crate::HUGE_PAGES;
use crate::engine::around::fill_around;
use crate::engine::config::Granularity;
use crate::engine::entries::State;
use crate::engine::huge;
use crate::engine::region::Region;
use crate::engine::stats::Counters;
use crate::sys::uffd::Fault;

/// The pages of one read fault, if the region's runs are read ahead: the configuration's
/// unit, in this process's own memory (another's is only filled, as its faults ask).
pub(crate) fn unit(region: &Region) -> Option<usize> {
    let unit = region.config.read_ahead_unit()?;
    (!region.is_foreign()).then_some(unit)
}

/// The unit of `fault` and the units of a range (see `ahead`), if the region reads ahead
/// and it is a missing read fault.
fn unit_of(region: &Region, fault: &Fault) -> Option<(usize, usize)> {
    let unit = unit(region)?;
    if fault.write || fault.write_protect {
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

/// For a faulting thread serving its own `fault` (in-thread): if its range is being read
/// ahead, waits until the reader is done (at most a second), so that the fault finds the
/// range in rather than reading it a second time. Signal-safe.
pub(crate) fn wait_for_reader(region: &Region, fault: &Fault) {
    if let Some((unit, per_range)) = unit_of(region, fault) {
        let limit = std::time::Duration::from_secs(1);
        region.ahead.wait_read(unit / per_range, limit);
    }
}

/// For a faulting thread that served its own `fault`, which continued a run: asks the
/// region's read-ahead thread to read ahead of it, unless the fault mapped a 2 MiB hole.
/// Such a fault maps the next hole range itself (the huge zero page) sooner than the
/// thread could, woken across CPUs: measured, 1 GiB `sparse-read` at 2m in-thread, 52-54
/// ns a page without the ask, 72-126 with it. (Handler threads read hole ranges ahead:
/// two handlers map them side by side, 178-182 ns a page before, 127-150 after.)
/// Signal-safe.
pub(crate) fn ask_after(region: &Region, fault: &Fault) {
    let huge = region.config.granularity == Granularity::Huge;
    let index = region.page_index(fault.address);
    if huge && index.is_some_and(|index| region.entries.peek(index) == State::Zero) {
        return;
    }
    region.ahead.ask();
}

/// Reads ahead the ranges the region's run calls for (at most `ahead::DEPTH` past its
/// last fault's), each into `scratch` (2 MiB), until one cannot be read ahead.
pub(crate) fn read_ahead(region: &Region, scratch: &mut [u8]) {
    let Some(unit) = unit(region) else {
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
/// skipped (`try_lock`). A stretch that fails (a store error) ends the range: the rest
/// is left to its faults, which report the error, rather than asking a failing store
/// again for each page of the stretch.
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
        match fill_around(region, &mut guard, HUGE_PAGE_SIZE, false, scratch) {
            Some(Ok(())) => installed = true,
            _ => return installed,
        }
    }
    installed
}
