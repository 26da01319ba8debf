//! A region: the engine's context, the VMA of the fault path. It holds an address range
//! registered with a userfaultfd, the store behind it and where in the store the range
//! starts, the entry table, the counters and the configuration, and the state the fault,
//! writeback and eviction paths share (the error slot, the zero-page windows, the budget,
//! the huge-page slots, the flush lock).
//!
//! The rest of the engine changes the range's memory only through the methods here. Each
//! takes page indices, which it turns into addresses inside the range, and makes the one
//! `unsafe` call into `sys` that [`Region::new`]'s contract covers. A region does not know
//! who reserved its memory (a `Mapping`, or another process that handed over its uffd)
//! nor which thread serves its faults.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::engine::ahead::Ahead;
use crate::engine::budget::Budget;
use crate::engine::config::Config;
use crate::engine::entries::Entries;
use crate::engine::error_slot::ErrorSlot;
use crate::engine::huge_slots::{HugeSlots, Slot};
use crate::engine::stats::{Counters, Stats};
use crate::engine::streams::Streams;
use crate::engine::unsynced::Unsynced;
use crate::engine::window::{Window, Windows};
use crate::error::Error;
use crate::store::Store;
use crate::sys::huge_zero::{self, HugeZero};
use crate::sys::memory::Reservation;
use crate::sys::pagemap::{MAX_REGIONS, PageRegion, Pagemap, Query, category};
use crate::sys::uffd::{Uffd, UffdError};
use crate::{HUGE_PAGES, PAGE_SIZE};

/// What [`Region::for_each_run`] looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PageKind {
    /// Any present page.
    Present,
    /// A present page that is not the zero page (a private page of the region's own).
    Private,
}

/// Whose memory a region is.
pub(crate) enum Memory {
    /// This process's own reservation (a `Mapping`'s), unmapped when the region goes.
    Reserved(Reservation),
    /// `len` bytes at `base` in another process, reached only through its uffd (an
    /// adopted region): pages can be installed there, not read, dropped or moved.
    Foreign {
        /// The first byte, in that process.
        base: usize,
        /// Length in bytes.
        len: usize,
        /// Backed by 2 MiB hugetlbfs pages there: filled in whole, aligned 2 MiB units
        /// (`engine::hugetlb`), never with the zero page.
        hugetlb: bool,
    },
}

impl Memory {
    fn range(&self) -> (usize, usize) {
        match self {
            Memory::Reserved(reservation) => (reservation.base(), reservation.len()),
            Memory::Foreign { base, len, .. } => (*base, *len),
        }
    }
}

/// One region and everything its faults share.
pub(crate) struct Region {
    base: usize,
    len: usize,
    /// Where page 0 lies in the store.
    store_offset: u64,
    memory: Memory,
    uffd: Arc<Uffd>,
    /// Page-table queries of this process; `None` for foreign memory.
    pagemap: Option<Arc<Pagemap>>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) entries: Entries,
    pub(crate) counters: Counters,
    pub(crate) config: Config,
    /// The first fault-time error since the last flush (reported by that flush).
    errors: ErrorSlot,
    /// Open while a zero page (or a moved-in huge page) is mapped but not yet known clean
    /// (see `install::insert_zero_page`); flush waits those windows out.
    zero_windows: Windows,
    /// The resident budget and its eviction clock, if the region has one.
    pub(crate) budget: Option<Budget>,
    /// The last faults' page ranges: which read faults are sequential
    /// (`Granularity::SequentialAround`).
    pub(crate) streams: Streams,
    /// The sequential run of 2 MiB faults and the ranges read ahead of it
    /// (`engine::read_ahead`).
    pub(crate) ahead: Ahead,
    /// Buffers for filling huge pages to move in; `None` unless `config.huge_move`.
    pub(crate) huge_slots: Option<Arc<HugeSlots>>,
    /// Where 2 MiB holes get the huge zero page from; `None` unless `config.huge_move` and
    /// `config.huge_zero`, and the kernel can be trusted to move it (`sys::huge_zero`).
    huge_zero: Option<&'static HugeZero>,
    /// Pages ever poisoned; while zero, no SIGBUS can come from a poison marker.
    poisoned: AtomicU64,
    /// Serializes flushes: one flush takes the dirty index, and a second must not return
    /// before the pages the first took are written.
    pub(crate) flushing: Mutex<()>,
    /// The pages written back since the last good sync, and a loss that sticks.
    pub(crate) unsynced: Unsynced,
    /// Set when zero pages were protected without asking the page table whether a store
    /// got in before the protection (`install::settle`); cleared by the flush that asks
    /// for the whole region (`writeback::claim_window_stores`). While it is set, every
    /// path that drops a Zero page asks first (`install::window_stores`).
    pub(crate) unverified_zero: AtomicBool,
    /// 0 while the region's faults are read and served; else the errno that made its
    /// handler threads give up (`engine::abandon`).
    abandoned: AtomicI32,
}

