//! The kernel baseline: mmap(MAP_SHARED, PROT_READ|PROT_WRITE) of the store file, the
//! kernel's own page cache and fault paths, `msync(MS_SYNC)` where udax flushes.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use udax::Stats;

use crate::engine::{Engine, Region};
use crate::error::CliError;

/// A MAP_SHARED mapping of the first `len` bytes of a file; unmapped on drop.
pub struct KernelMap {
    /// Start of the mapping (never MAP_FAILED: checked in `new`).
    ptr: *mut u8,
    len: usize,
}

impl KernelMap {
    /// Maps the first `len` bytes (a page multiple, at most the file's size) of `file`.
    /// The mapping keeps its own reference to the file: `file` may be closed after.
    pub fn new(file: &File, len: usize) -> io::Result<KernelMap> {
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL) aliases no Rust memory;
        // the fd is open for the duration of the call; the result is checked against
        // MAP_FAILED before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(KernelMap {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Engine for KernelMap {
    fn region(&self) -> Region {
        // SAFETY: ptr..ptr+len is our read-write mapping, page-aligned (mmap), and stays
        // mapped until self is dropped, which outlives every borrow of self.
        unsafe { Region::new(self.ptr, self.len) }
    }

    fn flush(&self) -> Result<(), CliError> {
        // SAFETY: the range is exactly our live mapping.
        let rc = unsafe { libc::msync(self.ptr.cast(), self.len, libc::MS_SYNC) };
        if rc != 0 {
            return Err(CliError::failed(
                "msync of the kernel mapping",
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    fn counters(&self) -> Option<Stats> {
        None
    }

    fn maps_page_cache(&self) -> bool {
        true
    }
}

impl Drop for KernelMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no Region of it outlives self
        // (regions are only used while the engine is borrowed).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
