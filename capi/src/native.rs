//! udax's own C API (`include/udax.h`): map a file or a descriptor with options, flush,
//! prefault, stats, unmap, shared budgets. Every function returns 0 or a negative errno
//! (pointers: NULL with errno set) and never aborts.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use udax_core::{
    DirtyTracking, FileStore, Granularity, HUGE_PAGE_SIZE, Mapping, Options, PAGE_SIZE, Resolution,
    SharedBudget, Stats,
};

use crate::ffi::{Failure, guard, guard_status, io_errno, message_for};

/// `udax_options.flags`: map read-only (PROT_READ; writes raise SIGSEGV).
pub const UDAX_READ_ONLY: u32 = 1;
/// `udax_options.flags`: serve faults in the faulting thread (SIGBUS handler).
pub const UDAX_IN_THREAD: u32 = 2;
/// `udax_options.flags`: asynchronous dirty tracking (UFFD_FEATURE_WP_ASYNC).
pub const UDAX_ASYNC_DIRTY: u32 = 4;
/// `udax_options.flags`: with `address`, replace whatever is mapped there (MAP_FIXED).
pub const UDAX_FIXED_REPLACE: u32 = 8;
/// `udax_options.flags`: with 2 MiB granularity, track dirty data per 2 MiB.
pub const UDAX_HUGE_DIRTY: u32 = 16;
/// `udax_options.flags`: with 2 MiB granularity, no write-around (each page's first
/// write is its own fault, which allocates its block: ENOSPC is the access's SIGBUS).
pub const UDAX_NO_WRITE_AROUND: u32 = 32;
/// `udax_options.flags`: no read-ahead into the mapping (`Options::read_ahead(false)`):
/// every fault reads only what its granularity says.
pub const UDAX_NO_READ_AHEAD: u32 = 64;
/// Every flag this version knows.
const KNOWN_FLAGS: u32 = UDAX_READ_ONLY
    | UDAX_IN_THREAD
    | UDAX_ASYNC_DIRTY
    | UDAX_FIXED_REPLACE
    | UDAX_HUGE_DIRTY
    | UDAX_NO_WRITE_AROUND
    | UDAX_NO_READ_AHEAD;

/// `struct udax_options`: all zero is the default.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UdaxOptions {
    /// Bytes to map from the start of the file (0: all of it).
    pub len: u64,
    /// Bytes a read fault brings in: 0 or 4096 one page, 2 MiB whole huge pages, another
    /// multiple of 4096 a fault-around window.
    pub granularity: u64,
    /// Resident budget in bytes (0: none).
    pub budget: u64,
    /// A budget shared with other mappings (NULL: none); overrides `budget`.
    pub shared_budget: *const UdaxBudget,
    /// Where to map (NULL: anywhere).
    pub address: *mut c_void,
    /// Handler threads (0: the default).
    pub handler_threads: u32,
    /// `UDAX_*` flags.
    pub flags: u32,
}

/// `struct udax_stats`: a mapping's counters (see the Rust `udax::Stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UdaxStats {
    /// Read faults on holes served with the zero page.
    pub zero_faults: u64,
    /// Read faults served from the store.
    pub read_faults: u64,
    /// Write faults on missing pages.
    pub write_faults: u64,
    /// First writes to clean pages.
    pub mkwrite_faults: u64,
    /// First writes to zero pages.
    pub zero_to_dirty: u64,
    /// Faults resolved as a 2 MiB range.
    pub huge_faults: u64,
    /// 2 MiB faults that fell back to 4 KiB.
    pub huge_fallbacks: u64,
    /// Pages installed by fault-around.
    pub fault_around_pages: u64,
    /// Dirty pages written back (flush or eviction).
    pub pages_written_back: u64,
    /// Completed flushes.
    pub flushes: u64,
    /// Pages dropped to stay under the budget.
    pub evictions: u64,
    /// Evicted pages that were dirty.
    pub evicted_dirty: u64,
    /// Pages resident now.
    pub resident_pages: u64,
    /// Highest `resident_pages`.
    pub resident_pages_peak: u64,
    /// Bytes read from the store.
    pub bytes_read: u64,
    /// Bytes written to the store.
    pub bytes_written: u64,
    /// Accesses answered with SIGBUS.
    pub sigbus_delivered: u64,
}

