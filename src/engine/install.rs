//! The one insert routine (the kernel's `insert_pfn(..., mkwrite)` analog) and the windows
//! it must close: every row of the fault table that installs a page, or makes a present
//! one writable, goes through [`insert`], for one page, a fault-around window or a 2 MiB
//! range alike.
//!
//! Three ways a page goes in, and the window each leaves:
//! - a copy (UFFDIO_COPY): with MODE_WP the page is installed write-protected in the same
//!   step, so no write can land unseen; without, it is installed writable and Dirty;
//! - the zero page (UFFDIO_ZEROPAGE), which has no write-protect mode: between mapping it
//!   and protecting it, another thread's store can copy it into a private page without
//!   any fault (the zero-page window: protected by [`settle`], waited out by flush through
//!   `window`, and the store found later by the page table: [`window_stores`]);
//! - a moved-in huge page (UFFDIO_MOVE, 2 MiB of data), which arrives writable: the same
//!   window, closed at once by comparing the bytes.

use std::sync::atomic::Ordering;

use crate::engine::config::DirtyTracking;
use crate::engine::entries::{EntryGuard, State};
use crate::engine::region::{PageKind, Region};
use crate::engine::run::PageSet;
use crate::engine::stats::Counters;
use crate::error::Error;
use crate::sys::uffd::UffdError;
use crate::{HUGE_PAGE_SIZE, HUGE_PAGES, PAGE_SIZE};

/// Where an inserted page's bytes come from.
#[derive(Clone, Copy)]
pub(crate) enum Source<'a> {
    /// A hole: the shared zero page when read-only, zeros when writable.
    Hole,
    /// Bytes read from the store, one page per entry of the run.
    Data(&'a [u8]),
}