impl Region {
    /// A region over `memory`, backed by `store` from `store_offset` on.
    ///
    /// # Errors
    /// [`Error::BadRange`] if the range is empty, unaligned or runs past the store's end;
    /// [`Error::IncompatibleOptions`] if foreign memory is asked to track writes, keep a
    /// budget or move huge pages; [`Error::BudgetTooSmall`]; [`Error::Uffd`] or
    /// [`Error::Os`] if /proc/self/pagemap or the huge-page slots cannot be had.
    ///
    /// # Safety
    /// `memory`'s range is registered with `uffd` for missing faults, and for write-protect
    /// faults too when `config.tracking` is set. Its contents belong to the region from
    /// now on: nothing else installs pages there, and no Rust reference relies on its bytes
    /// (they are reached only through raw pointers and atomics, whose users expect faults
    /// to fill them). For foreign memory, `uffd` belongs to the process that owns it.
    pub(crate) unsafe fn new(
        memory: Memory,
        store_offset: u64,
        uffd: Arc<Uffd>,
        store: Arc<dyn Store>,
        config: Config,
    ) -> Result<Region, Error> {
        let (base, len) = memory.range();
        check_range(base, len, store_offset, store.len())?;
        let local = matches!(memory, Memory::Reserved(_));
        if !local && (config.tracking.is_some() || config.budget.is_some() || config.huge_move) {
            return Err(Error::IncompatibleOptions {
                reason: "memory of another process can only be filled: no dirty tracking, \
                         budget or huge-page moves",
            });
        }
        let budget = config
            .budget
            .map(|bytes| Budget::new(bytes, config.granularity, config.evict_delay));
        Ok(Region {
            base,
            len,
            store_offset,
            memory,
            uffd,
            pagemap: if local {
                Some(Pagemap::shared()?)
            } else {
                None
            },
            store,
            entries: Entries::new(len / PAGE_SIZE).map_err(|source| Error::Os {
                op: "mmap of the page-state table",
                source,
            })?,
            counters: Counters::default(),
            errors: ErrorSlot::new(),
            zero_windows: Windows::new(),
            budget: budget.transpose()?,
            streams: Streams::default(),
            ahead: Ahead::default(),
            huge_slots: if config.huge_move {
                Some(HugeSlots::shared()?)
            } else {
                None
            },
            huge_zero: (config.huge_move && config.huge_zero)
                .then(huge_zero::get)
                .flatten(),
            config,
            poisoned: AtomicU64::new(0),
            flushing: Mutex::new(()),
            unsynced: Unsynced::default(),
            unverified_zero: AtomicBool::new(false),
            abandoned: AtomicI32::new(0),
        })
    }

    /// The first byte of the range (in the memory of the process that owns it).
    pub(crate) fn base(&self) -> usize {
        self.base
    }

    /// Length of the range in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Pages in the range.
    pub(crate) fn pages(&self) -> usize {
        self.len / PAGE_SIZE
    }

    /// The page index of an address inside the range.
    pub(crate) fn page_index(&self, address: usize) -> Option<usize> {
        let offset = address.checked_sub(self.base)?;
        (offset < self.len).then_some(offset / PAGE_SIZE)
    }

    /// The address of page `index`.
    pub(crate) fn page_address(&self, index: usize) -> usize {
        self.base + index * PAGE_SIZE
    }

    /// The store offset of page `index`.
    pub(crate) fn page_offset(&self, index: usize) -> u64 {
        self.store_offset + (index * PAGE_SIZE) as u64
    }

    /// Whether the region's uffd is user-mode-only (kernel-side faults are not reported).
    pub(crate) fn is_user_mode_only(&self) -> bool {
        self.uffd.is_user_mode_only()
    }

    /// Whether first writes are noticed (else the region only fills).
    pub(crate) fn tracks_writes(&self) -> bool {
        self.config.tracking.is_some()
    }

    /// The addresses of `pages` pages from `first`, checked to lie inside the range.
    fn span(&self, first: usize, pages: usize) -> Result<(usize, usize), UffdError> {
        match first.checked_add(pages) {
            Some(end) if end <= self.pages() => Ok((self.page_address(first), pages * PAGE_SIZE)),
            _ => Err(UffdError::Ioctl {
                op: "range check",
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            }),
        }
    }

