//! Direct I/O: a large read the page cache does not hold, and a large write, go around it.
//!
//! A 2 MiB data fault reads its whole range into a buffer it then moves into the mapping.
//! Through the page cache that read costs the kernel a page-cache allocation and a 2 MiB
//! copy, and leaves a second copy of the range in the cache, on top of the mapping's own
//! (`scripts/direct-io-probe.py`, cold random 2 MiB reads of 1 GiB: 954-1,488 ns of CPU
//! a page buffered against 153-229 direct, and 3,377-3,898 ns of wall against
//! 2,593-2,724). A writeback of a 2 MiB run is the same copy the other way, and leaves
//! the run cached twice until the kernel writes it back (the same probe writing 1 GiB in
//! 2 MiB `pwrite`s, then `fdatasync`: 2,294-14,657 ns a page buffered, 1,877-2,011
//! direct; CPU 916-12,817 against 191-305). So such reads and writes go through a
//! second descriptor of the same file, opened with O_DIRECT (read-write if the store's
//! is), when:
//!
//! - they are at least [`DIRECT_MIN`] long, and offset, length and buffer are
//!   page-aligned (O_DIRECT's rule, at the strictest block size a file system asks);
//! - a read does not continue the last read: a sequential run is read ahead into the page
//!   cache (`file_ahead`), and a direct read there would read the same bytes twice;
//! - the page cache holds none of a read's range (`cachestat(2)`): a cached page is read
//!   from memory, and a dirty one would first be written back by the direct read;
//! - fewer than half the pages of a write's range are dirty in the cache: the direct
//!   write first writes those back, which costs nothing much for the one page a 2 MiB
//!   write fault allocated (by writing zeros through the cache), but writes the range
//!   twice where the faults allocated every page (4 KiB faults); there the buffered write
//!   overwrites the dirty zeros in the cache, and the range reaches the disk once.
//!
//! Coherence: the kernel writes back any dirty cached page of the range before a direct
//! read or write (so a store's own buffered write racing the `cachestat` is still read),
//! a direct read leaves the cache alone, and a direct write drops the cached pages of its
//! range, before and after it, so no later read sees the old bytes. Durability is the
//! store's `sync` as before: `fdatasync` makes the file's data durable whichever of its
//! descriptors wrote it, and a direct write's I/O error is the `pwrite`'s own. Anything
//! unexpected (a file system without O_DIRECT, a kernel without cachestat, an odd
//! alignment, a short read at a shrunk end, an I/O error) sends the call down the
//! buffered path, which reports errors as before; the first two turn direct I/O off for
//! the store. All of it is signal-safe (system calls and atomics): in-thread resolution
//! reads from a signal handler.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crate::PAGE_SIZE;

/// The shortest read or write that goes direct: a 2 MiB fault's, and the longest
/// writeback run. Shorter (4 KiB, 64 KiB) reads gain from the cache: a random one reads
/// the 128 KiB around it there, for its neighbours.
const DIRECT_MIN: usize = crate::HUGE_PAGE_SIZE;

/// The O_DIRECT descriptor of a store's file, if it has one.
#[derive(Debug)]
pub(crate) struct DirectIo {
    /// The same file, reopened with O_DIRECT; `None` where that failed.
    direct: Option<File>,
    /// Whether `direct` was opened for writing (the store's descriptor is).
    writable: bool,
    /// Set when the file system or the kernel turned out unable (EINVAL, ENOSYS).
    off: AtomicBool,
}

impl DirectIo {
    /// Reopens `file` with O_DIRECT, through `/proc/self/fd` (the same open file, even
    /// unlinked), for writing only if `file` was opened for writing: reopening by path
    /// checks the file's permissions, not the descriptor's, so a read-only store's could
    /// otherwise write. Without it (no /proc, a file system refusing O_DIRECT) reads and
    /// writes stay buffered.
    pub(crate) fn open(file: &File) -> DirectIo {
        let path = format!("/proc/self/fd/{}", file.as_raw_fd());
        // SAFETY: F_GETFL on a descriptor `file` owns, borrowed for the call; no memory.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        let writable = flags >= 0 && flags & libc::O_ACCMODE == libc::O_RDWR;
        let reopen = |write: bool| {
            OpenOptions::new()
                .read(true)
                .write(write)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
                .ok()
        };
        let (direct, writable) = match writable.then(|| reopen(true)).flatten() {
            Some(direct) => (Some(direct), true),
            None => (reopen(false), false),
        };
        DirectIo {
            direct,
            writable,
            off: AtomicBool::new(false),
        }
    }