/// The one insert routine, for a run of consecutive locked entries in one state (one page
/// on the 4 KiB path, a window for fault-around, 512 for the 2 MiB path). On Empty
/// entries: install `source`, write-protected unless `mkwrite`, which installs it writable
/// and dirty in the same step. On present entries: with `mkwrite`, lift the write
/// protection in place and mark them Dirty; without, nothing. Counts one fault of its
/// kind, however long the run, before the ioctl that wakes the faulting thread (taken
/// back if nothing was installed).
///
/// The entries move to their new state *before* the ioctl that makes the pages visible or
/// writable (and back if that fails): the ioctl wakes the faulting thread, whose store may
/// complete and be followed by a flush before this thread runs again. If that flush races
/// us, either it finds the page in the dirty index and waits for our entry lock, or the
/// store had not completed before the flush began.
///
/// If the install stops part-way (a batched ioctl meets a present page), the entries
/// still say what is mapped: the installed prefix keeps its new state, the rest its old.
///
/// In a region that only fills (no dirty tracking), nothing is write-protected: pages go
/// in writable (and stay Zero or Clean: nothing is ever written back).
pub(crate) fn insert(
    region: &Region,
    run: &mut [&mut EntryGuard<'_>],
    source: Source<'_>,
    mkwrite: bool,
) -> Result<(), Error> {
    let Some(first) = run.first() else {
        return Ok(());
    };
    let first = first.index();
    let before = run[0].state();
    debug_assert!(
        is_run(run, before),
        "insert needs consecutive entries in one state"
    );
    let counters = &region.counters;
    let (after, counter) = match (before, source, mkwrite) {
        (State::Empty, Source::Hole, false) => return insert_zero_page(region, run),
        (State::Empty, _, true) => (State::Dirty, Some(&counters.write_faults)),
        (State::Empty, _, false) => (State::Clean, Some(&counters.read_faults)),
        (State::Zero, _, true) => (State::Dirty, Some(&counters.zero_to_dirty)),
        (State::Clean, _, true) => (State::Dirty, Some(&counters.mkwrite_faults)),
        // Dirty but protected: a write got into a zero-page window, or a writeback
        // failed after protecting. Lifting the protection is not a new dirtying.
        (State::Dirty, _, true) => (State::Dirty, None),
        (_, _, false) => return Ok(region.wake(first, run.len())?),
    };
    run.iter_mut().for_each(|guard| guard.set(after));
    if let Some(counter) = counter {
        Counters::add(counter, 1);
    }
    let installed = match before {
        State::Empty => install(region, run, source, mkwrite),
        // Zero: the retried write makes the kernel copy the zero page into a private page
        // (the zero page itself is never made writable). Clean: our own private copy,
        // made writable in place.
        _ => region.writeprotect(first, run.len(), false, true),
    };
    if let Err(error) = installed {
        let done = match error {
            UffdError::Again { done, .. } => done as usize / PAGE_SIZE,
            _ => 0,
        };
        run[done..].iter_mut().for_each(|guard| guard.set(before));
        if let (Some(counter), 0) = (counter, done) {
            Counters::sub(counter, 1);
        }
        return Err(error.into());
    }
    Ok(())
}

/// Installs `source` over a run of Empty entries already set to Clean (or Dirty with
/// `mkwrite`), and wakes the run. A whole 2 MiB range is moved in as one huge page where
/// possible ([`move_in`], which settles the states of what it moved); the rest is copied.
/// COPY_MODE_WP installs and write-protects in one step: a copy followed by a separate
/// write-protect would let a write land in between unseen.
fn install(
    region: &Region,
    run: &mut [&mut EntryGuard<'_>],
    source: Source<'_>,
    mkwrite: bool,
) -> Result<(), UffdError> {
    let first = run[0].index();
    let pages = run.len();
    let bytes = match source {
        Source::Data(bytes) => bytes,
        Source::Hole => {
            debug_assert!(
                pages * PAGE_SIZE <= ZEROS.len(),
                "writable holes come one page or 2 MiB at a time"
            );
            &ZEROS[..pages * PAGE_SIZE]
        }
    };
    let protect = !mkwrite && region.tracks_writes();
    let moved = if pages == HUGE_PAGES {
        move_in(region, run, source, mkwrite) / PAGE_SIZE
    } else {
        0
    };
    if moved == 0 {
        return region.copy(first, bytes, protect, true);
    }
    if moved < pages {
        let rest = region.copy(first + moved, &bytes[moved * PAGE_SIZE..], protect, false);
        // A partial copy reports its bytes from its own start; report them from `first`.
        if let Err(error) = rest {
            let _ = region.wake(first, pages);
            return Err(match error {
                UffdError::Again { op, done } => UffdError::Again {
                    op,
                    done: done + (moved * PAGE_SIZE) as u64,
                },
                other => other,
            });
        }
    }
    region.wake(first, pages)
}

/// Whether `run` holds consecutive indices, all in state `state`.
fn is_run(run: &[&mut EntryGuard<'_>], state: State) -> bool {
    let first = run[0].index();
    run.iter()
        .enumerate()
        .all(|(i, guard)| guard.index() == first + i && guard.state() == state)
}

/// Maps the zero page over a run of Empty entries: one ZEROPAGE, one write-protect and
/// one WAKE, however long the run (in a region that only fills or tracks writes
/// asynchronously: one ZEROPAGE, which wakes). A whole 2 MiB range is the huge zero page
/// where the region moves it in ([`move_zero_in`], off unless enabled): one PMD instead
/// of 512 PTEs, closed by the same write-protect.
///
/// UFFDIO_ZEROPAGE has no write-protect mode, and a moved-in PMD arrives unprotected. If
/// a write from another thread races the window between the zero page and the
/// protection, either it comes after the protection (a write-protect fault, which waits
/// for our entry lock and then upgrades), or it came before and the kernel copied the
/// zero page into a private page (splitting a huge zero PMD first) that we then protected.
/// Such a page holds a store but its entry says Zero, and no fault will tell: it is found
/// later, by the page table (PAGEMAP_SCAN: it is no longer the zero pfn), before anything
/// relies on a Zero entry holding zeros (see [`settle`]). The write completes without any
/// fault, so a flush racing the window could miss it: flush waits for open windows.
fn insert_zero_page(region: &Region, run: &mut [&mut EntryGuard<'_>]) -> Result<(), Error> {
    let first = run[0].index();
    let pages = run.len();
    let zero_faults = &region.counters.zero_faults;
    let window = region.open_zero_window();
    // Synchronous tracking keeps the faulting thread asleep until the page is protected,
    // so that its own next store takes a write-protect fault and allocates then (DAX: a
    // write on a zero page allocates at the access; only another thread's racing store
    // can slip into the window). Otherwise the ZEROPAGE wakes it (no separate WAKE): a
    // store into the zero page is found by flush's written-page scan (asynchronous
    // tracking) or never written back (a region that only fills). Either way, as in
    // `insert`, the entries say Zero and the fault is counted before the ioctl.
    let sync = region.config.tracking == Some(DirtyTracking::Sync);
    run.iter_mut().for_each(|guard| guard.set(State::Zero));
    Counters::add(zero_faults, 1);
    let moved = move_zero_in(region, pages, first);
    let strays = strays_of(region, first, moved, pages);
    // A ZEROPAGE wakes only waiters in its own range: after a (partial) move of the huge
    // zero page the faulting page may lie in the moved part, or in a stray stepped over,
    // so the run is woken at the end.
    let zeropage_wakes = !sync && moved == 0 && strays.is_empty();
    let (zeroed, stopped) = zero_gaps(region, first, moved, pages, &strays, zeropage_wakes);
    // The page table is the truth: mapped are the prefix the move and the ZEROPAGEs
    // reached, and every stray (even past a ZEROPAGE that stopped); the rest is Empty.
    let mut mapped = PageSet::default();
    (0..pages)
        .filter(|&page| page < zeroed || strays.contains(page))
        .for_each(|page| mapped.insert(page));
    for (page, guard) in run.iter_mut().enumerate() {
        if !mapped.contains(page) {
            guard.set(State::Empty);
        }
    }
    // Nothing mapped (the mm is changing: EAGAIN) is no fault served; the caller retries.
    if mapped.is_empty() {
        Counters::sub(zero_faults, 1);
    }
    // Asynchronous tracking needs no protection: a store into the zero page makes the
    // kernel copy it into a private page, written and not the zero pfn, which flush's
    // written-page scan finds (`Region::scan_written`). Only synchronous tracking must
    // fault on the first write.
    if sync {
        let mut page = 0;
        while page < pages {
            let end = (page..pages)
                .find(|&end| !mapped.contains(end))
                .unwrap_or(pages);
            if end > page {
                settle(region, &mut run[page..end], Expect::ZeroPage);
            }
            page = end + 1;
        }
    }
    drop(window);
    // A stopped ZEROPAGE woke nobody either (the caller retries the rest).
    if !zeropage_wakes || stopped.is_some() {
        region.wake(first, pages)?;
    }
    match stopped {
        Some(error) => Err(error.into()),
        None => Ok(()),
    }
}

/// The pages of a 2 MiB hole range present past the `moved` prefix after a move of the
/// huge zero page fell short (relative to the run's start at page `first`): empty
/// unless the 2 MiB path may have tried a move, and always empty when it did not.
///
/// The race (the lost store at the first page of a hole range, issue 11): the range is
/// dropped (MADV_DONTNEED) and then the huge zero PMD moved in; a racing fault of another
/// thread in between allocates (inferred, not traced in the kernel) the range's page table again (the mapping is
/// MADV_NOHUGEPAGE: its missing faults go to the PTE level, which allocates the table
/// before it reaches userfaultfd). The kernel then splits the source PMD and moves zero
/// PTEs one by one, and on 6.18 the move can fail with EEXIST, reporting nothing moved,
/// having installed the range's first page (seen, as the data move's strays in
/// [`take_over_strays`]). A ZEROPAGE from the start then met that page and stopped with
/// EEXIST, and the entries went back to Empty while the page stayed mapped, unprotected:
/// a store into it made a private copy without any fault, the entry said Empty, and no
/// flush wrote it. So the page table is asked, and a stray is kept as the other zero
/// pages are: protected, then Zero or (a store got in first) Dirty by its pfn.
///
/// If the scan fails, nothing is known to be present: a ZEROPAGE stops at a stray, which
/// is left unaccounted as before (PAGEMAP_SCAN of our own range does not fail in practice).
fn strays_of(region: &Region, first: usize, moved: usize, pages: usize) -> PageSet {
    let mut strays = PageSet::default();
    if moved >= pages || pages != HUGE_PAGES || !region.config.huge_move {
        return strays;
    }
    let _ = region.for_each_run(first + moved, pages - moved, PageKind::Present, |run| {
        run.for_each(|page| strays.insert(moved + page))
    });
    strays
}

/// Maps the zero page over pages `from..pages` of a run starting at page `first`, except
/// the `strays` (present already: stepped over and kept), one ZEROPAGE per gap between
/// them. Returns the pages mapped from the run's start (strays included) and the error
/// that stopped it: a ZEROPAGE stopped at a present page (EAGAIN with the bytes done,
/// reported from `first`), or failed.
fn zero_gaps(
    region: &Region,
    first: usize,
    from: usize,
    pages: usize,
    strays: &PageSet,
    wake: bool,
) -> (usize, Option<UffdError>) {
    let mut at = from;
    while at < pages {
        if strays.contains(at) {
            at += 1;
            continue;
        }
        let end = (at..pages)
            .find(|&page| strays.contains(page))
            .unwrap_or(pages);
        match region.zeropage(first + at, end - at, wake) {
            Ok(()) => at = end,
            // Stopped at a present page: the prefix before it is mapped.
            Err(UffdError::Again { op, done }) => {
                let done = (at * PAGE_SIZE) as u64 + done;
                return (
                    done as usize / PAGE_SIZE,
                    Some(UffdError::Again { op, done }),
                );
            }
            Err(error) => return (at, Some(error)),
        }
    }
    (pages, None)
}

/// Moves the huge zero page over a run of `pages` Empty entries from `first` when it is a
/// whole 2 MiB range of a region that moves huge pages in and may use the huge zero page
/// (`Options::huge_zero_page`), counting the outcome; returns the pages mapped from the
/// start (0: map zero pages instead).
fn move_zero_in(region: &Region, pages: usize, first: usize) -> usize {
    let config = &region.config;
    if pages != HUGE_PAGES || !config.huge_move || !config.huge_zero {
        return 0;
    }
    let moved = region.move_zero_in(first);
    let counters = &region.counters;
    let counter = if moved == pages {
        &counters.huge_zero_faults
    } else {
        &counters.huge_zero_fallbacks
    };
    Counters::add(counter, 1);
    moved
}

/// What a page installed in a window holds if no write got in.
#[derive(Clone, Copy)]
enum Expect<'a> {
    /// The shared zero page (a zero-page window): Zero if still mapped.
    ZeroPage,
    /// These bytes, one page per entry (a moved-in huge page): Clean if unchanged.
    Bytes(&'a [u8]),
}

/// Closes a window over a run of freshly installed pages: write-protects them, then sets
/// each entry by what is mapped now: Clean where a moved-in page still holds its bytes,
/// Dirty where a write got in first. If the kernel cannot tell us (an ioctl failed), the
/// pages count as Dirty: never clean by mistake.
///
/// Zero pages are not compared now (a PAGEMAP_SCAN a fault, for a race between threads
/// that almost never happens): they are Zero, and the region is marked unverified. Every
/// path that relies on a Zero entry holding zeros asks the page table first, which tells
/// a store that got in (a private page): flush over the whole region, and eviction,
/// abandonment and a 2 MiB upgrade over the pages they drop ([`window_stores`]). A write
/// fault on such a page lifts its protection and keeps its bytes, as on the zero page.
fn settle(region: &Region, run: &mut [&mut EntryGuard<'_>], expect: Expect<'_>) {
    let Some(first) = run.first().map(|guard| guard.index()) else {
        return;
    };
    if let Some(delay) = region.config.zero_window_delay {
        std::thread::sleep(delay);
    }
    // Bit `i`: page `first + i` still holds what was installed (a run is at most 2 MiB).
    debug_assert!(run.len() <= HUGE_PAGES);
    let mut unchanged = PageSet::default();
    let mut mark = |page: usize| unchanged.insert(page);
    let clean = match expect {
        Expect::ZeroPage => State::Zero,
        Expect::Bytes(_) => State::Clean,
    };
    if region.writeprotect(first, run.len(), true, false).is_ok() {
        match expect {
            Expect::ZeroPage => {
                // After the protection: a store that got in is in the page table before
                // a flush can clear the mark (which it does only after reading it).
                region.unverified_zero.store(true, Ordering::SeqCst);
                (0..run.len()).for_each(&mut mark);
            }
            Expect::Bytes(bytes) => {
                // SAFETY: the pages were just installed (present) and are now
                // write-protected, their entries locked by us.
                let mapped = unsafe { region.bytes(first, run.len()) };
                if let Ok(mapped) = mapped {
                    let pages = mapped
                        .chunks_exact(PAGE_SIZE)
                        .zip(bytes.chunks_exact(PAGE_SIZE));
                    pages
                        .enumerate()
                        .filter(|(_, (now, was))| now == was)
                        .for_each(|(page, _)| mark(page));
                }
            }
        }
    }
    for (page, guard) in run.iter_mut().enumerate() {
        let kept = unchanged.contains(page);
        guard.set(if kept { clean } else { State::Dirty });
    }
}

/// The pages among `zero` (relative to page `first`, a run of at most 2 MiB whose entries
/// the caller holds locked and Zero) that hold a store which got in before their zero
/// page was protected (see [`settle`]): private pages, no longer the zero pfn. One
/// PAGEMAP_SCAN, and only while the region has unverified zero pages. If the scan fails,
/// every page of `zero` counts: Dirty (written back as it is) is never wrong.
pub(crate) fn window_stores(
    region: &Region,
    first: usize,
    pages: usize,
    zero: &PageSet,
) -> PageSet {
    let mut stores = PageSet::default();
    if zero.is_empty() || !region.unverified_zero.load(Ordering::SeqCst) {
        return stores;
    }
    debug_assert!(pages <= HUGE_PAGES);
    let scanned = region.for_each_run(first, pages, PageKind::Private, |private| {
        private
            .filter(|&page| zero.contains(page))
            .for_each(|page| stores.insert(page))
    });
    if scanned.is_err() {
        return *zero;
    }
    stores
}

/// Whether the Zero page `index` (locked by the caller) holds a store that got into its
/// window: [`window_stores`] for one page.
pub(crate) fn holds_window_store(region: &Region, index: usize) -> bool {
    let mut one = PageSet::default();
    one.insert(0);
    !window_stores(region, index, 1, &one).is_empty()
}

/// Moves a transparent huge page holding `source` into the 2 MiB range of `run`, whose
/// entries are locked and already set to Clean, or to Dirty with `writable`. Returns the
/// bytes installed, from the range's start: 0 when no huge page could be had or the move
/// failed with nothing installed (the caller copies instead). Does not wake.
///
/// UFFDIO_MOVE maps the page writable (it keeps no uffd-wp bit), so a write-protected
/// install opens a window like the zero page's: the move runs inside a zero-page window
/// (flush waits it out), and [`settle`] then protects the pages and marks Dirty every page
/// that no longer equals the bytes moved in.
fn move_in(
    region: &Region,
    run: &mut [&mut EntryGuard<'_>],
    source: Source<'_>,
    writable: bool,
) -> usize {
    debug_assert_eq!(run.len() * PAGE_SIZE, HUGE_PAGE_SIZE);
    let Some(slot) = region.huge_slots.as_ref().and_then(|slots| slots.claim()) else {
        return 0;
    };
    let bytes = match source {
        Source::Data(bytes) => bytes,
        Source::Hole => &ZEROS[..],
    };
    if !slot.fill(matches!(source, Source::Data(_)).then_some(bytes)) {
        return 0;
    }
    let window = (!writable).then(|| region.open_zero_window());
    let moved = region.move_in(run[0].index(), &slot) / PAGE_SIZE;
    if !writable {
        settle(region, &mut run[..moved], Expect::Bytes(bytes));
    }
    let moved = if moved < run.len() && take_over_strays(region, run, moved, bytes, writable) {
        run.len()
    } else {
        moved
    };
    drop(window);
    moved * PAGE_SIZE
}

/// After a move that reported fewer pages than the range, takes over what the kernel
/// installed past them without saying so, if anything, and returns whether it did. (Seen
/// on 6.18: moving into a range that still has a page table splits the huge page, which
/// remaps its zero-filled pages to the zero page, and the move can then fail with EEXIST
/// having installed some of them.) The page table is the truth: the rest of the range is
/// write-protected, so a write from now on faults and waits for our locks; a present page
/// keeps what it holds, Dirty if the install was writable or it no longer equals `bytes`
/// (a store got in before the protection), else Clean; a missing page is copied, or left
/// Empty for its own fault if that fails. Never drops a page: it may hold a store.
fn take_over_strays(
    region: &Region,
    run: &mut [&mut EntryGuard<'_>],
    from: usize,
    bytes: &[u8],
    writable: bool,
) -> bool {
    let first = run[0].index();
    let rest = run.len() - from;
    let mut present = PageSet::default();
    let scanned = region.for_each_run(first + from, rest, PageKind::Present, |pages| {
        pages.for_each(|page| present.insert(from + page))
    });
    if scanned.is_ok() && present.is_empty() {
        return false;
    }
    let protected = region.writeprotect(first + from, rest, true, false).is_ok();
    for (page, guard) in run.iter_mut().enumerate().skip(from) {
        let expected = &bytes[page * PAGE_SIZE..(page + 1) * PAGE_SIZE];
        let is_present = present.contains(page);
        // A page the scan missed (it failed part-way) shows itself as EEXIST.
        let copied = (!is_present).then(|| region.copy(first + page, expected, !writable, false));
        let state = match copied {
            Some(Ok(())) if writable => State::Dirty,
            Some(Ok(())) => State::Clean,
            Some(Err(UffdError::Exists { .. })) | None => {
                // SAFETY: the page is present and (when `protected`) write-protected, its
                // entry locked by us.
                let now = protected.then(|| unsafe { region.bytes(first + page, 1) });
                match now {
                    Some(Ok(now)) if !writable && now == expected => State::Clean,
                    _ => State::Dirty,
                }
            }
            Some(Err(_)) => State::Empty,
        };
        guard.set(state);
    }
    true
}

/// Zeros for installing writable pages over a hole (up to a 2 MiB range; never written,
/// so it costs no memory beyond the zero pages it reads as).
pub(crate) static ZEROS: [u8; HUGE_PAGE_SIZE] = [0; HUGE_PAGE_SIZE];