    /// Installs `bytes` (whole pages) at page `first`: write-protected, or writable and
    /// dirty; wakes the waiters when `wake` (and anyone waits).
    pub(crate) fn copy(
        &self,
        first: usize,
        bytes: &[u8],
        write_protect: bool,
        wake: bool,
    ) -> Result<(), UffdError> {
        let (address, _) = self.span(first, bytes.len() / PAGE_SIZE)?;
        // SAFETY: the pages lie inside the range (checked), which `Region::new`'s contract
        // makes the region's to fill.
        unsafe {
            self.uffd
                .copy(address, bytes, write_protect, wake && self.config.wakes)
        }
    }

    /// Maps the zero page over `pages` pages from `first`, without waking.
    pub(crate) fn zeropage(&self, first: usize, pages: usize, wake: bool) -> Result<(), UffdError> {
        let (address, len) = self.span(first, pages)?;
        // SAFETY: as in `copy`.
        unsafe { self.uffd.zeropage(address, len, wake && self.config.wakes) }
    }

    /// Write-protects (or unprotects) `pages` pages from `first`. Unprotecting wakes the
    /// waiters when `wake`; protecting never wakes.
    pub(crate) fn writeprotect(
        &self,
        first: usize,
        pages: usize,
        protect: bool,
        wake: bool,
    ) -> Result<(), UffdError> {
        let (address, len) = self.span(first, pages)?;
        // SAFETY: as in `copy`.
        unsafe {
            self.uffd
                .writeprotect(address, len, protect, wake && self.config.wakes)
        }
    }

    /// Wakes threads waiting on faults of `pages` pages from `first` (nobody waits when
    /// faulting threads serve their own faults).
    pub(crate) fn wake(&self, first: usize, pages: usize) -> Result<(), UffdError> {
        if !self.config.wakes {
            return Ok(());
        }
        let (address, len) = self.span(first, pages)?;
        self.uffd.wake(address, len)
    }

    /// Whether the region is another process's memory (an adopted range).
    pub(crate) fn is_foreign(&self) -> bool {
        matches!(self.memory, Memory::Foreign { .. })
    }

    /// Whether the region is another process's hugetlbfs memory (2 MiB units).
    pub(crate) fn is_hugetlb(&self) -> bool {
        matches!(self.memory, Memory::Foreign { hugetlb: true, .. })
    }

    /// The first page of the unit the kernel fills at once that holds page `index`: the
    /// page itself, or its 2 MiB unit in hugetlbfs memory.
    pub(crate) fn unit_of(&self, index: usize) -> usize {
        if self.is_hugetlb() {
            index & !(HUGE_PAGES - 1)
        } else {
            index
        }
    }

    /// Poisons the missing page `index` (its whole unit: see [`Region::unit_of`]): its
    /// accesses get SIGBUS (EFAULT in the kernel).
    pub(crate) fn poison(&self, index: usize) -> Result<(), UffdError> {
        let pages = if self.is_hugetlb() { HUGE_PAGES } else { 1 };
        self.poison_run(self.unit_of(index), pages)
    }

    /// Poisons `pages` missing pages from `first` in one ioctl.
    pub(crate) fn poison_run(&self, first: usize, pages: usize) -> Result<(), UffdError> {
        let (address, len) = self.span(first, pages)?;
        self.poisoned.fetch_add(pages as u64, Ordering::Relaxed);
        // SAFETY: as in `copy`.
        unsafe { self.uffd.poison(address, len) }
    }

    /// Drops `pages` pages from `first`: they fault as missing afterwards. Callers hold
    /// the entry locks and have written back anything dirty.
    pub(crate) fn discard(&self, first: usize, pages: usize) -> Result<(), Error> {
        let (address, len) = self.span(first, pages)?;
        let Memory::Reserved(reservation) = &self.memory else {
            return Err(foreign("madvise"));
        };
        // SAFETY: the pages are the region's (`Region::new`); the caller holds their entry
        // locks and nothing unwritten is in them.
        unsafe { reservation.discard(address, len) }.map_err(|source| Error::Os {
            op: "madvise",
            source,
        })
    }

