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

    /// The reservation's bytes, for a buffer of this process's own.
    ///
    /// # Safety
    /// The reservation was made writable ([`Reservation::new`] always is), its range is
    /// not registered with userfaultfd (an access would wait for a handler, which may be
    /// the caller), and nothing else references its bytes while they are borrowed.
    pub(crate) unsafe fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `base..base + len` is mapped while `self` lives (the invariant), and
        // writable, unregistered and unshared by the caller's word.
        unsafe { std::slice::from_raw_parts_mut(self.base as *mut u8, self.len) }
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
    let raw = map_anonymous(0, padded, prot, 0)?;
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
    // With MAP_FIXED the caller of `Reservation::place` vouched for the range; with
    // NOREPLACE the kernel refuses to replace anything.
    let raw = map_anonymous(address, len, prot, fixed)?;
    if raw != address {
        // SAFETY: the mapping just made elsewhere (a kernel without NOREPLACE).
        unsafe { libc::munmap(raw as *mut libc::c_void, len) };
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

/// Atomic integers whose all-zero bytes are a valid value: the element types of a
/// [`ZeroedArray`].
///
/// # Safety
/// All-zero bytes must be a valid value of the type, and it must be shareable (Sync).
pub(crate) unsafe trait ZeroValid: Sized + Sync {}
// SAFETY: an AtomicU32 is a u32 in memory; zero is a u32.
unsafe impl ZeroValid for std::sync::atomic::AtomicU32 {}
// SAFETY: an AtomicU64 is a u64 in memory; zero is a u64.
unsafe impl ZeroValid for std::sync::atomic::AtomicU64 {}

/// A fixed-length array of zero-initialized atomics whose memory grows with the elements
/// written, not with its length: the page-state tables of a mapping, which may cover
/// terabytes of which a few pages are touched.
///
/// Small arrays come from the heap (zeroed); from [`ZeroedArray::MMAP_BYTES`] up, from a
/// private anonymous mapping with MAP_NORESERVE (no commit charge, so 64 TiB of mapping
/// needs no 64 GiB of swap) and MADV_NOHUGEPAGE (a write touches 4 KiB, not 2 MiB). Pages
/// never written read as the shared zero page: no memory, no Rss.
pub(crate) struct ZeroedArray<T: ZeroValid> {
    ptr: std::ptr::NonNull<T>,
    len: usize,
    /// Whether the memory is a mapping of its own (else a heap allocation).
    mapped: bool,
}

// SAFETY: the array owns its memory, and its elements are atomics, which are Sync.
unsafe impl<T: ZeroValid> Send for ZeroedArray<T> {}
// SAFETY: as above: shared access only hands out `&[T]` of atomics.
unsafe impl<T: ZeroValid> Sync for ZeroedArray<T> {}

impl<T: ZeroValid> ZeroedArray<T> {
    /// Arrays of at least this many bytes get a mapping of their own.
    pub(crate) const MMAP_BYTES: usize = 256 << 10;

    /// `len` zeroed elements.
    ///
    /// # Errors
    /// ENOMEM when the memory cannot be had (the length overflows, the heap is exhausted,
    /// or the address space or `vm.max_map_count` is).
    pub(crate) fn new(len: usize) -> io::Result<ZeroedArray<T>> {
        let no_memory = || io::Error::from_raw_os_error(libc::ENOMEM);
        let layout = std::alloc::Layout::array::<T>(len.max(1)).map_err(|_| no_memory())?;
        let mapped = layout.size() >= Self::MMAP_BYTES;
        let raw = if mapped {
            let prot = libc::PROT_READ | libc::PROT_WRITE;
            let raw = map_anonymous(0, layout.size(), prot, 0)? as *mut u8;
            // Advice only: a kernel without THP refuses it, and nothing depends on it.
            // SAFETY: the mapping just made, which holds no data yet.
            unsafe { libc::madvise(raw.cast(), layout.size(), libc::MADV_NOHUGEPAGE) };
            raw
        } else {
            // SAFETY: the layout has a non-zero size (`len.max(1)` elements of a non-ZST).
            unsafe { std::alloc::alloc_zeroed(layout) }
        };
        let ptr = std::ptr::NonNull::new(raw.cast::<T>()).ok_or_else(no_memory)?;
        Ok(ZeroedArray { ptr, len, mapped })
    }

    fn layout(&self) -> std::alloc::Layout {
        // Cannot fail: `new` built the same layout.
        std::alloc::Layout::array::<T>(self.len.max(1)).unwrap_or(std::alloc::Layout::new::<T>())
    }
}

/// `len` bytes of fresh private anonymous memory (zeroed) with protection `prot`, not
/// charged against the commit limit (MAP_NORESERVE: memory is committed as pages are
/// touched), at `address` (0: the kernel's choice) with the extra mmap `flags` given
/// (MAP_FIXED, MAP_FIXED_NOREPLACE, or 0). Returns where it is.
fn map_anonymous(
    address: usize,
    len: usize,
    prot: libc::c_int,
    flags: libc::c_int,
) -> io::Result<usize> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | flags;
    // SAFETY: a private anonymous mapping; at a fixed address only with MAP_FIXED* in
    // `flags`, whose callers vouch for the range (`map_fixed`). The result is checked
    // against MAP_FAILED before use.
    let raw = unsafe { libc::mmap(address as *mut libc::c_void, len, prot, flags, -1, 0) };
    if raw == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(raw as usize)
}

impl<T: ZeroValid> std::ops::Deref for ZeroedArray<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` holds `len` elements, zeroed at creation (a valid value of T, by
        // `ZeroValid`) and changed since only through the atomics' own methods.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: ZeroValid> Drop for ZeroedArray<T> {
    fn drop(&mut self) {
        let layout = self.layout();
        let raw = self.ptr.as_ptr().cast::<u8>();
        if self.mapped {
            // SAFETY: the mapping `new` made for this array, of `layout.size()` bytes;
            // nothing borrows it any more.
            unsafe { libc::munmap(raw.cast(), layout.size()) };
        } else {
            // SAFETY: allocated by `new` with this layout.
            unsafe { std::alloc::dealloc(raw, layout) };
        }
    }
}
