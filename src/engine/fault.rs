//! Serving one fault (the dax_iomap_fault analog): lock the entry, decide with the pure
//! policy (`policy::decide`), perform it (a fill, wide where the granularity asks; an
//! upgrade; or a wake), poison the page if that failed, then let eviction run.
//!
//! A store failure poisons the page (the access gets SIGBUS, or EFAULT for a kernel-side
//! access), is counted, and is kept for the next flush to return.
//! This module never spawns or waits for threads: it runs in whichever thread got the
//! fault (a handler thread, or the faulting thread itself in its SIGBUS handler).

use crate::engine::around::fill_around;
use crate::engine::config::Granularity;
use crate::engine::entries::{EntryGuard, State};
use crate::engine::evict;
use crate::engine::fill::{self, Width, extent_run};
use crate::engine::huge;
use crate::engine::policy::{Access, Decision, decide};
use crate::engine::region::Region;
use crate::engine::stats::Counters;
use crate::error::Error;
use crate::sys::uffd::Fault;

/// Serves one fault. `scratch` is the caller's buffer for store reads, at least a page
/// (a handler thread's heap buffer, or a signal handler's stack array: nothing here
/// allocates). Faults outside the region are ignored.
pub(crate) fn resolve(region: &Region, fault: &Fault, scratch: &mut [u8]) {
    let Some(index) = region.page_index(fault.address) else {
        return;
    };
    let mut guard = region.entries.lock(index);
    let access = Access::of(fault, region.tracks_writes());
    let result = match decide(access, guard.state()) {
        Decision::Fill { mkwrite } => fill_wide(region, &mut guard, mkwrite, scratch)
            .unwrap_or_else(|| fill_page(region, &mut guard, mkwrite, scratch)),
        Decision::Upgrade { allocate } => huge::upgrade(region, &mut guard)
            .unwrap_or_else(|| fill::upgrade(region, &mut [&mut guard], allocate)),
        Decision::Wake => region.wake(index, 1).map_err(Into::into),
    };
    if let Err(error) = result {
        fail(region, &mut guard, error);
    }
    // Eviction locks other entries (with try_lock only): never while holding this one.
    drop(guard);
    evict::after_fault(region);
}

/// A missing fault served wider than its page (2 MiB, or a fault-around window), as the
/// region's granularity asks; `None` when it falls back to the 4 KiB path.
fn fill_wide<'a>(
    region: &'a Region,
    guard: &mut EntryGuard<'a>,
    mkwrite: bool,
    scratch: &mut [u8],
) -> Option<Result<(), Error>> {
    match region.config.granularity {
        Granularity::Huge => huge::fill(region, guard, mkwrite, scratch),
        Granularity::FaultAround(window) if !mkwrite => fill_around(region, guard, window, scratch),
        Granularity::FaultAround(_) | Granularity::Page => None,
    }
}

/// The 4 KiB path: ask the store what the page holds, then fill it alone.
fn fill_page(
    region: &Region,
    guard: &mut EntryGuard<'_>,
    mkwrite: bool,
    scratch: &mut [u8],
) -> Result<(), Error> {
    let index = guard.index();
    let (kind, _) = extent_run(
        &*region.store,
        region.page_offset(0),
        index..index + 1,
        index,
    )?;
    fill::fill(
        region,
        &mut [guard],
        index,
        kind,
        mkwrite,
        Width::Page,
        scratch,
    )
}

/// A fault failed: poison the page so the access gets SIGBUS instead of hanging, count
/// it, and keep the first error for the next flush.
fn fail(region: &Region, guard: &mut EntryGuard<'_>, error: Error) {
    let index = guard.index();
    region.record_error(index, &error);
    if guard.state() == State::Dirty {
        // Unwritten data is never dropped: only lifting a protection failed (an ioctl
        // error, recorded above); the access retries.
        let _ = region.wake(index, 1);
        return;
    }
    // POISON needs a missing page. What may be mapped here equals the store (a zero page,
    // possibly installed before a later step failed, or a clean copy): dropping loses
    // nothing. (Foreign memory cannot be dropped from here; an installed page there
    // makes POISON fail, and the access then finds its page and goes on.)
    let _ = region.discard(index, 1);
    guard.set(State::Empty);
    Counters::add(&region.counters.sigbus_delivered, 1);
    if let Err(e) = region.poison(index) {
        // Last resort so the faulting thread is not left waiting forever: it retries and
        // faults again (the error is already recorded).
        region.record_error(index, &Error::Uffd(e));
        let _ = region.wake(index, 1);
    }
}
