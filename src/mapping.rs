//! The mapping (the VMA analog): reserve the address range, register it with userfaultfd,
//! hand out the pointer, flush, stats, and unmap on drop.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::entries::Entries;
use crate::error::ErrorSlot;
use crate::evict::Budget;
use crate::grace::{Window, Windows};
use crate::handler::Handlers;
use crate::huge::HugeSlots;
use crate::sigbus;
use crate::stats::Counters;
use crate::uffd::pagemap::Pagemap;
use crate::uffd::{Uffd, UffdError, available_features, features};
use crate::writeback;
use crate::{Error, HUGE_PAGE_SIZE, PAGE_SIZE, Stats, Store};

/// How much a fault resolves at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Granularity {
    /// One 4 KiB page per fault.
    #[default]
    Page,
    /// On a read fault, also the Empty neighbours inside an aligned window of this many bytes.
    FaultAround(usize),
    /// The whole aligned 2 MiB range when the kernel's conditions hold, else 4 KiB.
    Huge,
}

/// Who serves a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Handler threads read userfaultfd events and serve them. Kernel-side accesses to the
    /// mapping (`read(2)` into it, `write(2)` from it) fault and are served like any other.
    HandlerThreads,
    /// The faulting thread serves its own fault, in a SIGBUS handler (UFFD_FEATURE_SIGBUS):
    /// no thread wakes another, several times cheaper here. Kernel-side accesses to pages
    /// not yet present fail with EFAULT instead of faulting: call [`Mapping::prefault`]
    /// on a range before handing it to a system call. Needs x86-64 and a store whose
    /// `is_signal_safe` is true ([`crate::FileStore`]); otherwise handler threads serve.
    /// Install your own SIGBUS handler, if any, before the first such mapping: udax
    /// passes it every SIGBUS that is not a udax fault.
    InThread,
}

/// How first writes to clean pages are noticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirtyTracking {
    /// Kernel DAX semantics: clean pages are write-protected and their first write is a
    /// fault that marks them dirty (allocating the block of a hole then, so ENOSPC hits
    /// the access as SIGBUS).
    Sync,
    /// The kernel resolves first writes itself (UFFD_FEATURE_WP_ASYNC), several times
    /// cheaper; `flush` finds written pages with PAGEMAP_SCAN and re-protects them in the
    /// same call. Blocks behind written zero pages are allocated at flush, so ENOSPC is
    /// returned by `flush`, not raised at the access. Not combinable with a budget.
    Async,
}

/// How to map a store. Start from `Options::default()` and chain the setters.
#[derive(Clone, Debug)]
pub struct Options {
    pub(crate) len: Option<u64>,
    pub(crate) granularity: Granularity,
    pub(crate) handler_threads: usize,
    pub(crate) budget: Option<u64>,
    pub(crate) resolution: Resolution,
    pub(crate) tracking: DirtyTracking,
    pub(crate) huge_dirty: bool,
    pub(crate) huge_move: bool,
    pub(crate) zero_window_delay: Option<std::time::Duration>,
    pub(crate) evict_delay: Option<std::time::Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            len: None,
            granularity: Granularity::Page,
            handler_threads: default_handler_threads(),
            budget: None,
            resolution: Resolution::HandlerThreads,
            tracking: DirtyTracking::Sync,
            huge_dirty: false,
            huge_move: true,
            zero_window_delay: None,
            evict_delay: None,
        }
    }
}

impl Options {
    /// Maps only the first `len` bytes of the store (a multiple of 4096; default: all of it).
    pub fn len(mut self, len: u64) -> Self {
        self.len = Some(len);
        self
    }

    /// Sets the fault granularity (default [`Granularity::Page`]).
    pub fn granularity(mut self, granularity: Granularity) -> Self {
        self.granularity = granularity;
        self
    }

    /// Sets how many handler threads serve faults (at least 1; default: one per CPU the
    /// process may use, at most 4, each pinned to its CPU: see the `handler` module).
    pub fn handler_threads(mut self, threads: usize) -> Self {
        self.handler_threads = threads.max(1);
        self
    }

    /// Caps the mapping's resident memory at about `bytes` (default: no limit; at least
    /// 64 KiB). Past the budget, pages are evicted with a CLOCK (second chance) policy:
    /// clean ones dropped, dirty ones written back to the store first; the next access
    /// faults and reads them again. Zero pages (holes that were read) hold no memory and
    /// do not count. Rss of the mapping stays at or under the budget plus one fault's pages
    /// (one page on the 4 KiB path) per thread serving faults at once (the handler
    /// threads, or the faulting threads with in-thread resolution); see the `evict`
    /// module's documentation for the policy. Not combinable with asynchronous dirty
    /// tracking.
    pub fn budget(mut self, bytes: u64) -> Self {
        self.budget = Some(bytes);
        self
    }

