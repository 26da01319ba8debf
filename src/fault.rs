//! The fault policy (the dax_iomap_pte_fault analog): given a fault and the entry, decide
//! the transition ([`decide`], pure, unit-tested) and perform it ([`resolve`]).
//!
//! | access        | entry          | store | transition                                     |
//! |---------------|----------------|-------|------------------------------------------------|
//! | read          | Empty          | hole  | zero page, write-protected -> Zero             |
//! | read          | Empty          | data  | copy, write-protected atomically -> Clean      |
//! | write         | Empty          | hole  | allocate, copy zeros writable -> Dirty         |
//! | write         | Empty          | data  | copy writable -> Dirty                         |
//! | write (WP)    | Zero           | hole  | allocate, lift protection (kernel COWs) -> Dirty |
//! | write (WP)    | Clean          | data  | lift protection in place -> Dirty              |
//!
//! Every row that installs a page goes through [`insert`] with a `mkwrite` flag, like the
//! kernel's `insert_pfn(..., mkwrite)`: on an Empty entry it installs (write-protected, or
//! writable and dirty); on an occupied entry with `mkwrite` it upgrades in place. The same
//! routine serves a run of pages: the 2 MiB path (`huge`, the pmd_fault analog) and
//! fault-around (`around`) hand it a longer run of locked entries; [`resolve`] tries them
//! first when the mapping's granularity asks for it.
//!
//! A store failure poisons the page (the access gets SIGBUS, or EFAULT for a kernel-side
//! access), is counted, and is kept for the next flush to return.
//! This module never spawns or waits for threads: it runs in whichever thread got the fault.

use crate::entries::{EntryGuard, State};
use crate::error::Error;
use crate::mapping::{Granularity, Shared};
use crate::stats::Counters;
use crate::store::ExtentKind;
use crate::uffd::pagemap::{Query, category};
use crate::uffd::{Fault, UffdError};
use crate::{HUGE_PAGE_SIZE, PAGE_SIZE, around, huge};

/// The kind of access that faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// A load from a missing page.
    Read,
    /// A store to a missing page.
    Write,
    /// A store to a present, write-protected page.
    WriteProtect,
}

impl Access {
    pub(crate) fn of(fault: &Fault) -> Access {
        match (fault.write_protect, fault.write) {
            (true, _) => Access::WriteProtect,
            (false, true) => Access::Write,
            (false, false) => Access::Read,
        }
    }
}

/// What a fault does to its entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Ask the store what is there and install it; `mkwrite` installs writable and dirty.
    Fill { mkwrite: bool },
    /// Make the present page writable and dirty; `allocate` first for a zero page.
    Upgrade { allocate: bool },
    /// Someone else resolved it (or the page was evicted since): wake the waiter, whose
    /// retry faults again if anything is still missing.
    Wake,
}

/// The pure policy: the fault table above, as a function.
pub(crate) fn decide(access: Access, state: State) -> Decision {
    match (access, state) {
        (Access::Read | Access::Write, State::Empty) => Decision::Fill {
            mkwrite: access == Access::Write,
        },
        // A missing-write fault that lost a race with a read fault lands here too: upgrade
        // now rather than wake the writer into a second (write-protect) fault.
        (Access::Write | Access::WriteProtect, State::Zero) => Decision::Upgrade { allocate: true },
        (Access::Write | Access::WriteProtect, State::Clean | State::Dirty) => {
            Decision::Upgrade { allocate: false }
        }
        (Access::Read, _) | (Access::WriteProtect, State::Empty) => Decision::Wake,
    }
}

/// Where an inserted page's bytes come from.
#[derive(Clone, Copy)]
pub(crate) enum Source<'a> {
    /// A hole: the shared zero page when read-only, zeros when writable.
    Hole,
    /// Bytes read from the store.
    Data(&'a [u8]),
}