    /// Moves the filled huge page of `slot` into the 2 MiB range from page `first`, whose
    /// entries the caller holds Empty (dropped first, so that the move maps one huge page).
    /// Returns the bytes moved from the start; 0 if nothing was.
    pub(crate) fn move_in(&self, first: usize, slot: &Slot<'_>) -> usize {
        let Ok((address, _)) = self.span(first, crate::HUGE_PAGES) else {
            return 0;
        };
        // The range is all Empty: dropping it loses nothing and frees its page table (Linux
        // 6.14+ reclaims empty page tables on MADV_DONTNEED); into a range without one the
        // move maps one huge page, into a range with one it would split the huge page.
        if self.discard(first, crate::HUGE_PAGES).is_err() {
            return 0;
        }
        // SAFETY: the range is this process's (`discard` succeeded, so the memory is
        // reserved), inside the region, registered with our uffd, and all missing.
        unsafe { slot.move_to(&self.uffd, address) }
    }

    /// Moves the huge zero page into the 2 MiB range from page `first`, whose entries the
    /// caller holds Empty (dropped first, so that it arrives as one PMD), without waking.
    /// Returns the pages moved from the start: 0 if the kernel cannot be trusted with it
    /// (no source), no source slot is free, or nothing was moved.
    pub(crate) fn move_zero_in(&self, first: usize) -> usize {
        let Some(source) = self.huge_zero.and_then(HugeZero::claim) else {
            return 0;
        };
        let Ok((address, _)) = self.span(first, HUGE_PAGES) else {
            return 0;
        };
        // As in `move_in`: the range is all Empty, so dropping it loses nothing and frees
        // its page table.
        if self.discard(first, HUGE_PAGES).is_err() {
            return 0;
        }
        // SAFETY: the range is this process's (`discard` succeeded), inside the region,
        // registered with our uffd, and all missing.
        unsafe { source.move_to(&self.uffd, address) / PAGE_SIZE }
    }

    /// The bytes of `pages` pages from `first`.
    ///
    /// # Safety
    /// The caller holds the entry locks of these pages, which are present and
    /// write-protected: a write to them faults and waits for those locks, so nothing
    /// changes the bytes while the slice lives.
    pub(crate) unsafe fn bytes(&self, first: usize, pages: usize) -> Result<&[u8], Error> {
        let (address, len) = self.span(first, pages)?;
        if !matches!(self.memory, Memory::Reserved(_)) {
            return Err(foreign("read"));
        }
        // SAFETY: this process's memory, inside the range (checked), mapped while the
        // region lives; the caller keeps the bytes still.
        Ok(unsafe { std::slice::from_raw_parts(address as *const u8, len) })
    }

    /// Calls `visit` with each run of pages (indices relative to `first`) among `pages`
    /// from `first` that are of `kind`, in ascending order.
    pub(crate) fn for_each_run(
        &self,
        first: usize,
        pages: usize,
        kind: PageKind,
        mut visit: impl FnMut(Range<usize>),
    ) -> Result<(), Error> {
        let (start, len) = self.span(first, pages)?;
        let pagemap = self
            .pagemap
            .as_ref()
            .ok_or_else(|| foreign("PAGEMAP_SCAN"))?;
        let (required, excluded) = match kind {
            PageKind::Present => (category::PRESENT, 0),
            PageKind::Private => (category::PRESENT, category::PFNZERO),
        };
        let query = Query {
            required,
            excluded,
            ..Query::default()
        };
        pagemap.for_each_region(start, start + len, query, |region| {
            // Regions come in ascending order, inside the scanned range; clamp anyway.
            let from = (region.start as usize).clamp(start, start + len) - start;
            let to = (region.end as usize).clamp(start, start + len) - start;
            visit(from / PAGE_SIZE..to / PAGE_SIZE);
        })?;
        Ok(())
    }

    /// One PAGEMAP_SCAN step over `from..end of range` for pages written since they were
    /// protected (and present), write-protecting them in the same walk (asynchronous dirty
    /// tracking). Returns the regions filled into `out` and where the walk stopped.
    pub(crate) fn scan_written(
        &self,
        from: usize,
        out: &mut [PageRegion; MAX_REGIONS],
    ) -> Result<(usize, usize), Error> {
        let end = self.base + self.len;
        let pagemap = self
            .pagemap
            .as_ref()
            .ok_or_else(|| foreign("PAGEMAP_SCAN"))?;
        // PRESENT too: an empty page counts as written, and write-protecting it would plant
        // a uffd-wp marker (WP_ASYNC implies WP_UNPOPULATED), on which UFFDIO_ZEROPAGE fails.
        // Not PFNZERO: a zero page is installed unprotected under asynchronous tracking
        // (`install::insert_zero_page`), so it reads as written until a store copies it
        // into a private page, which is no longer the zero pfn and is found here.
        let query = Query {
            required: category::WRITTEN | category::PRESENT,
            reported: 0,
            excluded: category::PFNZERO,
        };
        // SAFETY: the walk covers only the range (clamped below), which is the region's.
        let scanned = unsafe { pagemap.scan(from.clamp(self.base, end), end, query, true, out) };
        Ok(scanned?)
    }

