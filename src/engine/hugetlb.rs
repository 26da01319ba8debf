//! Filling another process's hugetlbfs memory (a VMM's 2 MiB guest pages). The kernel
//! fills such memory only in whole, aligned 2 MiB units and has no zero page for it
//! (UFFDIO_ZEROPAGE is refused there), so a unit is one UFFDIO_COPY of 2 MiB from the
//! unit's store offset: from a zero buffer where the store has a hole, or where its bytes
//! read as zeros (a dense snapshot), else from the bytes read. The unit's first entry
//! stands for the whole unit: its lock serializes the unit's faults, its state says
//! whether the unit is mapped.

use crate::engine::entries::{EntryGuard, State};
use crate::engine::install::ZEROS;
use crate::engine::region::Region;
use crate::engine::stats::Counters;
use crate::engine::zero::is_zero;
use crate::error::Error;
use crate::store::ExtentKind;
use crate::sys::uffd::UffdError;
use crate::{HUGE_PAGE_SIZE, HUGE_PAGES};

/// Fills the unit whose first entry `guard` holds (locked), or wakes its waiters if it is
/// mapped already. `scratch` holds at least 2 MiB.
pub(crate) fn fill(
    region: &Region,
    guard: &mut EntryGuard<'_>,
    scratch: &mut [u8],
) -> Result<(), Error> {
    let first = guard.index();
    if guard.state() != State::Empty {
        return Ok(region.wake(first, HUGE_PAGES)?);
    }
    let offset = region.page_offset(first);
    let extent = region.store.extent(offset)?;
    let data = if extent.kind == ExtentKind::Hole && extent.len >= HUGE_PAGE_SIZE as u64 {
        None
    } else {
        let buf = scratch.get_mut(..HUGE_PAGE_SIZE).ok_or_else(|| Error::Os {
            op: "hugetlb fill (scratch buffer too small)",
            source: std::io::Error::from_raw_os_error(libc::ENOBUFS),
        })?;
        region.store.read_at(offset, buf)?;
        Counters::add(&region.counters.bytes_read, HUGE_PAGE_SIZE as u64);
        (!is_zero(buf)).then_some(&*buf)
    };
    let counters = &region.counters;
    let (state, counter) = match data {
        Some(_) => (State::Clean, &counters.read_faults),
        None => (State::Zero, &counters.zero_faults),
    };
    guard.set(state);
    match region.copy(first, data.unwrap_or(&ZEROS[..]), false, true) {
        Ok(()) => {}
        // Mapped by someone else meanwhile: a success, but the copy woke nobody.
        Err(UffdError::Exists { .. }) => region.wake(first, HUGE_PAGES)?,
        Err(error) => {
            guard.set(State::Empty);
            return Err(error.into());
        }
    }
    Counters::add(counter, 1);
    Counters::add(&counters.huge_faults, 1);
    Ok(())
}
