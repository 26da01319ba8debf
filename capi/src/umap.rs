//! The UMap-compatible API (`include/umap/umap.h`), after LLNL UMap 2.1.0: `umap` maps a
//! caller's file descriptor (byte `i` of the region is byte `i` of the file; `offset` is
//! ignored, as UMap ignores it), the `UMAP_*` variables configure every region
//! ([`crate::umap_config`]), and one budget of `UMAP_BUFSIZE` pages is shared by all of
//! them. Departures from UMap, all on the side of failing softly:
//!
//! - every failure returns `UMAP_FAILED` or -1 with a positive errno (UMap aborts on most);
//! - `uunmap` of an address `umap` did not return is EINVAL; it unmaps the range (UMap
//!   leaves it mapped);
//! - `UMAP_FIXED` over a live region is EINVAL (MAP_FIXED would pull its memory out from
//!   under its handler threads);
//! - a region longer than its file is EINVAL (UMap reads stale bytes past the end);
//! - `PROT_READ` alone maps read-only (writes raise SIGSEGV); `PROT_NONE` is EINVAL;
//! - `umap_fetch_and_pin` prefaults but does not pin: under a budget the pages may be
//!   evicted (and written back: udax tracks writes to them, UMap does not);
//! - `umap_flush` also makes each file durable (fsync), which is stronger.

use std::collections::BTreeMap;
use std::ffi::{c_int, c_long, c_void};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use udax_core::{FileStore, Mapping, Options};

use crate::ffi::{Failure, guard};
use crate::native::dup_fd;
use crate::umap_config::config;

/// `UMAP_FAILED`.
const UMAP_FAILED: *mut c_void = usize::MAX as *mut c_void;

/// `struct umap_prefetch_item`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UmapPrefetchItem {
    /// An address inside a region; the UMap page holding it is read.
    pub page_base_addr: *mut c_void,
}

/// The live regions by start address. One lock, as UMap's: `umap`, `uunmap` and
/// `umap_flush` of several threads take turns (faults do not take it).
fn regions() -> MutexGuard<'static, BTreeMap<usize, Mapping>> {
    static REGIONS: Mutex<BTreeMap<usize, Mapping>> = Mutex::new(BTreeMap::new());
    REGIONS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `void *umap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)`.
///
/// # Safety
/// With `UMAP_FIXED`, `addr..addr + length` is the caller's to replace, as with mmap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn umap(
    addr: *mut c_void,
    length: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    _offset: libc::off_t,
) -> *mut c_void {
    guard(UMAP_FAILED, || {
        let cfg = config();
        if let Some(why) = &cfg.invalid {
            return Err(Failure::new(libc::EINVAL, why.clone()));
        }
        let einval = |why: &str| Err(Failure::new(libc::EINVAL, format!("umap: {why}")));
        let page = cfg.page_size as usize;
        if length == 0 || length % page != 0 {
            return einval("length must be a nonzero multiple of UMAP_PAGESIZE");
        }
        if prot & !(libc::PROT_READ | libc::PROT_WRITE) != 0 || prot & libc::PROT_READ == 0 {
            return einval("prot must be PROT_READ or PROT_READ|PROT_WRITE");
        }
        if flags & libc::MAP_PRIVATE == 0 || flags & !(libc::MAP_PRIVATE | libc::MAP_FIXED) != 0 {
            return einval("flags must be UMAP_PRIVATE, optionally with UMAP_FIXED");
        }
        let address = addr as usize;
        if address % page != 0 {
            return einval("addr must be aligned to UMAP_PAGESIZE");
        }
        let fixed = flags & libc::MAP_FIXED != 0;
        if fixed && address == 0 {
            return einval("UMAP_FIXED needs an address");
        }
        let store = FileStore::from_fd(dup_fd(fd)?)?;
        let mut options = Options::default()
            .len(length as u64)
            .granularity(cfg.granularity(if fixed { address } else { 0 }))
            .read_only(prot & libc::PROT_WRITE == 0)
            .handler_threads(cfg.fillers as usize);
        if let Some(budget) = &cfg.budget {
            options = options.shared_budget(budget);
        }
        if fixed {
            // SAFETY: UMAP_FIXED is the caller's MAP_FIXED (this function's contract).
            options = unsafe { options.address_replacing(address) };
        }
        let mut regions = regions();
        if fixed && overlaps(&regions, address, length) {
            // MAP_FIXED would replace a live region's memory under its handler threads.
            return einval("UMAP_FIXED range overlaps a live umap region: uunmap it first");
        }
        let mapping = Mapping::new(Arc::new(store), options)?;
        let start = mapping.as_ptr();
        regions.insert(start as usize, mapping);
        Ok(start.cast())
    })
}

/// Whether `address..address + len` overlaps a region of `regions`.
fn overlaps(regions: &BTreeMap<usize, Mapping>, address: usize, len: usize) -> bool {
    let end = address.saturating_add(len);
    regions
        .range(..end)
        .next_back()
        .is_some_and(|(&start, mapping)| start + mapping.len() > address)
}

