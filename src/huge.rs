//! The 2 MiB path (the dax_iomap_pmd_fault analog): with [`Granularity::Huge`] a missing
//! fault resolves the whole aligned 2 MiB range holding its page at once, when the
//! kernel's conditions hold (DAX-SEMANTICS.md §1.7-1.12, §8 invariants 8-9).
//!
//! Conditions, checked in this order; each failure falls back to the 4 KiB path and is
//! counted in `huge_fallbacks`:
//! 1. the range lies inside the mapping ([`range_of`]);
//! 2. all 512 entries are Empty and free: they are locked with `try_lock` in ascending
//!    order and all released at once if any is held or not Empty ([`lock_range`]), never
//!    waiting while holding entry locks (the faulting page's own lock is already held);
//! 3. the store reports one extent over the whole range, all hole or all data
//!    ([`uniform`]);
//! 4. the store answers: a failed extent query, allocation or read falls back, so that
//!    the 4 KiB path reports the error of the faulting page itself, not of a neighbour.
//!
//! A 4 KiB fault never upgrades to 2 MiB: once any entry of a range is present, the range
//! is served page by page until all of it is Empty again.
//!
//! How a range is installed ([`plan`]), always through `fault::insert` with a run of 512:
//! - holes: 512 zero-page entries in one ZEROPAGE, one write-protect and one PAGEMAP_SCAN;
//! - data: one transparent huge page filled with the range's bytes and moved in
//!   ([`move_in`]: UFFDIO_MOVE into the range after MADV_DONTNEED freed its page table,
//!   which maps it as one huge page), write-protected; or, where no huge page can be had
//!   (THP off, no free slot, UFFDIO_MOVE unavailable, the move failed), one 2 MiB
//!   UFFDIO_COPY with the write-protect mode: still one fault, as 512 small pages.
//!
//! A write fault installs the range as a read would, then upgrades its own page
//! (`fault::upgrade`): dirty tracking stays exact at 4 KiB. Lifting the protection of one
//! page of a huge mapping splits it in the kernel; the other 511 stay protected and Clean.
//! With `Options::huge_dirty` a write instead installs the whole range writable and Dirty
//! (one writable huge mapping), and a write-protect fault on a range that is all Clean or
//! all Zero upgrades the whole range ([`upgrade`]), like the kernel's PMD entries.
//!
//! The move window: UFFDIO_MOVE maps the page writable (it keeps no uffd-wp bit), so
//! between the move and the write-protect another thread's store can land in a page
//! without any fault, the way a store lands in a zero page before its protection. The
//! move is done under the zero-page window (flush waits it out), then the range is
//! write-protected and compared with the bytes moved in: a page that differs was written
//! and becomes Dirty. If the write-protect fails, every page counts as Dirty.
//!
//! Never touches the store's bytes beyond the range, and never waits for an entry lock.

use std::ops::Range;

use arrayvec::ArrayVec;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::entries::{EntryGuard, State};
use crate::error::Error;
use crate::fault::{self, Access, Decision, Source};
use crate::mapping::{Granularity, Region, Shared};
use crate::stats::Counters;
use crate::store::{Extent, ExtentKind};
use crate::uffd::UffdError;
use crate::{HUGE_PAGE_SIZE, PAGE_SIZE};

/// Pages in a 2 MiB range.
pub(crate) const HUGE_PAGES: usize = HUGE_PAGE_SIZE / PAGE_SIZE;

/// Staging buffers for huge pages a mapping keeps (address space only until used).
const SLOTS: usize = 16;

/// Why a fault was not served as a whole 2 MiB range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// The aligned range crosses the end of the mapping.
    PastEnd,
    /// An entry of the range is present or locked by another fault.
    Occupied,
    /// The store reports more than one extent over the range.
    Mixed,
    /// The store failed to say, allocate or read.
    Store,
    /// Installing the range failed before it reached the faulting page.
    Install,
    /// The caller has no 2 MiB buffer to read the range into.
    NoBuffer,
}

