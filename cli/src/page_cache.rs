//! How much of a file the page cache holds: cachestat(2) (Linux 6.5+), else mincore(2)
//! over a fresh read-only mapping of the file.
//!
//! The bench adds this to the mapping's Rss to get what a udax mapping costs the machine:
//! udax reads the store through the page cache (buffered pread, read-around), so the
//! file's cached pages come on top of the mapping's own memory.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use crate::engine::PAGE;

/// cachestat(2)'s number on x86_64 and aarch64 (the libc crate has no constant for it).
const SYS_CACHESTAT: libc::c_long = 451;

/// `struct cachestat_range` of <linux/mman.h>.
#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

/// `struct cachestat` of <linux/mman.h>.
#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// Bytes of `file`'s first `len` bytes that are in the page cache.
pub fn cached_bytes(file: &File, len: u64) -> io::Result<u64> {
    match cachestat(file, len) {
        Ok(pages) => Ok(pages * PAGE as u64),
        // ENOSYS: a kernel before 6.5 (or a filter refusing it); count with mincore.
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => mincore(file, len),
        Err(e) => Err(e),
    }
}

/// Pages of `0..len` of `file` in the page cache, by cachestat(2).
fn cachestat(file: &File, len: u64) -> io::Result<u64> {
    let range = CachestatRange { off: 0, len };
    let mut stat = Cachestat::default();
    // SAFETY: cachestat reads `range` and writes `stat`, both live, properly laid out
    // (#[repr(C)] copies of the kernel's structs) and exclusively ours for the call; the
    // fd is open while `file` is borrowed.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.nr_cache)
}

/// Bytes of `0..len` of `file` in the page cache, by mincore(2) over a read-only mapping
/// of the file (made and unmapped here; mapping does not fault anything in).
fn mincore(file: &File, len: u64) -> io::Result<u64> {
    let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    if len == 0 {
        return Ok(0);
    }
    // SAFETY: a fresh shared read-only mapping chosen by the kernel aliases no Rust memory;
    // the fd is open for the call; the result is checked against MAP_FAILED before use.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let mut vector = vec![0u8; len.div_ceil(PAGE)];
    // SAFETY: `ptr..ptr + len` is the mapping made above and `vector` has one byte per
    // page of it, as mincore requires.
    let rc = unsafe { libc::mincore(ptr, len, vector.as_mut_ptr()) };
    let error = io::Error::last_os_error();
    // SAFETY: unmaps exactly the mapping made above; nothing refers to it.
    unsafe { libc::munmap(ptr, len) };
    if rc != 0 {
        return Err(error);
    }
    let resident = vector.iter().filter(|&&b| b & 1 != 0).count();
    Ok((resident * PAGE) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn cachestat_and_mincore_see_written_pages() {
        let file = tempfile::tempfile().expect("temporary file");
        file.write_all_at(&vec![1u8; 16 * PAGE], 0).expect("write");
        // Just written (buffered): all 16 pages cached, by either count.
        assert_eq!(
            cached_bytes(&file, 16 * PAGE as u64).expect("cached"),
            16 * PAGE as u64
        );
        assert_eq!(
            mincore(&file, 16 * PAGE as u64).expect("mincore"),
            16 * PAGE as u64
        );
        assert_eq!(
            cached_bytes(&file, 4 * PAGE as u64).expect("cached"),
            4 * PAGE as u64
        );
    }
}
