//! The kernel's huge zero page, moved into a 2 MiB hole range as one PMD: the source it is
//! moved from, the kernel gate and the self-test that decide whether it can be used.
//!
//! UFFDIO_ZEROPAGE only ever maps 4 KiB zero pages. But a read of an anonymous
//! MADV_HUGEPAGE range maps the huge zero page there (one read-only PMD, no memory), and
//! UFFDIO_MOVE moves that PMD into a destination 2 MiB whose page table was dropped
//! (MADV_DONTNEED), where PAGEMAP_SCAN reports it PRESENT|PFNZERO|HUGE. So the source is
//! a process-wide reservation of [`SLOTS`] 2 MiB slots, each claimed by one thread at a
//! time (lock-free: claims happen in SIGBUS handlers too), refilled by reading one byte.
//!
//! Kernel bug: on 6.16 up to 6.18.19 (CVE-2026-31397, fixed in 6.18.20) the move installs
//! a bogus pfn instead of the huge zero pfn: reads of it return some other page, and
//! unmapping it drops a reference to a page it never held (memory corruption). Even one
//! move is unsafe there, so the release gate ([`is_fixed_release`]) comes first and the
//! self-test ([`self_test`]) runs only on kernels it lets through: it moves one huge zero
//! PMD into a scratch 2 MiB and checks that the page table holds the huge zero pfn
//! (PAGEMAP_SCAN's PFNZERO compares exactly that) and that the bytes read as zeros.
//! Either failing, [`get`] answers `None` for the life of the process, and 2 MiB holes
//! are 512 zero pages as before.
//!
//! On by default (`Options::huge_zero_page`). It was off for a while: the race tests lost
//! a store to the first page of a hole range now and then (issue 11): a racing fault made
//! the range's page table again between the MADV_DONTNEED and the move, so the kernel split
//! the PMD and moved zero PTEs, and the move could fail with EEXIST, reporting nothing
//! moved, having installed the first page; the entries then said Empty over a mapped,
//! unprotected page. `install::strays_of` now keeps such pages (fixed; the reproducer is
//! `tests/races.rs`, `huge_zero_page_on_parallel_mappings_lose_no_write`).
//!
//! Invariant 1: a slot that is not claimed maps the huge zero page, or nothing (a move
//! that fell short empties its slot before the claim is released).

use std::sync::atomic::{AtomicU32, Ordering};

use crate::HUGE_PAGE_SIZE;
use crate::sys::memory::Reservation;
use crate::sys::pagemap::Pagemap;
use crate::sys::per_process::PerProcess;
use crate::sys::uffd::{Uffd, UffdError, features};

/// Source slots (address space only: the huge zero page costs no memory), one bit each of
/// the claim word, so that this many threads can fill 2 MiB holes at once; the others
/// fall back to zero PTEs.
const SLOTS: usize = u32::BITS as usize;

/// The source of huge zero PMDs of this process.
#[derive(Debug)]
pub(crate) struct HugeZero {
    source: Reservation,
    /// Bit `i`: slot `i` is claimed.
    busy: AtomicU32,
}

/// A claimed source slot, released on drop.
pub(crate) struct Source<'a> {
    zero: &'a HugeZero,
    number: usize,
}

/// The process's source, once decided: (pid, source or `None`). A forked child does not
/// inherit the source's memory (MADV_DONTFORK), so it decides again for itself.
static DECIDED: PerProcess<Option<&'static HugeZero>> = PerProcess::new();

/// The huge zero source of this process, or `None` where the kernel cannot be trusted to
/// move the huge zero page (the release gate, then the self-test, decided once per
/// process). Takes a lock and may allocate: call it when a region is made, never from a
/// fault path.
pub(crate) fn get() -> Option<&'static HugeZero> {
    // A parent's source (memory the child does not have) is forgotten, not dropped.
    let decided = DECIDED.get_or_make(|| Ok::<_, ()>(decide().map(|z| &*Box::leak(Box::new(z)))));
    decided.ok().flatten()
}

/// Testing only: whether 2 MiB hole ranges of mappings made from now on can be the huge
/// zero page (the kernel passed the release gate and the self-test).
#[doc(hidden)]
pub fn available() -> bool {
    get().is_some()
}

