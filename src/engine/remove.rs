//! A balloon's remove: the process owning foreign memory dropped a range of it
//! (`MADV_DONTNEED`, which its uffd reports as `UFFD_EVENT_REMOVE`). Those pages are
//! missing again, and their next faults must get zeros, never the store's old bytes: the
//! range is punched in the region's store, which for foreign memory is a private view
//! (`store::private_view`: the store below is never written), and its entries go back
//! to Empty.

use crate::PAGE_SIZE;
use crate::engine::entries::State;
use crate::engine::region::Region;
use crate::error::Error;

/// Applies the removal of `start..end` (addresses in the owner's memory) to `region`,
/// for the part of it inside the region (none is fine).
pub(crate) fn apply(region: &Region, start: usize, end: usize) -> Result<(), Error> {
    let base = region.base();
    let (from, to) = (start.max(base), end.min(base + region.len()));
    if from >= to {
        return Ok(());
    }
    let first = (from - base) / PAGE_SIZE;
    let last = (to - base).div_ceil(PAGE_SIZE);
    // The punch first: a fill that starts after it finds the hole. A fill already under
    // way finishes under its entry lock, and the reset below waits for it.
    let len = ((last - first) * PAGE_SIZE) as u64;
    region.store.punch_hole(region.page_offset(first), len)?;
    for index in first..last {
        region.entries.lock(index).set(State::Empty);
    }
    Ok(())
}