    /// Chooses who serves faults (default [`Resolution::HandlerThreads`]).
    pub fn resolution(mut self, resolution: Resolution) -> Self {
        self.resolution = resolution;
        self
    }

    /// Chooses how first writes are noticed (default [`DirtyTracking::Sync`]).
    pub fn dirty_tracking(mut self, tracking: DirtyTracking) -> Self {
        self.tracking = tracking;
        self
    }

    /// With [`Granularity::Huge`], track dirty data per 2 MiB range instead of per 4 KiB
    /// page (default false). A write into a 2 MiB range then makes the whole range writable
    /// and dirty in one fault (one writable huge mapping where the kernel allows), as the
    /// kernel's DAX PMD path does, and flush writes back all 512 pages of it. By default
    /// the range is installed write-protected and only the written page is made writable
    /// and dirty, so flush writes back exactly the pages written.
    pub fn huge_dirty(mut self, huge_dirty: bool) -> Self {
        self.huge_dirty = huge_dirty;
        self
    }

    /// Testing only: never move huge pages in (UFFDIO_MOVE); the 2 MiB path then copies.
    #[doc(hidden)]
    pub fn huge_move(mut self, huge_move: bool) -> Self {
        self.huge_move = huge_move;
        self
    }

    /// Testing only: sleep this long between mapping a zero page and write-protecting it,
    /// to widen the race window the zero-pfn check closes (see `fault::insert_zero_page`);
    /// the same between moving a huge page in and write-protecting it (`huge::move_in`).
    #[doc(hidden)]
    pub fn zero_window_delay(mut self, delay: std::time::Duration) -> Self {
        self.zero_window_delay = Some(delay);
        self
    }

    /// Testing only: sleep this long between writing back the victims of an eviction and
    /// dropping them, with their entries locked, to widen the window a racing write must
    /// get through (see `evict::evict_range`).
    #[doc(hidden)]
    pub fn evict_delay(mut self, delay: std::time::Duration) -> Self {
        self.evict_delay = Some(delay);
        self
    }
}

/// A store mapped into memory, its faults served by udax.
///
/// Dropping a mapping writes back its dirty pages (like munmap of a shared file mapping,
/// which never loses data), stops its threads and unmaps it; [`Mapping::close`] does the
/// same and returns any error. Accessing memory through [`Mapping::as_ptr`] after the
/// mapping is gone is the caller's bug, as with any unmapped memory.
pub struct Mapping {
    shared: Arc<Shared>,
    /// Handler threads (handler-thread resolution), or none.
    handlers: Option<Handlers>,
    /// The SIGBUS table entry (in-thread resolution), or none.
    registration: Option<sigbus::Registration>,
    /// False once closed (nothing left to flush or stop).
    open: bool,
}

/// What the handler threads, the fault policy and writeback share.
pub(crate) struct Shared {
    pub(crate) region: Region,
    pub(crate) uffd: Uffd,
    pub(crate) pagemap: Pagemap,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) entries: Entries,
    pub(crate) counters: Counters,
    /// The first fault-time error since the last flush (reported by that flush).
    error: ErrorSlot,
    /// Open while a zero page is mapped but not yet known clean (see
    /// `fault::insert_zero_page`); flush waits those windows out.
    zero_windows: Windows,
    /// Testing only: see `Options::zero_window_delay`.
    pub(crate) zero_window_delay: Option<std::time::Duration>,
    /// The resident budget and its eviction clock, if the mapping has one.
    pub(crate) budget: Option<Budget>,
    /// Faults are served in the faulting thread: nobody waits to be woken.
    pub(crate) in_thread: bool,
    /// Pages ever poisoned; while zero, no SIGBUS can come from a poison marker.
    poisoned: AtomicU64,
    /// Serializes flushes: one flush takes the dirty index, and a second must not return
    /// before the pages the first took are written.
    pub(crate) flushing: Mutex<()>,
    /// How first writes are noticed.
    pub(crate) tracking: DirtyTracking,
    /// How much a missing fault resolves at once (`huge` and `around` serve the wide ones).
    pub(crate) granularity: Granularity,
    /// See `Options::huge_dirty`.
    pub(crate) huge_dirty: bool,
    /// Buffers for filling huge pages to move in; None when UFFDIO_MOVE or THP is unavailable.
    pub(crate) huge_slots: Option<HugeSlots>,
}

