//! Serving one fault (the dax_iomap_fault analog): lock the entry, decide with the pure
//! policy (`policy::decide`), perform it (a fill, wide where the granularity asks; an
//! upgrade; or a wake), poison the page if that failed, then let eviction run.
//!
//! A store failure poisons the page (the access gets SIGBUS, or EFAULT for a kernel-side
//! access), is counted, and is kept for the next flush to return.
//! This module never spawns or waits for threads: it runs in whichever thread got the
//! fault (a handler thread, or the faulting thread itself in its SIGBUS handler).

use crate::engine::around::{self, fill_around, window_of};
use crate::engine::config::Granularity;
use crate::engine::entries::{EntryGuard, State};
use crate::engine::evict;
use crate::engine::fill::{self, Mkwrite, Width, extent_run};
use crate::engine::huge;
use crate::engine::hugetlb;
use crate::engine::install::holds_window_store;
use crate::engine::policy::{Access, Decision, decide};
use crate::engine::region::Region;
use crate::engine::stats::Counters;
use crate::error::Error;
use crate::store::ExtentKind;
use crate::sys::uffd::{Fault, UffdError};

/// What became of a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Served: the page is in, or poisoned (the access gets SIGBUS), or none of ours.
    Served,
    /// Not served, nothing changed: the mm of the faulting process is changing (an
    /// ioctl got EAGAIN: an event such as a balloon's REMOVE is queued, and every ioctl
    /// fails so until it is read). Read the events, then serve the fault again.
    Again,
}

/// Serves one fault. `scratch` is the caller's buffer for store reads, at least a page
/// (a handler thread's heap buffer, or a signal handler's stack array: nothing here
/// allocates); 2 MiB for hugetlbfs memory. Faults outside the region are ignored. With
/// `retry`, an EAGAIN (see [`Outcome::Again`]) is returned to the caller; without, it
/// fails the fault like any error.
pub(crate) fn resolve(region: &Region, fault: &Fault, scratch: &mut [u8], retry: bool) -> Outcome {
    let Some(index) = region.page_index(fault.address) else {
        return Outcome::Served;
    };
    let mut guard = region.entries.lock(region.unit_of(index));
    let result = if region.is_hugetlb() {
        hugetlb::fill(region, &mut guard, scratch)
    } else {
        let access = Access::of(fault, region.tracks_writes());
        match decide(access, guard.state(), guard.was_evicted_dirty()) {
            Decision::Fill { mkwrite } => fill_wide(region, &mut guard, Some(mkwrite), scratch)
                .unwrap_or_else(|| fill_page(region, &mut guard, Some(mkwrite), scratch)),
            Decision::Refill => fill_wide(region, &mut guard, None, scratch)
                .unwrap_or_else(|| fill_page(region, &mut guard, None, scratch)),
            Decision::Upgrade { allocate } => huge::upgrade(region, &mut guard)
                .or_else(|| around::upgrade(region, &mut guard))
                .unwrap_or_else(|| fill::upgrade(region, &mut [&mut guard], allocate)),
            Decision::Wake => region.wake(index, 1).map_err(Into::into),
        }
    };
    match result {
        Ok(()) => {}
        Err(Error::Uffd(UffdError::Again { done: 0, .. }))
            if retry && guard.state() == State::Empty =>
        {
            return Outcome::Again;
        }
        // Another process's page went in behind our back (its fill raced a balloon
        // remove): it is there, which is all the fault needs.
        Err(Error::Uffd(UffdError::Exists { .. })) if region.is_foreign() => {
            let _ = region.wake(guard.index(), 1);
        }
        Err(error) => fail(region, &mut guard, error),
    }
    // Eviction locks other entries (with try_lock only): never while holding this one.
    drop(guard);
    evict::after_fault(region);
    Outcome::Served
}

/// A missing fault served wider than its page (2 MiB, or a fault-around window), as the
/// region's granularity asks; `None` when it falls back to the 4 KiB path. `mkwrite` as
/// for [`fill_page`]: `None` is a refill, which only fault-around serves wide (eviction
/// marks no page of a 2 MiB unit: `evict::refills`).
fn fill_wide<'a>(
    region: &'a Region,
    guard: &mut EntryGuard<'a>,
    mkwrite: Option<bool>,
    scratch: &mut [u8],
) -> Option<Result<(), Error>> {
    match (region.config.granularity, mkwrite) {
        (Granularity::Huge, Some(mkwrite)) => huge::fill(region, guard, mkwrite, scratch),
        (Granularity::FaultAround(window), Some(false) | None) => {
            fill_around(region, guard, window, mkwrite.is_none(), scratch)
        }
        (Granularity::SequentialAround(window), _) => {
            // Every missing fault (a write too) is recorded, so the read that follows a
            // scan's write finds its cursor; only reads go wide, as with FaultAround.
            let index = guard.index();
            let sequential = mkwrite != Some(true)
                && region.streams.continues(index)
                && evict::has_room(region, window / crate::PAGE_SIZE);
            let served = sequential
                .then(|| fill_around(region, guard, window, mkwrite.is_none(), scratch))
                .flatten();
            let wide = served.as_ref().is_some_and(Result::is_ok);
            let pages = window_of(index, window, region.pages())
                .filter(|_| wide)
                .unwrap_or(index..index + 1);
            region.streams.record(pages);
            served
        }
        (Granularity::FaultAround(_), Some(true)) | (Granularity::Page | Granularity::Huge, _) => {
            None
        }
    }
}

/// The 4 KiB path: ask the store what the page holds, then fill it alone, writable and
/// dirty if `mkwrite`; `None` (a refill) means writable over data, a plain read over a
/// hole (a read never allocates).
fn fill_page(
    region: &Region,
    guard: &mut EntryGuard<'_>,
    mkwrite: Option<bool>,
    scratch: &mut [u8],
) -> Result<(), Error> {
    let index = guard.index();
    let (kind, _) = extent_run(
        &*region.store,
        region.page_offset(0),
        index..index + 1,
        index,
    )?;
    let mkwrite = mkwrite.unwrap_or(kind == ExtentKind::Data);
    fill::fill(
        region,
        &mut [guard],
        index,
        kind,
        Mkwrite::of(mkwrite),
        Width::Page,
        scratch,
    )
}

/// A fault failed: poison the page so the access gets SIGBUS instead of hanging, count
/// it, and keep the first error for the next flush.
fn fail(region: &Region, guard: &mut EntryGuard<'_>, error: Error) {
    let index = guard.index();
    region.record_error(index, &error);
    if guard.state() == State::Zero && holds_window_store(region, index) {
        // Another thread's store got into its zero-page window (`install::settle`).
        guard.set(State::Dirty);
    }
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