impl From<Stats> for UdaxStats {
    fn from(s: Stats) -> UdaxStats {
        UdaxStats {
            zero_faults: s.zero_faults,
            read_faults: s.read_faults,
            write_faults: s.write_faults,
            mkwrite_faults: s.mkwrite_faults,
            zero_to_dirty: s.zero_to_dirty,
            huge_faults: s.huge_faults,
            huge_fallbacks: s.huge_fallbacks,
            fault_around_pages: s.fault_around_pages,
            pages_written_back: s.pages_written_back,
            flushes: s.flushes,
            evictions: s.evictions,
            evicted_dirty: s.evicted_dirty,
            resident_pages: s.resident_pages,
            resident_pages_peak: s.resident_pages_peak,
            bytes_read: s.bytes_read,
            bytes_written: s.bytes_written,
            sigbus_delivered: s.sigbus_delivered,
        }
    }
}

/// `struct udax_map`: a mapping, opaque to C.
pub struct UdaxMap {
    mapping: Mapping,
}

/// `struct udax_budget`: a shared budget, opaque to C.
pub struct UdaxBudget {
    budget: SharedBudget,
}

/// The granularity `bytes` asks for (`None`: 0, the library's default).
pub fn granularity_of(bytes: u64) -> Result<Option<Granularity>, Failure> {
    match bytes {
        0 => Ok(None),
        4096 => Ok(Some(Granularity::Page)),
        b if b == HUGE_PAGE_SIZE as u64 => Ok(Some(Granularity::Huge)),
        b if b % PAGE_SIZE as u64 == 0 && b <= HUGE_PAGE_SIZE as u64 => {
            Ok(Some(Granularity::FaultAround(b as usize)))
        }
        b => Err(Failure::new(
            libc::EINVAL,
            format!("granularity {b} is not a multiple of 4096 up to 2 MiB"),
        )),
    }
}

/// The Rust options `options` (NULL: defaults) describe.
///
/// # Safety
/// `options` is NULL or points to a valid `udax_options`, whose `shared_budget` is NULL
/// or a live budget.
unsafe fn options_from(options: *const UdaxOptions) -> Result<(Options, bool), Failure> {
    // SAFETY: the caller's promise.
    let Some(o) = (unsafe { options.as_ref() }) else {
        return Ok((Options::default(), false));
    };
    if o.flags & !KNOWN_FLAGS != 0 {
        return Err(Failure::new(
            libc::EINVAL,
            format!("unknown udax_options.flags {:#x}", o.flags & !KNOWN_FLAGS),
        ));
    }
    let flag = |f: u32| o.flags & f != 0;
    let mut opts = Options::default()
        .read_only(flag(UDAX_READ_ONLY))
        .huge_dirty(flag(UDAX_HUGE_DIRTY))
        .write_around(!flag(UDAX_NO_WRITE_AROUND))
        .read_ahead(!flag(UDAX_NO_READ_AHEAD));
    if let Some(granularity) = granularity_of(o.granularity)? {
        opts = opts.granularity(granularity);
    }
    if o.len != 0 {
        opts = opts.len(o.len);
    }
    if o.budget != 0 {
        opts = opts.budget(o.budget);
    }
    // SAFETY: the caller's promise.
    if let Some(shared) = unsafe { o.shared_budget.as_ref() } {
        opts = opts.shared_budget(&shared.budget);
    }
    if o.handler_threads != 0 {
        opts = opts.handler_threads(o.handler_threads as usize);
    }
    if flag(UDAX_IN_THREAD) {
        opts = opts.resolution(Resolution::InThread);
    }
    if flag(UDAX_ASYNC_DIRTY) {
        opts = opts.dirty_tracking(DirtyTracking::Async);
    }
    let address = o.address as usize;
    if address != 0 {
        opts = if flag(UDAX_FIXED_REPLACE) {
            // SAFETY: the C caller asked for MAP_FIXED over its own range, as with mmap.
            unsafe { opts.address_replacing(address) }
        } else {
            opts.address(address)
        };
    }
    Ok((opts, flag(UDAX_READ_ONLY)))
}

/// Maps `store` and hands the handle to `*out`.
///
/// # Safety
/// `out` is valid for a write of a pointer.
unsafe fn map_into(
    store: FileStore,
    options: Options,
    out: *mut *mut UdaxMap,
) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::new(libc::EINVAL, "out is NULL"));
    }
    let mapping = Mapping::new(Arc::new(store), options)?;
    let handle = Box::into_raw(Box::new(UdaxMap { mapping }));
    // SAFETY: checked non-NULL; the caller's promise of validity.
    unsafe { out.write(handle) };
    Ok(())
}