impl Mapping {
    /// Maps the store (or its first `Options::len` bytes) read-write.
    pub fn new(store: Arc<dyn Store>, options: Options) -> Result<Mapping, Error> {
        let len = mapping_len(store.len(), options.len)?;
        if options.tracking == DirtyTracking::Async && options.budget.is_some() {
            return Err(Error::IncompatibleOptions {
                reason: "asynchronous dirty tracking cannot be combined with a budget \
                         (eviction could not stop a write racing it)",
            });
        }
        let budget = options
            .budget
            .map(|bytes| Budget::new(bytes, options.granularity, options.evict_delay))
            .transpose()?;
        let in_thread = options.resolution == Resolution::InThread
            && sigbus::is_supported()
            && store.is_signal_safe();
        let mut features = features::WP | features::POISON;
        if in_thread {
            features |= features::SIGBUS;
        }
        if options.tracking == DirtyTracking::Async {
            features |= features::WP_ASYNC;
        }
        // In-thread faults have a page of scratch, not 2 MiB: their wide faults install
        // holes (no buffer needed) and fall back to 4 KiB for data, so they never move.
        let moves = options.granularity == Granularity::Huge && options.huge_move && !in_thread;
        let moves = moves && available_features()? & features::MOVE != 0 && HugeSlots::usable();
        if moves {
            features |= features::MOVE;
        }
        let uffd = Uffd::open(features)?;
        let region = Region::reserve(len, false)?;
        uffd.register(region.base, len, true)?;
        let shared = Arc::new(Shared {
            pagemap: Pagemap::open()?,
            entries: Entries::new(len / PAGE_SIZE),
            counters: Counters::default(),
            error: ErrorSlot::new(),
            zero_windows: Windows::new(),
            zero_window_delay: options.zero_window_delay,
            budget,
            in_thread,
            poisoned: AtomicU64::new(0),
            flushing: Mutex::new(()),
            tracking: options.tracking,
            granularity: options.granularity,
            huge_dirty: options.huge_dirty,
            huge_slots: if moves {
                Some(HugeSlots::reserve()?)
            } else {
                None
            },
            region,
            uffd,
            store,
        });
        let mut mapping = Mapping {
            shared,
            handlers: None,
            registration: None,
            open: true,
        };
        if in_thread {
            mapping.registration =
                sigbus::register(&mapping.shared).map_err(|source| Error::Os {
                    op: "sigaction(SIGBUS)",
                    source,
                })?;
        }
        if mapping.registration.is_none() {
            // Handler threads: the default, or in-thread asked for but the table is full.
            if in_thread {
                return Err(Error::IncompatibleOptions {
                    reason: "too many in-thread mappings at once (64): close one or use handler threads",
                });
            }
            mapping.handlers = Some(Handlers::start(&mapping.shared, options.handler_threads)?);
        }
        Ok(mapping)
    }

    /// Who serves this mapping's faults (in-thread falls back to handler threads for a
    /// store that is not signal-safe, or off x86-64).
    pub fn resolution(&self) -> Resolution {
        if self.shared.in_thread {
            Resolution::InThread
        } else {
            Resolution::HandlerThreads
        }
    }