/// The aligned 2 MiB range of pages holding `index`, in a mapping of `pages` pages.
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
    /// Allocate the whole range in the store first.
    pub(crate) allocate: bool,
    /// Install the whole range writable and Dirty (else write-protected).
    pub(crate) mkwrite: bool,
    /// Then make the faulting page writable and Dirty.
    pub(crate) upgrade: bool,
}

/// The plan for a fault (`write` or read) on a range of `kind`.
pub(crate) fn plan(write: bool, kind: ExtentKind, huge_dirty: bool) -> Plan {
    let whole = write && huge_dirty;
    Plan {
        allocate: whole && kind == ExtentKind::Hole,
        mkwrite: whole,
        upgrade: write && !whole,
    }
}

/// Serves a missing fault on the Empty entry `guard` as a whole 2 MiB range; `None` when
/// it falls back to 4 KiB (counted). An error is the faulting page's (see `fault::fail`).
pub(crate) fn fill<'a>(
    shared: &'a Shared,
    guard: &mut EntryGuard<'a>,
    write: bool,
    scratch: &mut [u8],
) -> Option<Result<(), Error>> {
    count(shared, fill_range(shared, guard, write, scratch))
}

/// With `Options::huge_dirty`, serves a write to a present page by upgrading its whole
/// range when all of it is Clean (lift the protection of 2 MiB) or all Zero (drop the
/// zero pages, allocate, install 2 MiB writable); `None` when the 4 KiB upgrade serves it.
pub(crate) fn upgrade<'a>(
    shared: &'a Shared,
    guard: &mut EntryGuard<'a>,
) -> Option<Result<(), Error>> {
    let state = guard.state();
    if shared.granularity != Granularity::Huge
        || !shared.huge_dirty
        || !matches!(state, State::Clean | State::Zero)
    {
        return None;
    }
    count(shared, upgrade_range(shared, guard, state))
}

/// Counts a fallback (2 MiB faults are counted by [`insert_range`]).
fn count(
    shared: &Shared,
    outcome: Result<Result<(), Error>, Fallback>,
) -> Option<Result<(), Error>> {
    match outcome {
        Ok(served) => Some(served),
        Err(_) => {
            Counters::add(&shared.counters.huge_fallbacks, 1);
            None
        }
    }
}

/// `fault::insert` over a whole range, counted as a 2 MiB fault before the install wakes
/// anyone; `Install` if it failed before reaching the faulting page `held`.
fn insert_range(
    shared: &Shared,
    run: &mut [&mut EntryGuard<'_>],
    held: usize,
    source: Source<'_>,
    mkwrite: bool,
) -> Result<Result<(), Error>, Fallback> {
    Counters::add(&shared.counters.huge_faults, 1);
    let installed = fault::insert(shared, run, source, mkwrite);
    let held = &run[held - run[0].index()];
    if installed.is_err() && held.state() == State::Empty {
        Counters::sub(&shared.counters.huge_faults, 1);
        return Err(Fallback::Install);
    }
    Ok(installed)
}

fn fill_range<'a>(
    shared: &'a Shared,
    guard: &mut EntryGuard<'a>,
    write: bool,
    scratch: &mut [u8],
) -> Result<Result<(), Error>, Fallback> {
    let range = range_of(guard.index(), shared.region.len / PAGE_SIZE)?;
    let (mut below, mut above) = lock_range(shared, range.clone(), guard.index(), State::Empty)?;
    let offset = shared.page_offset(range.start);
    let extent = shared.store.extent(offset).map_err(|_| Fallback::Store)?;
    let plan = plan(write, uniform(extent)?, shared.huge_dirty);
    if plan.allocate {
        let allocated = shared.store.allocate(offset, HUGE_PAGE_SIZE as u64);
        allocated.map_err(|_| Fallback::Store)?;
    }
    let source = match extent.kind {
        ExtentKind::Hole => Source::Hole,
        ExtentKind::Data => {
            if scratch.len() < HUGE_PAGE_SIZE {
                return Err(Fallback::NoBuffer);
            }
            let read = shared.store.read_at(offset, &mut scratch[..HUGE_PAGE_SIZE]);
            read.map_err(|_| Fallback::Store)?;
            Counters::add(&shared.counters.bytes_read, HUGE_PAGE_SIZE as u64);
            Source::Data(&scratch[..HUGE_PAGE_SIZE])
        }
    };
    let index = guard.index();
    {
        let mut run = join(&mut below, guard, &mut above);
        // Once the faulting page is in, a neighbour the install did not reach is left
        // Empty, for its own fault: not an error of this one.
        let _ = insert_range(shared, &mut run, index, source, plan.mkwrite)?;
    }
    drop((below, above));
    // A write on the exact path: the page is Zero, Clean, or Dirty if a store got into
    // the install window; upgrade it as a write-protect fault would, in the same trip.
    match (plan.upgrade, fault::decide(Access::Write, guard.state())) {
        (true, Decision::Upgrade { allocate }) => Ok(fault::upgrade(shared, guard, allocate)),
        _ => Ok(Ok(())),
    }
}