/// `int udax_map_path(const char *path, const struct udax_options *opts, struct udax_map **out)`
///
/// # Safety
/// `path` is a NUL-terminated string; `opts` NULL or valid; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn udax_map_path(
    path: *const c_char,
    options: *const UdaxOptions,
    out: *mut *mut UdaxMap,
) -> c_int {
    guard_status(|| {
        if path.is_null() {
            return Err(Failure::new(libc::EINVAL, "path is NULL"));
        }
        // SAFETY: the caller's promise.
        let path = unsafe { CStr::from_ptr(path) };
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path.to_bytes()));
        // SAFETY: the caller's promise.
        let (options, read_only) = unsafe { options_from(options)? };
        let store = if read_only {
            let file = std::fs::File::open(path).map_err(|e| open_failure(path, e))?;
            FileStore::from_fd(OwnedFd::from(file))?
        } else {
            FileStore::open(path)?
        };
        // SAFETY: the caller's promise.
        unsafe { map_into(store, options, out) }
    })
}

/// Turns an open error into a failure naming the path.
fn open_failure(path: &std::path::Path, e: std::io::Error) -> Failure {
    Failure::new(io_errno(&e), format!("cannot open {}: {e}", path.display()))
}

/// `int udax_map_fd(int fd, const struct udax_options *opts, struct udax_map **out)`:
/// the caller keeps `fd` (udax maps a duplicate of it).
///
/// # Safety
/// `opts` NULL or valid; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn udax_map_fd(
    fd: c_int,
    options: *const UdaxOptions,
    out: *mut *mut UdaxMap,
) -> c_int {
    guard_status(|| {
        let store = FileStore::from_fd(dup_fd(fd)?)?;
        // SAFETY: the caller's promise.
        let (options, _) = unsafe { options_from(options)? };
        // SAFETY: the caller's promise.
        unsafe { map_into(store, options, out) }
    })
}

/// A duplicate of the caller's descriptor (EBADF if it is not open).
pub fn dup_fd(fd: c_int) -> Result<OwnedFd, Failure> {
    // SAFETY: F_GETFD only checks that `fd` is open; it touches no memory.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(Failure::new(libc::EBADF, format!("fd {fd} is not open")));
    }
    // SAFETY: `fd` was just found open; it is borrowed only for the duplication.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed
        .try_clone_to_owned()
        .map_err(|e| Failure::new(io_errno(&e), e.to_string()))
}

/// The mapping behind a handle.
///
/// # Safety
/// `map` is NULL or a live handle.
unsafe fn mapping<'a>(map: *const UdaxMap) -> Result<&'a Mapping, Failure> {
    // SAFETY: the caller's promise.
    unsafe { map.as_ref() }
        .map(|m| &m.mapping)
        .ok_or_else(|| Failure::new(libc::EINVAL, "the udax_map is NULL"))
}

/// `void *udax_addr(const struct udax_map *map)`: the first byte (NULL for NULL).
///
/// # Safety
/// `map` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn udax_addr(map: *const UdaxMap) -> *mut c_void {
    guard(std::ptr::null_mut(), || {
        // SAFETY: the caller's promise.
        let mapping = unsafe { mapping(map)? };
        Ok(mapping.as_ptr().cast())
    })
}

/// `size_t udax_len(const struct udax_map *map)`: its length (0 for NULL).
///
/// # Safety
/// `map` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn udax_len(map: *const UdaxMap) -> usize {
    // SAFETY: the caller's promise.
    guard(0, || Ok(unsafe { mapping(map)? }.len()))
}

/// `int udax_flush(struct udax_map *map)`: writes back every dirty page, then fsync.
///
/// # Safety
/// `map` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn udax_flush(map: *mut UdaxMap) -> c_int {
    // SAFETY: the caller's promise.
    guard_status(|| Ok(unsafe { mapping(map)? }.flush()?))
}

/// `int udax_prefault(struct udax_map *map, size_t offset, size_t len, int write)`.
///
/// # Safety
/// `map` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn udax_prefault(
    map: *mut UdaxMap,
    offset: usize,
    len: usize,
    write: c_int,
) -> c_int {
    // SAFETY: the caller's promise.
    guard_status(|| Ok(unsafe { mapping(map)? }.prefault(offset, len, write != 0)?))
}

/// `int udax_stats(const struct udax_map *map, struct udax_stats *out)`.
///
/// # Safety
/// `map` is NULL or a live handle; `out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn udax_stats(map: *const UdaxMap, out: *mut UdaxStats) -> c_int {
    guard_status(|| {
        // SAFETY: the caller's promise.
        let stats = UdaxStats::from(unsafe { mapping(map)? }.stats());
        // SAFETY: the caller's promise.
        let out =
            unsafe { out.as_mut() }.ok_or_else(|| Failure::new(libc::EINVAL, "out is NULL"))?;
        *out = stats;
        Ok(())
    })
}