    /// Makes every page of `offset..offset+len` present, as reads (or writes, when
    /// `write`) from user space would, so that a system call may access the range. With
    /// in-thread resolution, kernel-side accesses to missing pages fail with EFAULT;
    /// call this first. Writing prefaults dirty the pages (their bytes are unchanged).
    pub fn prefault(&self, offset: usize, len: usize, write: bool) -> Result<(), Error> {
        let bytes = self.atomic_bytes(offset, len)?;
        let first = offset / PAGE_SIZE;
        let last = (offset + len).div_ceil(PAGE_SIZE);
        for page in first..last {
            let at = (page * PAGE_SIZE).max(offset) - offset;
            if write {
                // A compare-exchange of a byte with itself: a locked write cycle, so it
                // faults as a store, and changes nothing even if another thread races it.
                // (`fetch_add(0)` would not do: LLVM turns idempotent RMWs into loads.)
                let value = bytes[at].load(Ordering::Relaxed);
                let _ =
                    bytes[at].compare_exchange(value, value, Ordering::Relaxed, Ordering::Relaxed);
            } else {
                bytes[at].load(Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// The first byte of the mapping. Reads and writes through it fault as udax serves
    /// them; dereferencing it is `unsafe` in the usual way (stay inside `len()`, no data
    /// races between your threads).
    pub fn as_ptr(&self) -> *mut u8 {
        self.shared.region.base as *mut u8
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.shared.region.len
    }

    /// Whether the mapping is empty (never: a mapping has at least one page).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The whole mapping as a byte slice.
    ///
    /// # Safety
    /// While the slice lives, nothing may write the mapping: no [`Mapping::write_at`], no
    /// writes through [`Mapping::as_ptr`] from any thread.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the region is mapped for `len` bytes while `self` lives; the caller
        // promises no writes during the borrow. Faults are served by the handler threads.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len()) }
    }

    /// The whole mapping as a mutable byte slice.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `&mut self` excludes every other safe access for the borrow's life; udax
        // itself only reads the bytes in writeback while the pages are write-protected and
        // locked (a write through the slice then waits in its fault), never writes them.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), self.len()) }
    }

    /// Copies `buf.len()` bytes at `offset` out of the mapping (faulting as a load would).
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), Error> {
        let bytes = self.atomic_bytes(offset, buf.len())?;
        for (out, byte) in buf.iter_mut().zip(bytes) {
            *out = byte.load(Ordering::Relaxed);
        }
        Ok(())
    }

    /// Copies `buf` into the mapping at `offset` (faulting as a store would).
    pub fn write_at(&self, offset: usize, buf: &[u8]) -> Result<(), Error> {
        let bytes = self.atomic_bytes(offset, buf.len())?;
        for (byte, value) in bytes.iter().zip(buf) {
            byte.store(*value, Ordering::Relaxed);
        }
        Ok(())
    }

    /// `offset..offset+len` of the mapping as atomic bytes: racing accesses from other
    /// threads through `read_at`/`write_at` are then data-race free.
    fn atomic_bytes(&self, offset: usize, len: usize) -> Result<&[AtomicU8], Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => {}
            _ => {
                return Err(Error::OutOfRange {
                    offset,
                    len,
                    mapping_len: self.len(),
                });
            }
        }
        // SAFETY: the range lies inside the mapping (checked above), which stays mapped
        // while `self` is borrowed; AtomicU8 has the layout of u8 and no alignment needs.
        Ok(unsafe { std::slice::from_raw_parts(self.as_ptr().add(offset).cast(), len) })
    }

    /// Writes back every dirty page, then makes the store durable. Returns the first
    /// error of the writeback, or of a fault served since the last flush.
    pub fn flush(&self) -> Result<(), Error> {
        writeback::flush(&self.shared)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let mut stats = self.shared.counters.snapshot();
        (stats.resident_pages, stats.resident_pages_peak) = self.shared.entries.resident();
        stats
    }

    /// Flushes, stops the handler threads and unmaps, returning any error.
    pub fn close(mut self) -> Result<(), Error> {
        let result = self.flush();
        self.stop();
        result
    }

    fn stop(&mut self) {
        self.open = false;
        if let Some(mut handlers) = self.handlers.take() {
            handlers.stop();
        }
        self.registration = None;
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.open {
            // Like munmap of a shared mapping: never lose data. An error here has no one
            // to go to; close() is the way to see it.
            let _ = self.flush();
            self.stop();
        }
    }
}

/// One handler thread per CPU the process may use, at most 4: every fault wakes them all,
/// so more would cost more wasted wakes than they save.
fn default_handler_threads() -> usize {
    crate::handler::allowed_cpus().len().clamp(1, 4)
}

/// Checks the requested length against the store.
fn mapping_len(store_len: u64, requested: Option<u64>) -> Result<usize, Error> {
    let len = requested.unwrap_or(store_len);
    if len == 0 {
        return Err(Error::EmptyMapping);
    }
    if len % PAGE_SIZE as u64 != 0 {
        return Err(Error::UnalignedLength { len });
    }
    if len > store_len {
        return Err(Error::StoreTooShort { len, store_len });
    }
    usize::try_from(len).map_err(|_| Error::StoreTooShort { len, store_len })
}

impl Shared {
    /// The page index of an address inside the mapping.
    pub(crate) fn page_index(&self, address: usize) -> Option<usize> {
        let offset = address.checked_sub(self.region.base)?;
        (offset < self.region.len).then_some(offset / PAGE_SIZE)
    }