    /// Whether a call with `offset` and `buf` may go direct: long and aligned enough, and
    /// direct I/O is not off.
    fn fits(&self, offset: u64, buf: &[u8]) -> bool {
        let aligned = |n: usize| n % PAGE_SIZE == 0;
        buf.len() >= DIRECT_MIN
            && aligned(buf.len())
            && aligned(buf.as_ptr() as usize)
            && offset % PAGE_SIZE as u64 == 0
            && !self.off.load(Relaxed)
    }

    /// Whether the file could be reopened with O_DIRECT (and no read has said since that
    /// direct reads cannot work).
    #[cfg(test)]
    pub(crate) fn available(&self) -> bool {
        self.direct.is_some() && !self.off.load(Relaxed)
    }

    /// Whether writes can go direct (the reopened descriptor is writable).
    #[cfg(test)]
    pub(crate) fn writes_available(&self) -> bool {
        self.available() && self.writable
    }

    /// Reads `buf` from `offset` around the page cache of `file` if the rules of the module
    /// doc allow (`cached_ahead`: the read continues a run the store reads ahead into the
    /// cache). Returns whether it did; if not, `buf` holds nothing meaningful and the
    /// caller reads it buffered.
    pub(crate) fn read(
        &self,
        file: &File,
        offset: u64,
        buf: &mut [u8],
        cached_ahead: bool,
    ) -> bool {
        let Some(direct) = self.direct.as_ref() else {
            return false;
        };
        if cached_ahead || !self.fits(offset, buf) {
            return false;
        }
        let len = buf.len() as u64;
        self.done(cache_stat(file, offset, len).map(|stat| stat.cached == 0))
            && self.done(direct.read_exact_at(buf, offset).map(|()| true))
    }

    /// Writes `buf` at `offset` around the page cache if the rules of the module doc
    /// allow. Returns whether it did; if not (or only in part), the caller writes it
    /// buffered, which reports any error.
    pub(crate) fn write(&self, file: &File, offset: u64, buf: &[u8]) -> bool {
        let Some(direct) = self.direct.as_ref().filter(|_| self.writable) else {
            return false;
        };
        if !self.fits(offset, buf) {
            return false;
        }
        let (len, pages) = (buf.len() as u64, (buf.len() / PAGE_SIZE) as u64);
        self.done(cache_stat(file, offset, len).map(|stat| stat.unwritten < pages / 2))
            && self.done(direct.write_all_at(buf, offset).map(|()| true))
    }

    /// The answer of a step of a direct call, false if it failed; a failure turns direct
    /// I/O off for good if it says this file or kernel cannot do it (EINVAL, ENOSYS).
    fn done(&self, result: io::Result<bool>) -> bool {
        match result {
            Ok(answer) => answer,
            Err(e) => {
                if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
                    self.off.store(true, Relaxed);
                }
                false
            }
        }
    }
}

/// cachestat(2)'s number on x86_64 and aarch64 (the libc crate names none yet).
const SYS_CACHESTAT: libc::c_long = 451;

/// What the page cache holds of a range of a file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CacheStat {
    /// Pages cached.
    pub(crate) cached: u64,
    /// Pages cached and not yet on the disk: dirty, or being written back.
    pub(crate) unwritten: u64,
}

/// What the page cache holds of `offset..offset + len` of `file`, by cachestat(2) (Linux
/// 6.5+; ENOSYS before).
pub(crate) fn cache_stat(file: &File, offset: u64, len: u64) -> io::Result<CacheStat> {
    /// `struct cachestat_range` of <linux/mman.h>.
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    /// `struct cachestat` of <linux/mman.h>: cached, dirty, writeback, evicted and
    /// recently evicted pages.
    #[repr(C)]
    struct Stat([u64; 5]);
    let range = Range { off: offset, len };
    let mut stat = Stat([0; 5]);
    // SAFETY: cachestat reads `range` and writes `stat`, both live and laid out as the
    // kernel's structs (#[repr(C)]), exclusively ours for the call; the fd belongs to
    // `file`, borrowed for the whole call.
    let ret = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(CacheStat {
        cached: stat.0[0],
        unwritten: stat.0[1] + stat.0[2],
    })
}
