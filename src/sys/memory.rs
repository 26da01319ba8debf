//! Anonymous memory this process reserves for a mapping, and dropping its pages.

use std::io;

use crate::{HUGE_PAGE_SIZE, PAGE_SIZE};

/// A range of private anonymous memory (2 MiB aligned unless placed at a given address),
/// unmapped on drop.
///
/// Invariant: `base..base + len` is mapped (readable, and writable unless reserved
/// read-only) while the value lives,
/// and nothing else unmaps it.
#[derive(Debug)]
pub(crate) struct Reservation {
    base: usize,
    len: usize,
}

impl Reservation {
    /// Reserves `len` bytes (a multiple of 4096) at a 2 MiB-aligned address, so that 2 MiB
    /// faults can line up. `huge_pages` asks the kernel for transparent huge pages there
    /// (MADV_HUGEPAGE); else it is told never to use them (MADV_NOHUGEPAGE: a mapping's
    /// pages are only ever installed by udax, which moves huge pages in itself). The range
    /// is not inherited by children (MADV_DONTFORK).
    pub(crate) fn new(len: usize, huge_pages: bool) -> io::Result<Reservation> {
        // SAFETY: `Placement::Any` clobbers nothing.
        unsafe { Reservation::place(len, huge_pages, Placement::Any, true) }
    }

    /// As [`Reservation::new`], at the address `placement` asks for, readable and (when
    /// `writable`) writable. A fixed address must be page-aligned.
    ///
    /// # Safety
    /// With [`Placement::Replace`], whatever was mapped at the range is unmapped: the
    /// caller owns it and nothing references its contents.
    pub(crate) unsafe fn place(
        len: usize,
        huge_pages: bool,
        placement: Placement,
        writable: bool,
    ) -> io::Result<Reservation> {
        debug_assert!(len > 0 && len % PAGE_SIZE == 0);
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let base = match placement {
            // SAFETY: anywhere the kernel chooses.
            Placement::Any => unsafe { map_aligned(len, prot)? },
            Placement::At(address) => map_fixed(address, len, prot, libc::MAP_FIXED_NOREPLACE)?,
            // The caller vouches for the range (this function's contract).
            Placement::Replace(address) => map_fixed(address, len, prot, libc::MAP_FIXED)?,
        };
        let reservation = Reservation { base, len };
        let thp = if huge_pages {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        for advice in [libc::MADV_DONTFORK, thp] {
            // SAFETY: the whole reservation, which nothing references yet; neither advice
            // changes its contents.
            unsafe { reservation.advise(base, len, advice)? };
        }
        Ok(reservation)
    }

    /// The first byte.
    pub(crate) fn base(&self) -> usize {
        self.base
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Drops the pages at `address..address + len` (inside the reservation, page-aligned):
    /// they read as missing afterwards (zeros, or a userfaultfd fault if registered).
    ///
    /// # Safety
    /// The caller owns the range's contents: nothing may rely on them any more (for udax,
    /// the pages equal the store, or are zero pages, and their entries are locked).
    pub(crate) unsafe fn discard(&self, address: usize, len: usize) -> io::Result<()> {
        // SAFETY: passed on to the caller.
        unsafe { self.advise(address, len, libc::MADV_DONTNEED) }
    }

    /// madvise over part of the reservation.
    ///
    /// # Safety
    /// As [`Reservation::discard`] when `advice` drops pages.
    unsafe fn advise(&self, address: usize, len: usize, advice: libc::c_int) -> io::Result<()> {
        let inside = address >= self.base
            && len <= self.len
            && address - self.base <= self.len - len
            && address % PAGE_SIZE == 0;
        if !inside {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: the range lies inside the reservation (checked above); the caller
        // vouches for its contents.
        let ret = unsafe { libc::madvise(address as *mut libc::c_void, len, advice) };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Where a reservation goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Placement {
    /// A 2 MiB-aligned address of the kernel's choosing.
    #[default]
    Any,
    /// Exactly this address; fails with EEXIST if anything is mapped there
    /// (MAP_FIXED_NOREPLACE).
    At(usize),
    /// Exactly this address, replacing whatever is mapped there (MAP_FIXED).
    Replace(usize),
}

/// Maps `len` bytes at a 2 MiB-aligned address of the kernel's choosing (over-reserving
/// and trimming) and returns it.
///
/// # Safety
/// None beyond mmap's: the range is new. (Marked unsafe to keep the munmaps of the
/// padding visibly tied to the mapping just made.)
unsafe fn map_aligned(len: usize, prot: libc::c_int) -> io::Result<usize> {
    let padded = len
        .checked_add(HUGE_PAGE_SIZE)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
    // SAFETY: a new private anonymous mapping at an address of the kernel's choosing;
    // the result is checked against MAP_FAILED before use.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            padded,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let raw = raw as usize;
    let base = raw.next_multiple_of(HUGE_PAGE_SIZE);
    // Trim the padding; a failure here only leaves unused address space mapped.
    // SAFETY: both trimmed ranges belong to the mapping just made and hold no data.
    unsafe {
        if base > raw {
            libc::munmap(raw as *mut libc::c_void, base - raw);
        }
        libc::munmap(
            (base + len) as *mut libc::c_void,
            raw + padded - (base + len),
        );
    }
    Ok(base)
}

/// Maps `len` bytes at exactly `address` with `fixed` (MAP_FIXED or MAP_FIXED_NOREPLACE).
/// EINVAL for an unaligned or wrapping range; EEXIST from the kernel if NOREPLACE finds
/// something there (older kernels that ignore NOREPLACE and map elsewhere: EEXIST too).
fn map_fixed(
    address: usize,
    len: usize,
    prot: libc::c_int,
    fixed: libc::c_int,
) -> io::Result<usize> {
    if address == 0 || address % PAGE_SIZE != 0 || address.checked_add(len).is_none() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: a private anonymous mapping at `address`; with MAP_FIXED the caller of
    // `Reservation::place` vouched for the range, with NOREPLACE the kernel refuses to
    // replace anything. The result is checked before use.
    let raw = unsafe {
        libc::mmap(
            address as *mut libc::c_void,
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | fixed,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    if raw as usize != address {
        // SAFETY: the mapping just made elsewhere (a kernel without NOREPLACE).
        unsafe { libc::munmap(raw, len) };
        return Err(io::Error::from_raw_os_error(libc::EEXIST));
    }
    Ok(address)
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: the reservation is ours (invariant) and its owner is going away: nothing
        // references this memory any more.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}