fn upgrade_range<'a>(
    shared: &'a Shared,
    guard: &mut EntryGuard<'a>,
    state: State,
) -> Result<Result<(), Error>, Fallback> {
    let index = guard.index();
    let range = range_of(index, shared.region.len / PAGE_SIZE)?;
    let (mut below, mut above) = lock_range(shared, range.clone(), index, state)?;
    let mut run = join(&mut below, guard, &mut above);
    if state == State::Zero {
        // Zero pages hold nothing: allocate the range, drop them (a store to one faults
        // and waits for our locks), and install the range as a write to Empty would.
        let offset = shared.page_offset(range.start);
        let allocated = shared.store.allocate(offset, HUGE_PAGE_SIZE as u64);
        allocated.map_err(|_| Fallback::Store)?;
        shared
            .region
            .discard(shared.page_address(range.start), HUGE_PAGE_SIZE);
        run.iter_mut().for_each(|entry| entry.set(State::Empty));
    }
    insert_range(shared, &mut run, index, Source::Hole, true)
}

/// Locks every entry of `range` except `held` (whose lock the caller has), all of which
/// must be in `state`. Never waits: if any is locked or in another state, releases what it
/// took and returns `Occupied`. Returns the guards below and above `held`, ascending.
pub(crate) fn lock_range<'a>(
    shared: &'a Shared,
    range: Range<usize>,
    held: usize,
    state: State,
) -> Result<(Guards<'a>, Guards<'a>), Fallback> {
    let entries = &shared.entries;
    // A cheap look first: most ranges that fail, fail here without a locked instruction.
    if range.clone().any(|index| entries.peek(index) != state) {
        return Err(Fallback::Occupied);
    }
    let mut below = Guards::new();
    let mut above = Guards::new();
    for index in range.filter(|&index| index != held) {
        let guard = entries.try_lock(index).ok_or(Fallback::Occupied)?;
        if guard.state() != state {
            return Err(Fallback::Occupied);
        }
        let side = if index < held { &mut below } else { &mut above };
        side.try_push(guard).map_err(|_| Fallback::Occupied)?;
    }
    Ok((below, above))
}

/// The consecutive run `below`, `held`, `above` as one slice for `fault::insert`.
pub(crate) fn join<'g, 'a>(
    below: &'g mut [EntryGuard<'a>],
    held: &'g mut EntryGuard<'a>,
    above: &'g mut [EntryGuard<'a>],
) -> Run<'g, 'a> {
    // At most a 2 MiB range: `below` and `above` together hold at most 511 guards.
    let mut run = Run::new();
    run.extend(below.iter_mut());
    run.push(held);
    run.extend(above.iter_mut());
    run
}