    /// Whether a SIGBUS at `address` came from a poison marker rather than userfaultfd.
    /// Without CONFIG_MEMORY_FAILURE both arrive as BUS_ADRERR; the page table tells them
    /// apart (a marker is a non-present, non-empty entry). Free until a page is poisoned.
    pub(crate) fn is_poison_marker(&self, address: usize) -> bool {
        self.poisoned.load(Ordering::Relaxed) != 0
            && self
                .pagemap
                .as_ref()
                .is_some_and(|pagemap| pagemap.is_marker(address).unwrap_or(false))
    }

    /// Keeps the error of a fault on page `index` (reported at its store offset) for the
    /// next flush, unless an earlier one is waiting. Lock-free: callable from a signal
    /// handler.
    pub(crate) fn record_error(&self, index: usize, error: &Error) {
        self.errors.record(self.page_offset(index), error);
    }

    /// Takes the waiting error, if any.
    pub(crate) fn take_error(&self) -> Option<Error> {
        self.errors.take()
    }

    /// Marks the region as no longer served: its faults can no longer be read (`errno`
    /// said why). Returns false if it already was.
    pub(crate) fn mark_abandoned(&self, errno: i32) -> bool {
        let errno = if errno == 0 { libc::EIO } else { errno };
        self.abandoned
            .compare_exchange(0, errno, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Whether the region's faults are no longer served (see `engine::abandon`).
    pub(crate) fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire) != 0
    }

    /// The error every flush of an abandoned region returns.
    pub(crate) fn abandoned_error(&self) -> Option<Error> {
        match self.abandoned.load(Ordering::Acquire) {
            0 => None,
            errno => Some(Error::HandlerFailed {
                source: std::io::Error::from_raw_os_error(errno),
            }),
        }
    }

    /// Opens a zero-page window: flush waits for every window open when it starts.
    pub(crate) fn open_zero_window(&self) -> Window<'_> {
        self.zero_windows.open()
    }

    /// Waits until every zero-page window open now has closed.
    pub(crate) fn wait_zero_windows(&self) {
        self.zero_windows.wait();
    }

    /// A snapshot of the counters, with the resident pages filled in.
    pub(crate) fn stats(&self) -> Stats {
        let mut stats = self.counters.snapshot();
        (stats.resident_pages, stats.resident_pages_peak) = self.entries.resident();
        stats
    }
}

/// Checks a range and its place in a store of `store_len` bytes.
pub(crate) fn check_range(
    base: usize,
    len: usize,
    offset: u64,
    store_len: u64,
) -> Result<(), Error> {
    let bad = |reason| Error::BadRange {
        address: base,
        len,
        offset,
        reason,
    };
    if len == 0 {
        return Err(bad("it is empty"));
    }
    if base % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 || offset % PAGE_SIZE as u64 != 0 {
        return Err(bad("address, length and offset must be multiples of 4096"));
    }
    if base.checked_add(len).is_none() {
        return Err(bad("it wraps around the address space"));
    }
    match offset.checked_add(len as u64) {
        Some(end) if end <= store_len => Ok(()),
        _ => Err(bad("it runs past the end of the store")),
    }
}

/// The error of an operation that needs this process's own memory.
fn foreign(op: &'static str) -> Error {
    Error::Os {
        op,
        source: std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "the region is memory of another process",
        ),
    }
}

/// The region holding `address`, among regions sorted by base.
pub(crate) fn region_of(regions: &[Arc<Region>], address: usize) -> Option<&Region> {
    let after = regions.partition_point(|region| region.base <= address);
    let region = regions.get(after.checked_sub(1)?)?;
    region.page_index(address).map(|_| &**region)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_against_the_store() {
        assert!(check_range(0x20_0000, 8192, 4096, 12288).is_ok());
        let reason = |base, len, offset, store_len| match check_range(base, len, offset, store_len)
        {
            Err(Error::BadRange { reason, .. }) => reason,
            other => panic!("expected BadRange, got {other:?}"),
        };
        assert!(reason(0x20_0000, 0, 0, 4096).contains("empty"));
        assert!(reason(0x20_0001, 4096, 0, 4096).contains("multiples"));
        assert!(reason(0x20_0000, 4096, 100, 8192).contains("multiples"));
        assert!(reason(0x20_0000, 8192, 4096, 8192).contains("past the end"));
        assert!(reason(usize::MAX - 4095, 8192, 0, 1 << 20).contains("wraps"));
    }
}