/// `int udax_stat(const struct udax_map *map, const char *name, uint64_t *out)`: one
/// counter by its Rust name (`udax::Stats::fields`), every counter the library has, also
/// those newer than `struct udax_stats`, whose layout stays fixed. `-ENOENT` for a name
/// the library does not count.
///
/// # Safety
/// `map` is NULL or a live handle; `name` NULL or a NUL-terminated string; `out` NULL or
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn udax_stat(
    map: *const UdaxMap,
    name: *const c_char,
    out: *mut u64,
) -> c_int {
    guard_status(|| {
        // SAFETY: the caller's promise.
        let stats = unsafe { mapping(map)? }.stats();
        if name.is_null() {
            return Err(Failure::new(libc::EINVAL, "name is NULL"));
        }
        // SAFETY: the caller's promise.
        let name = unsafe { CStr::from_ptr(name) }.to_bytes();
        // SAFETY: the caller's promise.
        let out =
            unsafe { out.as_mut() }.ok_or_else(|| Failure::new(libc::EINVAL, "out is NULL"))?;
        let (_, value) = stats
            .fields()
            .into_iter()
            .find(|(field, _)| field.as_bytes() == name)
            .ok_or_else(|| {
                let name = String::from_utf8_lossy(name);
                let hint = "udax_stat takes a udax::Stats field name, e.g. \"write_faults\"";
                Failure::new(libc::ENOENT, format!("no counter named {name:?} ({hint})"))
            })?;
        *out = value;
        Ok(())
    })
}

/// `int udax_unmap(struct udax_map *map)`: flushes, stops, unmaps and frees the handle
/// (always, even when the flush fails: its error is returned).
///
/// # Safety
/// `map` is NULL or a live handle, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn udax_unmap(map: *mut UdaxMap) -> c_int {
    guard_status(|| {
        if map.is_null() {
            return Err(Failure::new(libc::EINVAL, "the udax_map is NULL"));
        }
        // SAFETY: the caller hands the handle back; it came from Box::into_raw.
        let handle = unsafe { Box::from_raw(map) };
        Ok(handle.mapping.close()?)
    })
}

/// `int udax_budget_new(uint64_t bytes, struct udax_budget **out)`.
///
/// # Safety
/// `out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn udax_budget_new(bytes: u64, out: *mut *mut UdaxBudget) -> c_int {
    guard_status(|| {
        if out.is_null() {
            return Err(Failure::new(libc::EINVAL, "out is NULL"));
        }
        let budget = SharedBudget::new(bytes)?;
        // SAFETY: checked non-NULL; the caller's promise.
        unsafe { out.write(Box::into_raw(Box::new(UdaxBudget { budget }))) };
        Ok(())
    })
}

/// `void udax_budget_free(struct udax_budget *budget)`: mappings holding it keep it.
///
/// # Safety
/// `budget` is NULL or a live handle, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn udax_budget_free(budget: *mut UdaxBudget) {
    guard((), || {
        if !budget.is_null() {
            // SAFETY: the caller hands it back; it came from Box::into_raw.
            drop(unsafe { Box::from_raw(budget) });
        }
        Ok(())
    })
}

/// `uint64_t udax_budget_resident_pages(const struct udax_budget *budget)`.
///
/// # Safety
/// `budget` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn udax_budget_resident_pages(budget: *const UdaxBudget) -> u64 {
    guard(0, || {
        // SAFETY: the caller's promise.
        let budget = unsafe { budget.as_ref() };
        Ok(budget.map_or(0, |b| b.budget.resident_pages()))
    })
}

/// `uint64_t udax_budget_peak_pages(const struct udax_budget *budget)`.
///
/// # Safety
/// `budget` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn udax_budget_peak_pages(budget: *const UdaxBudget) -> u64 {
    guard(0, || {
        // SAFETY: the caller's promise.
        let budget = unsafe { budget.as_ref() };
        Ok(budget.map_or(0, |b| b.budget.peak_pages()))
    })
}

/// `const char *udax_strerror(int err)`: the message of this thread's last failure if it
/// returned `err`, else the system's text for the errno. Valid until the thread's next
/// udax call.
#[unsafe(no_mangle)]
pub extern "C" fn udax_strerror(err: c_int) -> *const c_char {
    guard(std::ptr::null(), || Ok(message_for(err)))
}

/// `const char *udax_version(void)`.
#[unsafe(no_mangle)]
pub extern "C" fn udax_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