/// The gate, then the self-test on a fresh source.
fn decide() -> Option<HugeZero> {
    let release = kernel_release()?;
    if !is_fixed_release(&release) {
        return None;
    }
    let zero = HugeZero {
        source: Reservation::new(SLOTS * HUGE_PAGE_SIZE, true).ok()?,
        busy: AtomicU32::new(0),
    };
    self_test(&zero).ok()?.then_some(zero)
}

/// The running kernel's release (`uname -r`).
fn kernel_release() -> Option<String> {
    // SAFETY: utsname is plain old data; all-zero is a valid value for uname to fill.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is a valid utsname to fill.
    if unsafe { libc::uname(&mut name) } != 0 {
        return None;
    }
    // SAFETY: uname fills `release` with a NUL-terminated string.
    let release = unsafe { std::ffi::CStr::from_ptr(name.release.as_ptr()) };
    Some(release.to_string_lossy().into_owned())
}

/// Whether a kernel release moves the huge zero PMD with its own pfn. Broken from 6.16
/// (the move rebuilt the PMD from a folio the huge zero page does not have) until the fix,
/// backported to 6.18.20; where the fix came to 6.19 is not known here, so 6.19 counts as
/// broken. Before 6.16 and from 7.0 on it is right. An unparsable release is refused.
pub(crate) fn is_fixed_release(release: &str) -> bool {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse::<u32>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (numbers.next(), numbers.next()) else {
        return false;
    };
    // A release without a patch number ("6.18-rc1") is its .0.
    let patch = numbers.next().flatten().unwrap_or(0);
    match (major, minor) {
        (major, _) if major >= 7 => true,
        (6, minor) if minor < 16 => true,
        (6, 18) => patch >= 20,
        (6, _) => false,
        _ => true,
    }
}

/// Moves one huge zero PMD the way the fault path does (into a 2 MiB whose page table was
/// made, then dropped) and checks what arrived: one PMD of the huge zero pfn, reading as
/// zeros. Only ever run past the release gate: on a broken kernel the move itself does
/// the damage.
fn self_test(zero: &HugeZero) -> Result<bool, UffdError> {
    let pagemap = Pagemap::open()?;
    let scratch = Reservation::new(HUGE_PAGE_SIZE, false)?;
    let uffd = Uffd::open(features::MOVE, true, false)?;
    let dst = scratch.base();
    // SAFETY: the scratch was just reserved and nothing references it; its faults are
    // never taken (it is only touched after the uffd is closed, below).
    unsafe { uffd.register(dst, HUGE_PAGE_SIZE, false)? };
    // A page table first, as a mapping's range may have had one: the move must still map
    // one PMD once MADV_DONTNEED has dropped it.
    // SAFETY: the scratch is ours and registered with `uffd`; nothing is mapped there.
    unsafe { uffd.zeropage(dst, crate::PAGE_SIZE, false)? };
    // SAFETY: the scratch is ours; it holds a zero page nothing relies on.
    unsafe { scratch.discard(dst, HUGE_PAGE_SIZE)? };
    let Some(source) = zero.claim() else {
        return Ok(false);
    };
    if !source.refill(&pagemap) {
        return Ok(false);
    }
    // SAFETY: the scratch is ours, registered with `uffd` and all missing.
    let moved = unsafe { source.move_to(&uffd, dst) };
    drop(source);
    let one_pmd = moved == HUGE_PAGE_SIZE && pagemap.is_huge(dst, HUGE_PAGE_SIZE, true)?;
    // Closing the uffd unregisters the scratch: reading it can no longer wait on a fault.
    drop(uffd);
    // SAFETY: our mapped scratch, not registered any more; nothing writes it.
    let bytes = unsafe { std::slice::from_raw_parts(dst as *const u8, HUGE_PAGE_SIZE) };
    Ok(one_pmd && bytes.iter().all(|&byte| byte == 0))
}