/// Serves one fault. `scratch` is the caller's buffer for store reads, at least a page
/// (a handler thread's heap buffer, or a signal handler's stack array: nothing here
/// allocates).
pub(crate) fn resolve(shared: &Shared, fault: &Fault, scratch: &mut [u8]) {
    let Some(index) = shared.page_index(fault.address) else {
        return;
    };
    let mut guard = shared.entries.lock(index);
    let result = match decide(Access::of(fault), guard.state()) {
        Decision::Fill { mkwrite } => fill_wide(shared, &mut guard, mkwrite, scratch)
            .unwrap_or_else(|| fill(shared, &mut guard, mkwrite, scratch)),
        Decision::Upgrade { allocate } => huge::upgrade(shared, &mut guard)
            .unwrap_or_else(|| upgrade(shared, &mut guard, allocate)),
        Decision::Wake => shared
            .uffd
            .wake(shared.page_address(index), PAGE_SIZE)
            .map_err(Into::into),
    };
    if let Err(error) = result {
        fail(shared, &mut guard, error);
    }
    // Eviction locks other entries (with try_lock only): never while holding this one.
    drop(guard);
    crate::evict::after_fault(shared);
}

/// A missing fault served wider than its page (2 MiB, or a fault-around window), as the
/// mapping's granularity asks; `None` when it falls back to the 4 KiB path.
fn fill_wide<'a>(
    shared: &'a Shared,
    guard: &mut EntryGuard<'a>,
    mkwrite: bool,
    scratch: &mut [u8],
) -> Option<Result<(), Error>> {
    match shared.granularity {
        Granularity::Huge => huge::fill(shared, guard, mkwrite, scratch),
        Granularity::FaultAround(window) if !mkwrite => {
            around::fill(shared, guard, window, scratch)
        }
        Granularity::FaultAround(_) | Granularity::Page => None,
    }
}

/// Missing fault on an Empty entry: ask the store, then insert zeros or its bytes.
fn fill(
    shared: &Shared,
    guard: &mut EntryGuard<'_>,
    mkwrite: bool,
    scratch: &mut [u8],
) -> Result<(), Error> {
    let offset = shared.page_offset(guard.index());
    match shared.store.extent(offset)?.kind {
        ExtentKind::Hole => {
            if mkwrite {
                shared.store.allocate(offset, PAGE_SIZE as u64)?;
            }
            insert(shared, &mut [guard], Source::Hole, mkwrite)
        }
        ExtentKind::Data => {
            shared.store.read_at(offset, &mut scratch[..PAGE_SIZE])?;
            Counters::add(&shared.counters.bytes_read, PAGE_SIZE as u64);
            let source = Source::Data(&scratch[..PAGE_SIZE]);
            insert(shared, &mut [guard], source, mkwrite)
        }
    }
}

/// Write to a present page: allocate the block behind a zero page, then upgrade.
pub(crate) fn upgrade(
    shared: &Shared,
    guard: &mut EntryGuard<'_>,
    allocate: bool,
) -> Result<(), Error> {
    if allocate {
        let offset = shared.page_offset(guard.index());
        shared.store.allocate(offset, PAGE_SIZE as u64)?;
    }
    insert(shared, &mut [guard], Source::Hole, true)
}