    /// The address of page `index`.
    pub(crate) fn page_address(&self, index: usize) -> usize {
        self.region.base + index * PAGE_SIZE
    }

    /// The store offset of page `index`.
    pub(crate) fn page_offset(&self, index: usize) -> u64 {
        (index * PAGE_SIZE) as u64
    }

    /// Wakes threads waiting on faults in a range (nobody waits with in-thread resolution).
    pub(crate) fn wake(&self, address: usize, len: usize) -> Result<(), UffdError> {
        if self.in_thread {
            return Ok(());
        }
        self.uffd.wake(address, len)
    }

    /// Notes that a page was poisoned (see `is_poison_marker`).
    pub(crate) fn note_poisoned(&self) {
        self.poisoned.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a SIGBUS at `address` came from a poison marker rather than userfaultfd.
    /// Without CONFIG_MEMORY_FAILURE both arrive as BUS_ADRERR; the page table tells them
    /// apart (a marker is a non-present, non-empty entry). Free until a page is poisoned.
    pub(crate) fn is_poison_marker(&self, address: usize) -> bool {
        self.poisoned.load(Ordering::Relaxed) != 0
            && self.pagemap.is_marker(address).unwrap_or(false)
    }

    /// Keeps the error of a fault on page `index` for the next flush, unless an earlier
    /// one is waiting. Lock-free: callable from a signal handler.
    pub(crate) fn record_error(&self, index: usize, error: &Error) {
        self.error.record(self.page_offset(index), error);
    }

    /// Opens a zero-page window: flush waits for every window open when it starts.
    pub(crate) fn open_zero_window(&self) -> Window<'_> {
        self.zero_windows.open()
    }

    /// Waits until every zero-page window open now has closed.
    pub(crate) fn wait_zero_windows(&self) {
        self.zero_windows.wait();
    }

    /// Takes the waiting error, if any.
    pub(crate) fn take_error(&self) -> Option<Error> {
        self.error.take()
    }
}

/// The reserved address range: private anonymous memory, 2 MiB aligned, unmapped on drop.
pub(crate) struct Region {
    pub(crate) base: usize,
    pub(crate) len: usize,
}

impl Region {
    /// Reserves `len` bytes at a 2 MiB-aligned address (so 2 MiB faults can line up).
    /// `huge_pages` asks the kernel for transparent huge pages there (MADV_HUGEPAGE); else
    /// it is told never to use them (MADV_NOHUGEPAGE: the mapping's own pages are only
    /// ever installed by udax, which moves huge pages in itself).
    pub(crate) fn reserve(len: usize, huge_pages: bool) -> Result<Region, Error> {
        let padded = len + HUGE_PAGE_SIZE;
        // SAFETY: a new private anonymous mapping at an address of the kernel's choosing;
        // the result is checked against MAP_FAILED before use.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                padded,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            let source = std::io::Error::last_os_error();
            return Err(Error::Os { op: "mmap", source });
        }
        let raw = raw as usize;
        let base = raw.next_multiple_of(HUGE_PAGE_SIZE);
        let region = Region { base, len };
        // Trim the padding; failures here only leave unused address space mapped.
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
        region.advise(0, len, libc::MADV_DONTFORK)?;
        let thp = if huge_pages {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        region.advise(0, len, thp)?;
        Ok(region)
    }

    fn advise(&self, offset: usize, len: usize, advice: libc::c_int) -> Result<(), Error> {
        // SAFETY: the range lies inside the region we own; madvise changes no Rust-visible state.
        let ret = unsafe { libc::madvise((self.base + offset) as *mut libc::c_void, len, advice) };
        if ret != 0 {
            let source = std::io::Error::last_os_error();
            return Err(Error::Os {
                op: "madvise",
                source,
            });
        }
        Ok(())
    }

    /// Drops the pages at `address..address+len` (they read as missing afterwards).
    /// Callers hold the entry locks and have written back anything dirty.
    pub(crate) fn discard(&self, address: usize, len: usize) {
        let _ = self.try_discard(address, len);
    }

    /// [`Region::discard`], reporting a failure (the pages may then still be present).
    pub(crate) fn try_discard(&self, address: usize, len: usize) -> Result<(), Error> {
        self.advise(address - self.base, len, libc::MADV_DONTNEED)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the region is ours; the handler threads are stopped and the mapping's
        // owner is gone, so nothing references this memory any more.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}