impl HugeZero {
    /// Claims a free source slot, if any (never waits).
    pub(crate) fn claim(&self) -> Option<Source<'_>> {
        let mut busy = self.busy.load(Ordering::Relaxed);
        loop {
            let free = !busy;
            if free == 0 {
                return None;
            }
            let number = free.trailing_zeros() as usize;
            let bit = 1 << number;
            match self.busy.compare_exchange_weak(
                busy,
                busy | bit,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Source { zero: self, number }),
                Err(now) => busy = now,
            }
        }
    }
}

impl Source<'_> {
    fn address(&self) -> usize {
        self.zero.source.base() + self.number * HUGE_PAGE_SIZE
    }

    /// Maps the huge zero page in the slot (a read fault of its first byte, when it is
    /// empty); with the self-test's `pagemap`, returns whether it did.
    fn refill(&self, pagemap: &Pagemap) -> bool {
        // SAFETY: the slot is our own anonymous memory, mapped while the source lives and
        // not registered with userfaultfd: a read cannot wait on us.
        unsafe { std::ptr::read_volatile(self.address() as *const u8) };
        pagemap
            .is_huge(self.address(), HUGE_PAGE_SIZE, true)
            .unwrap_or(false)
    }

    /// Moves the huge zero page into `dst` (2 MiB of `uffd`'s, without a page table so
    /// that it arrives as one PMD; with one, the kernel splits it into 512 zero PTEs on
    /// the way), without waking. Returns the bytes moved from the start: the whole range,
    /// a prefix (the slot held 4 KiB zero pages, THP having been turned off, say), or 0.
    ///
    /// # Safety
    /// The caller owns `dst..dst + 2 MiB`, a range of this process registered with `uffd`,
    /// all missing (as `Uffd::move_pages` requires).
    pub(crate) unsafe fn move_to(&self, uffd: &Uffd, dst: usize) -> usize {
        // SAFETY: the slot is our own anonymous memory (see `refill`).
        unsafe { std::ptr::read_volatile(self.address() as *const u8) };
        // SAFETY: the slot is claimed by this thread alone and holds the huge zero page,
        // which nothing references; the caller vouches for `dst`.
        let moved = unsafe { uffd.move_pages(dst, self.address(), HUGE_PAGE_SIZE, false) };
        let moved = match moved {
            Ok(()) => return HUGE_PAGE_SIZE,
            Err(UffdError::Again { done, .. }) => done as usize,
            Err(_) => 0,
        };
        // Invariant 1: what a short move left (split zero PTEs, a page table) goes, so the
        // next read maps one PMD again. Zero pages hold nothing to lose.
        // SAFETY: the slot is ours and claimed; nothing references its bytes.
        let _ = unsafe { self.zero.source.discard(self.address(), HUGE_PAGE_SIZE) };
        moved / crate::PAGE_SIZE * crate::PAGE_SIZE
    }
}

impl Drop for Source<'_> {
    fn drop(&mut self) {
        self.zero
            .busy
            .fetch_and(!(1 << self.number), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_refuses_the_releases_that_move_a_bogus_pfn() {
        let rows = [
            ("6.8.0-45-generic", true),
            ("6.15.11", true),
            ("6.16.0", false),
            ("6.17.3-arch1-1", false),
            ("6.18", false),
            ("6.18-rc4", false),
            ("6.18.19", false),
            ("6.18.20", true),
            ("6.18.44-fc-v1045", true),
            ("6.19.2", false),
            ("7.0.1", true),
            ("garbage", false),
            ("", false),
        ];
        for (release, fixed) in rows {
            assert_eq!(is_fixed_release(release), fixed, "{release}");
        }
    }

    #[test]
    fn a_claim_is_exclusive_until_dropped() {
        let zero = HugeZero {
            source: Reservation::new(SLOTS * HUGE_PAGE_SIZE, true).expect("reserve"),
            busy: AtomicU32::new(0),
        };
        let claims: Vec<_> = (0..SLOTS)
            .map(|_| zero.claim().expect("free slot"))
            .collect();
        let mut numbers: Vec<_> = claims.iter().map(|claim| claim.number).collect();
        numbers.dedup();
        assert_eq!(numbers.len(), SLOTS);
        assert!(zero.claim().is_none(), "every slot is claimed");
        drop(claims);
        assert!(zero.claim().is_some());
    }
}