/// Guards of a 2 MiB range at most, on the stack: the wide paths allocate nothing, so
/// they may run inside the faulting thread's SIGBUS handler.
pub(crate) type Guards<'a> = ArrayVec<EntryGuard<'a>, { HUGE_PAGE_SIZE / PAGE_SIZE }>;

/// A run of guards for `fault::insert`, on the stack.
pub(crate) type Run<'g, 'a> = ArrayVec<&'g mut EntryGuard<'a>, { HUGE_PAGE_SIZE / PAGE_SIZE }>;

/// Moves a transparent huge page holding `source` into the 2 MiB range of `run`, whose
/// entries are locked and already set to Clean, or to Dirty with `writable`. Returns the
/// bytes moved in, from the range's start: 0 when no huge page could be had or the move
/// failed (nothing installed: the caller copies instead). Does not wake.
///
/// Write-protected installs settle their entries before returning (see the module doc on
/// the move window): a page written in the window is Dirty.
pub(crate) fn move_in(
    shared: &Shared,
    run: &mut [&mut EntryGuard<'_>],
    source: Source<'_>,
    writable: bool,
) -> usize {
    let Some(slot) = shared.huge_slots.as_ref().and_then(HugeSlots::claim) else {
        return 0;
    };
    if !slot.fill(source, shared) {
        return 0;
    }
    let dst = shared.page_address(run[0].index());
    // The range is all Empty: dropping it loses nothing and frees its page table (Linux
    // 6.14+ reclaims empty page tables on MADV_DONTNEED); into a range without one the
    // move maps one huge page, into a range with one it would split the huge page.
    shared.region.discard(dst, HUGE_PAGE_SIZE);
    let window = (!writable).then(|| shared.open_zero_window());
    // SAFETY: the slot is claimed by this thread alone; its bytes are referenced nowhere
    // (`fill` wrote them through a pointer that is gone), so unmapping them is fine.
    let moved = unsafe {
        shared
            .uffd
            .move_pages(dst, slot.address(), HUGE_PAGE_SIZE, false)
    };
    let moved = match moved {
        Ok(()) => HUGE_PAGE_SIZE,
        Err(UffdError::Again { done, .. }) => done as usize / PAGE_SIZE * PAGE_SIZE,
        Err(_) => 0,
    };
    if let (false, Source::Data(bytes)) = (writable, source) {
        settle_moved(shared, &mut run[..moved / PAGE_SIZE], bytes);
    }
    drop(window);
    moved
}

/// Closes the move window over the moved-in pages of `run`: write-protect them, then mark
/// Dirty every page that no longer equals the `bytes` moved in.
fn settle_moved(shared: &Shared, run: &mut [&mut EntryGuard<'_>], bytes: &[u8]) {
    let Some(first) = run.first() else {
        return;
    };
    if let Some(delay) = shared.zero_window_delay {
        std::thread::sleep(delay);
    }
    let start = shared.page_address(first.index());
    let len = run.len() * PAGE_SIZE;
    if shared.uffd.writeprotect(start, len, true, false).is_err() {
        run.iter_mut().for_each(|guard| guard.set(State::Dirty));
        return;
    }
    // SAFETY: the pages were just moved in (present) and are now write-protected, their
    // entries locked by us: a store to them faults and waits for those locks, so nothing
    // changes these bytes while the slice lives; the range lies inside the mapping.
    let mapped = unsafe { std::slice::from_raw_parts(start as *const u8, len) };
    let pages = mapped
        .chunks_exact(PAGE_SIZE)
        .zip(bytes.chunks_exact(PAGE_SIZE));
    for (guard, (now, moved)) in run.iter_mut().zip(pages) {
        if now != moved {
            guard.set(State::Dirty);
        }
    }
}

/// 2 MiB-aligned buffers where huge pages are filled before they are moved in. A free
/// slot maps nothing (invariant 1); each is claimed by one thread at a time.
pub(crate) struct HugeSlots {
    region: Region,
    /// Bit `i`: slot `i` is claimed.
    busy: AtomicU32,
}

/// A claimed slot; dropping it empties and frees it.
struct Slot<'a> {
    slots: &'a HugeSlots,
    number: usize,
}

impl HugeSlots {
    /// Whether transparent huge pages can be had here (not disabled system-wide).
    pub(crate) fn usable() -> bool {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|modes| !modes.contains("[never]"))
    }

    /// Reserves the slots' address space, asking for huge pages there (MADV_HUGEPAGE).
    pub(crate) fn reserve() -> Result<HugeSlots, Error> {
        Ok(HugeSlots {
            region: Region::reserve(SLOTS * HUGE_PAGE_SIZE, true)?,
            busy: AtomicU32::new(0),
        })
    }

    /// Claims a free slot, if any (never waits).
    fn claim(&self) -> Option<Slot<'_>> {
        let all = (1u32 << SLOTS) - 1;
        let mut busy = self.busy.load(Ordering::Relaxed);
        loop {
            let free = !busy & all;
            if free == 0 {
                return None;
            }
            let bit = 1 << free.trailing_zeros();
            match self.busy.compare_exchange_weak(
                busy,
                busy | bit,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Slot {
                        slots: self,
                        number: free.trailing_zeros() as usize,
                    });
                }
                Err(now) => busy = now,
            }
        }
    }
}

