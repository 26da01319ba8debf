//! Staging buffers where a 2 MiB range is filled as one transparent huge page before it is
//! moved into a region (UFFDIO_MOVE: the only way to a true 2 MiB mapping of ordinary
//! memory). Each slot is claimed by one thread at a time, lock-free (claims may happen in
//! a signal handler).
//!
//! Invariant 1: a free slot maps nothing (a claim's drop empties it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::HUGE_PAGE_SIZE;
use crate::error::Error;
use crate::sys::memory::Reservation;
use crate::sys::pagemap::Pagemap;
use crate::sys::per_process::PerProcess;
use crate::sys::uffd::{Uffd, available_features, features};

/// Slots the process keeps (address space only, until used): more than the threads that
/// fill 2 MiB ranges at once (at most 4 handler threads a pool, plus in-thread faults).
const SLOTS: usize = 16;

/// The staging slots, one set for the whole process (see [`HugeSlots::shared`]).
pub(crate) struct HugeSlots {
    memory: Reservation,
    /// Tells whether a filled slot is one huge page.
    pagemap: Arc<Pagemap>,
    /// Bit `i`: slot `i` is claimed.
    busy: AtomicU32,
}

/// A claimed slot; dropping it empties and frees it.
pub(crate) struct Slot<'a> {
    slots: &'a HugeSlots,
    number: usize,
}

impl HugeSlots {
    /// Whether huge pages can be moved in here: the kernel has UFFDIO_MOVE and
    /// transparent huge pages are not disabled system-wide.
    pub(crate) fn usable() -> bool {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|modes| !modes.contains("[never]"));
        thp && available_features().is_ok_and(|available| available & features::MOVE != 0)
    }

    /// The process's slots, reserved by the first region that moves huge pages in: one
    /// set for every region, so that a process with many mappings holds 32 MiB of address
    /// space and one pagemap descriptor for them, not per mapping. A child of `fork`
    /// reserves its own (the parent's claims were copied mid-flight, and its pagemap
    /// descriptor reads the parent's page tables).
    pub(crate) fn shared() -> Result<Arc<HugeSlots>, Error> {
        static SHARED: PerProcess<Arc<HugeSlots>> = PerProcess::new();
        SHARED.get_or_make(|| HugeSlots::reserve().map(Arc::new))
    }

    /// Reserves the slots' address space, asking for huge pages there (MADV_HUGEPAGE).
    fn reserve() -> Result<HugeSlots, Error> {
        let memory =
            Reservation::new(SLOTS * HUGE_PAGE_SIZE, true).map_err(|source| Error::Os {
                op: "mmap (huge-page slots)",
                source,
            })?;
        Ok(HugeSlots {
            memory,
            pagemap: Pagemap::shared()?,
            busy: AtomicU32::new(0),
        })
    }

    /// Claims a free slot, if any (never waits).
    pub(crate) fn claim(&self) -> Option<Slot<'_>> {
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
        self.slots.memory.base() + self.number * HUGE_PAGE_SIZE
    }

    /// Fills the slot with `bytes` (2 MiB), or with zeros for `None` (the kernel's zeroed
    /// page as it comes), and returns whether it is one huge page; if not, the caller
    /// drops the slot, which empties it.
    pub(crate) fn fill(&self, bytes: Option<&[u8]>) -> bool {
        let address = self.address();
        match bytes {
            // SAFETY: the slot is 2 MiB of our own anonymous memory, claimed by this thread
            // alone and not registered with userfaultfd (so writing it never waits on us);
            // `bytes` is a whole range, 2 MiB long, and cannot overlap the slot.
            Some(bytes) => unsafe {
                debug_assert_eq!(bytes.len(), HUGE_PAGE_SIZE);
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), address as *mut u8, HUGE_PAGE_SIZE);
            },
            // SAFETY: as above; one store faults the whole (zeroed) huge page in.
            None => unsafe { std::ptr::write_volatile(address as *mut u8, 0) },
        }
        let huge = self.slots.pagemap.is_huge(address, HUGE_PAGE_SIZE, false);
        huge.unwrap_or(false)
    }

    /// Moves the slot's pages to `dst` (a 2 MiB range of `uffd`'s), without waking.
    /// Returns the bytes moved from the start: 0 if the move failed.
    ///
    /// # Safety
    /// The caller owns `dst..dst + 2 MiB`, a range of this process registered with `uffd`,
    /// all missing (as `Uffd::move_pages` requires).
    pub(crate) unsafe fn move_to(&self, uffd: &Uffd, dst: usize) -> usize {
        // SAFETY: the slot is claimed by this thread alone; its bytes are referenced
        // nowhere (`fill` wrote them through a pointer that is gone), so unmapping them is
        // fine; the caller vouches for `dst`.
        let moved = unsafe { uffd.move_pages(dst, self.address(), HUGE_PAGE_SIZE, false) };
        match moved {
            Ok(()) => HUGE_PAGE_SIZE,
            Err(crate::sys::uffd::UffdError::Again { done, .. }) => {
                done as usize / crate::PAGE_SIZE * crate::PAGE_SIZE
            }
            Err(_) => 0,
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        // Invariant 1: whatever a failed move left behind goes (after a move, nothing is left).
        // SAFETY: the slot is ours and claimed: nothing else references its bytes.
        let _ = unsafe { self.slots.memory.discard(self.address(), HUGE_PAGE_SIZE) };
        self.slots
            .busy
            .fetch_and(!(1 << self.number), Ordering::Release);
    }
}
