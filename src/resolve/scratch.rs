//! A serving thread's buffer for store reads: room for a 2 MiB fill (touched only by wide
//! faults, so it costs no memory else), one transparent huge page where the kernel allows,
//! so that a direct read into it (`file_direct`) is one 2 MiB request rather than 512 page
//! segments split into three, and its copy and compare walk one TLB entry. The heap
//! (unaligned: reads stay buffered) should that mapping fail.

use crate::HUGE_PAGE_SIZE;
use crate::sys::memory::Reservation;

/// One thread's 2 MiB scratch buffer.
pub(crate) struct Scratch {
    reserved: Option<Reservation>,
    heap: Vec<u8>,
}

impl Scratch {
    /// A buffer of 2 MiB: a reservation, else the heap.
    pub(crate) fn new() -> Scratch {
        let reserved = Reservation::new(HUGE_PAGE_SIZE, true).ok();
        let heap = match reserved {
            Some(_) => Vec::new(),
            None => vec![0u8; HUGE_PAGE_SIZE],
        };
        Scratch { reserved, heap }
    }

    /// The buffer's 2 MiB.
    pub(crate) fn bytes(&mut self) -> &mut [u8] {
        match self.reserved.as_mut() {
            // SAFETY: made writable by `Reservation::new`, owned by this value (one
            // thread's), never registered with userfaultfd, and only ever used as this
            // scratch buffer; the `&mut self` borrow makes this the only reference.
            Some(reserved) => unsafe { reserved.bytes_mut() },
            None => &mut self.heap,
        }
    }
}