impl Slot<'_> {
    fn address(&self) -> usize {
        self.slots.region.base + self.number * HUGE_PAGE_SIZE
    }

    /// Fills the slot with `source` (a hole: the kernel's zeroed page as it comes) and
    /// returns whether it is one huge page; if not, it is emptied again.
    fn fill(&self, source: Source<'_>, shared: &Shared) -> bool {
        let address = self.address();
        match source {
            // SAFETY: the slot is 2 MiB of our own anonymous memory, claimed by this thread
            // alone and not registered with userfaultfd (so writing it never waits on us);
            // `bytes` is a whole range, 2 MiB long, and cannot overlap the slot.
            Source::Data(bytes) => unsafe {
                debug_assert_eq!(bytes.len(), HUGE_PAGE_SIZE);
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), address as *mut u8, HUGE_PAGE_SIZE);
            },
            // SAFETY: as above; one store faults the whole (zeroed) huge page in.
            Source::Hole => unsafe { std::ptr::write_volatile(address as *mut u8, 0) },
        }
        let huge = shared.pagemap.is_huge(address, HUGE_PAGE_SIZE);
        huge.unwrap_or(false)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        // Invariant 1: whatever a failed move left behind goes (after a move, nothing is left).
        let offset = self.number * HUGE_PAGE_SIZE;
        self.slots
            .region
            .discard(self.slots.region.base + offset, HUGE_PAGE_SIZE);
        self.slots
            .busy
            .fetch_and(!(1 << self.number), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        use ExtentKind::*;
        let rows = [
            // (write, kind, huge_dirty) -> (allocate, mkwrite, upgrade)
            ((false, Hole, false), (false, false, false)),
            ((false, Data, false), (false, false, false)),
            ((true, Hole, false), (false, false, true)),
            ((true, Data, false), (false, false, true)),
            ((false, Hole, true), (false, false, false)),
            ((false, Data, true), (false, false, false)),
            ((true, Hole, true), (true, true, false)),
            ((true, Data, true), (false, true, false)),
        ];
        for ((write, kind, huge_dirty), (allocate, mkwrite, upgrade)) in rows {
            let expected = Plan {
                allocate,
                mkwrite,
                upgrade,
            };
            assert_eq!(
                plan(write, kind, huge_dirty),
                expected,
                "{write} {kind:?} {huge_dirty}"
            );
        }
    }
}