/// `int uunmap(void *addr, size_t length)`: `length` is ignored, as in UMap.
#[unsafe(no_mangle)]
pub extern "C" fn uunmap(addr: *mut c_void, _length: usize) -> c_int {
    guard(-1, || {
        let mapping = regions().remove(&(addr as usize)).ok_or_else(|| {
            Failure::new(
                libc::EINVAL,
                format!("uunmap: {addr:p} is not a umap region"),
            )
        })?;
        mapping.close()?;
        Ok(0)
    })
}

/// `int umap_flush()`: writes back the dirty pages of every region (and fsyncs).
#[unsafe(no_mangle)]
pub extern "C" fn umap_flush() -> c_int {
    guard(-1, || {
        let regions = regions();
        let mut first = None;
        for mapping in regions.values() {
            if let Err(e) = mapping.flush() {
                first.get_or_insert(e);
            }
        }
        match first {
            Some(e) => Err(e.into()),
            None => Ok(0),
        }
    })
}

/// `int umap_has_write_support()`: always 1 (udax tracks writes with uffd-WP).
#[unsafe(no_mangle)]
pub extern "C" fn umap_has_write_support() -> c_int {
    1
}

/// Reads `[address, address + len)` in, clipped to the region holding `address`;
/// addresses outside every region are ignored, as in UMap.
fn prefault(address: usize, len: usize) {
    let regions = regions();
    let Some((&start, mapping)) = regions.range(..=address).next_back() else {
        return;
    };
    let offset = address - start;
    if offset < mapping.len() {
        let len = len.min(mapping.len() - offset);
        let _ = mapping.prefault(offset, len, false);
    }
}

/// `void umap_prefetch(int npages, struct umap_prefetch_item *page_array)`: reads each
/// item's UMap page in (synchronously: stronger than UMap's asynchronous fill).
///
/// # Safety
/// `page_array` holds `npages` items (or `npages <= 0`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn umap_prefetch(npages: c_int, page_array: *const UmapPrefetchItem) {
    guard((), || {
        let Ok(count) = usize::try_from(npages) else {
            return Ok(());
        };
        if page_array.is_null() || count == 0 {
            return Ok(());
        }
        // SAFETY: the caller's promise.
        let items = unsafe { std::slice::from_raw_parts(page_array, count) };
        let page = config().page_size as usize;
        for item in items {
            let address = item.page_base_addr as usize;
            prefault(address - address % page, page);
        }
        Ok(())
    })
}

/// `void umap_fetch_and_pin(char *paddr, uint64_t size)`: reads the range in; see the
/// module docs for why it does not pin.
#[unsafe(no_mangle)]
pub extern "C" fn umap_fetch_and_pin(paddr: *mut libc::c_char, size: u64) {
    guard((), || {
        prefault(paddr as usize, usize::try_from(size).unwrap_or(usize::MAX));
        Ok(())
    })
}

/// `uint64_t umapcfg_get_umap_page_size(void)`.
#[unsafe(no_mangle)]
pub extern "C" fn umapcfg_get_umap_page_size() -> u64 {
    guard(0, || Ok(config().page_size))
}

/// `uint64_t umapcfg_get_max_fault_events(void)`.
#[unsafe(no_mangle)]
pub extern "C" fn umapcfg_get_max_fault_events() -> u64 {
    guard(0, || Ok(config().max_fault_events))
}

/// `uint64_t umapcfg_get_num_fillers(void)`.
#[unsafe(no_mangle)]
pub extern "C" fn umapcfg_get_num_fillers() -> u64 {
    guard(0, || Ok(config().fillers))
}

/// `uint64_t umapcfg_get_num_evictors(void)`.
#[unsafe(no_mangle)]
pub extern "C" fn umapcfg_get_num_evictors() -> u64 {
    guard(0, || Ok(config().evictors))
}

/// `uint64_t umapcfg_get_max_pages_in_buffer(void)`.
#[unsafe(no_mangle)]
pub extern "C" fn umapcfg_get_max_pages_in_buffer() -> u64 {
    guard(0, || Ok(config().buffer_pages))
}

/// `uint64_t umapcfg_get_read_ahead(void)` (declared but undefined in UMap 2.1.0).
#[unsafe(no_mangle)]
pub extern "C" fn umapcfg_get_read_ahead() -> u64 {
    guard(0, || Ok(config().read_ahead))
}

/// `int umapcfg_get_evict_low_water_threshold(void)`.
#[unsafe(no_mangle)]
pub extern "C" fn umapcfg_get_evict_low_water_threshold() -> c_int {
    guard(0, || Ok(config().low_water))
}

/// `int umapcfg_get_evict_high_water_threshold(void)`.
#[unsafe(no_mangle)]
pub extern "C" fn umapcfg_get_evict_high_water_threshold() -> c_int {
    guard(0, || Ok(config().high_water))
}

/// `long umapcfg_get_system_page_size(void)` (exported by UMap, not in its header).
#[unsafe(no_mangle)]
pub extern "C" fn umapcfg_get_system_page_size() -> c_long {
    // SAFETY: sysconf takes an integer and touches no memory.
    guard(4096, || Ok(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }))
}