/// The one insert routine, for a run of consecutive locked entries in one state (one page
/// on the 4 KiB path, a window for fault-around, 512 for the 2 MiB path). On Empty
/// entries: install `source` (one page of it per entry), write-protected unless `mkwrite`,
/// which installs it writable and dirty in the same step. On present entries: with
/// `mkwrite`, lift the write protection in place and mark them Dirty; without, nothing.
/// Counts one fault of its kind, however long the run, before the ioctl that wakes the
/// faulting thread (taken back if nothing was installed).
///
/// The entries move to their new state *before* the ioctl that makes the pages visible or
/// writable (and back if that fails): the ioctl wakes the faulting thread, whose store may
/// complete and be followed by a flush before this thread runs again. If that flush races
/// us, either it finds the page in the dirty index and waits for our entry lock, or the
/// store had not completed before the flush began.
///
/// If the install stops part-way (a batched ioctl meets a present page), the entries
/// still say what is mapped: the installed prefix keeps its new state, the rest its old.
pub(crate) fn insert(
    shared: &Shared,
    run: &mut [&mut EntryGuard<'_>],
    source: Source<'_>,
    mkwrite: bool,
) -> Result<(), Error> {
    let Some(first) = run.first() else {
        return Ok(());
    };
    let address = shared.page_address(first.index());
    let len = run.len() * PAGE_SIZE;
    let before = first.state();
    debug_assert!(
        is_run(run, before),
        "insert needs consecutive entries in one state"
    );
    let (after, counter) = match (before, source, mkwrite) {
        (State::Empty, Source::Hole, false) => return insert_zero_page(shared, run),
        (State::Empty, _, true) => (State::Dirty, Some(&shared.counters.write_faults)),
        (State::Empty, _, false) => (State::Clean, Some(&shared.counters.read_faults)),
        (State::Zero, _, true) => (State::Dirty, Some(&shared.counters.zero_to_dirty)),
        (State::Clean, _, true) => (State::Dirty, Some(&shared.counters.mkwrite_faults)),
        // Dirty but protected: a write got into a zero-page window, or a writeback
        // failed after protecting. Lifting the protection is not a new dirtying.
        (State::Dirty, _, true) => (State::Dirty, None),
        (_, _, false) => return Ok(shared.wake(address, len)?),
    };
    run.iter_mut().for_each(|guard| guard.set(after));
    if let Some(counter) = counter {
        Counters::add(counter, 1);
    }
    let installed = match before {
        State::Empty => install(shared, run, source, mkwrite),
        // Zero: the retried write makes the kernel copy the zero page into a private page
        // (the zero page itself is never made writable). Clean: our own private copy,
        // made writable in place.
        _ => shared.uffd.writeprotect(address, len, false, true),
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
/// possible (`huge::move_in`, which settles the states of what it moved); the rest is
/// copied. COPY_MODE_WP installs and write-protects in one step: a copy followed by a
/// separate write-protect would let a write land in between unseen.
fn install(
    shared: &Shared,
    run: &mut [&mut EntryGuard<'_>],
    source: Source<'_>,
    mkwrite: bool,
) -> Result<(), UffdError> {
    let address = shared.page_address(run[0].index());
    let len = run.len() * PAGE_SIZE;
    let bytes = match source {
        Source::Data(bytes) => bytes,
        Source::Hole => {
            debug_assert!(
                len <= ZEROS.len(),
                "writable holes come one page or 2 MiB at a time"
            );
            &ZEROS[..len]
        }
    };
    let moved = if len == HUGE_PAGE_SIZE {
        huge::move_in(shared, run, source, mkwrite)
    } else {
        0
    };
    if moved == 0 {
        return shared.uffd.copy(address, bytes, !mkwrite, true);
    }
    if moved < len {
        let rest = shared
            .uffd
            .copy(address + moved, &bytes[moved..], !mkwrite, false);
        // A partial copy reports its bytes from `address + moved`; report them from `address`.
        if let Err(error) = rest {
            let _ = shared.wake(address, len);
            return Err(match error {
                UffdError::Again { op, done } => UffdError::Again {
                    op,
                    done: done + moved as u64,
                },
                other => other,
            });
        }
    }
    shared.wake(address, len)
}

/// Whether `run` holds consecutive indices, all in state `state`.
fn is_run(run: &[&mut EntryGuard<'_>], state: State) -> bool {
    let first = run[0].index();
    run.iter()
        .enumerate()
        .all(|(i, guard)| guard.index() == first + i && guard.state() == state)
}

/// Maps the zero page write-protected over a run of Empty entries: one ZEROPAGE, one
/// write-protect and one PAGEMAP_SCAN, however long the run.
///
/// UFFDIO_ZEROPAGE has no write-protect mode. If a write from another thread races the
/// window between the zero page and the protection, either it comes after the protection
/// (a write-protect fault, which waits for our entry lock and then upgrades), or it came
/// before and the kernel copied the zero page into a private page that we then protected:
/// PAGEMAP_SCAN tells, and such a page is Dirty, not Zero. Such a write completes without
/// any fault, so a flush racing the window could miss it: flush waits for open windows.
fn insert_zero_page(shared: &Shared, run: &mut [&mut EntryGuard<'_>]) -> Result<(), Error> {
    let address = shared.page_address(run[0].index());
    let len = run.len() * PAGE_SIZE;
    let window = shared.open_zero_window();
    let (zeroed, stopped) = match shared.uffd.zeropage(address, len, false) {
        Ok(()) => (len, None),
        // Stopped at a present page: the prefix before it is mapped.
        Err(UffdError::Again { op, done }) => (done as usize, Some(UffdError::Again { op, done })),
        Err(error) => return Err(error.into()),
    };
    if let Some(delay) = shared.zero_window_delay {
        std::thread::sleep(delay);
    }
    settle_zero_pages(shared, &mut run[..zeroed / PAGE_SIZE]);
    drop(window);
    Counters::add(&shared.counters.zero_faults, 1);
    shared.wake(address, len)?;
    match stopped {
        Some(error) => Err(error.into()),
        None => Ok(()),
    }
}

/// Write-protects a run of freshly mapped zero pages and sets each entry by what is mapped
/// now: Zero where the zero pfn still is, Dirty where a write got in first. If the kernel
/// cannot tell us (an ioctl failed), the pages count as Dirty: never clean by mistake.
fn settle_zero_pages(shared: &Shared, run: &mut [&mut EntryGuard<'_>]) {
    let Some(first) = run.first() else {
        return;
    };
    let first = first.index();
    let start = shared.page_address(first);
    let end = start + run.len() * PAGE_SIZE;
    let query = Query {
        required: category::PFNZERO,
        ..Query::default()
    };
    // Pages before `next` have their final state.
    let mut next = 0;
    let protected = shared.uffd.writeprotect(start, end - start, true, false);
    let _ = protected.and_then(|()| {
        shared.pagemap.for_each_region(start, end, query, |region| {
            // Regions come in ascending order, inside the scanned range; clamp anyway.
            let zero_start = ((region.start as usize - start) / PAGE_SIZE).clamp(next, run.len());
            let zero_end = ((region.end as usize - start) / PAGE_SIZE).clamp(zero_start, run.len());
            run[next..zero_start]
                .iter_mut()
                .for_each(|g| g.set(State::Dirty));
            run[zero_start..zero_end]
                .iter_mut()
                .for_each(|g| g.set(State::Zero));
            next = zero_end;
        })
    });
    run[next..]
        .iter_mut()
        .for_each(|guard| guard.set(State::Dirty));
}

/// A fault failed: poison the page so the access gets SIGBUS instead of hanging, count
/// it, and keep the first error for the next flush.
fn fail(shared: &Shared, guard: &mut EntryGuard<'_>, error: Error) {
    let index = guard.index();
    let address = shared.page_address(index);
    shared.record_error(index, &error);
    if guard.state() == State::Dirty {
        // Unwritten data is never dropped: only lifting a protection failed (an ioctl
        // error, recorded above); the access retries.
        let _ = shared.wake(address, PAGE_SIZE);
        return;
    }
    // POISON needs a missing page. What may be mapped here equals the store (a zero page,
    // possibly installed before a later step failed, or a clean copy): dropping loses nothing.
    shared.region.discard(address, PAGE_SIZE);
    guard.set(State::Empty);
    Counters::add(&shared.counters.sigbus_delivered, 1);
    shared.note_poisoned();
    if let Err(e) = shared.uffd.poison(address, PAGE_SIZE) {
        // Last resort so the faulting thread is not left waiting forever: it retries and
        // faults again (the error is already recorded).
        shared.record_error(index, &Error::Uffd(e));
        let _ = shared.wake(address, PAGE_SIZE);
    }
}

/// Zeros for installing writable pages over a hole (up to a 2 MiB range; never written,
/// so it costs no memory beyond the zero pages it reads as).
static ZEROS: [u8; HUGE_PAGE_SIZE] = [0; HUGE_PAGE_SIZE];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fault_table() {
        use Access::*;
        use Decision::*;
        let rows = [
            (Read, State::Empty, Fill { mkwrite: false }),
            (Write, State::Empty, Fill { mkwrite: true }),
            (WriteProtect, State::Zero, Upgrade { allocate: true }),
            (WriteProtect, State::Clean, Upgrade { allocate: false }),
            (WriteProtect, State::Dirty, Upgrade { allocate: false }),
            (Write, State::Zero, Upgrade { allocate: true }),
            (Write, State::Clean, Upgrade { allocate: false }),
            (Read, State::Zero, Wake),
            (Read, State::Clean, Wake),
            (Read, State::Dirty, Wake),
            (WriteProtect, State::Empty, Wake),
        ];
        for (access, state, expected) in rows {
            assert_eq!(decide(access, state), expected, "{access:?} on {state:?}");
        }
    }

    #[test]
    fn access_is_decoded_from_the_fault_flags() {
        let fault = |write, write_protect| Fault {
            address: 0,
            write,
            write_protect,
        };
        assert_eq!(Access::of(&fault(false, false)), Access::Read);
        assert_eq!(Access::of(&fault(true, false)), Access::Write);
        assert_eq!(Access::of(&fault(true, true)), Access::WriteProtect);
    }
}
