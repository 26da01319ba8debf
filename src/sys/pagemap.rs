//! PAGEMAP_SCAN on /proc/self/pagemap: ask the kernel what each page of a range is
//! (present, written since write-protected, the shared zero page), and optionally
//! write-protect the pages it reports in the same walk.
//!
//! Used to close the zero-page window (DESIGN.md, section 7,
//! hard part 2) and by asynchronous dirty
//! tracking. At most [`MAX_REGIONS`] output slots a call: with more, the kernel can report
//! a walk end before regions it already returned (DESIGN.md, section 9).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use crate::sys::per_process::PerProcess;
use crate::sys::uffd::{UffdError, check};
use crate::sys::uffd_abi as abi;

pub(crate) use abi::PageRegion;

/// Page categories (`PAGE_IS_*`).
pub(crate) mod category {
    pub(crate) use crate::sys::uffd_abi::{
        PAGE_IS_HUGE as HUGE, PAGE_IS_PFNZERO as PFNZERO, PAGE_IS_PRESENT as PRESENT,
        PAGE_IS_SWAPPED as SWAPPED, PAGE_IS_WRITTEN as WRITTEN,
    };
}

/// Most output regions udax asks for in one call.
pub(crate) const MAX_REGIONS: usize = 512;

/// Output slots [`Pagemap::for_each_region`] uses a call (kept on the stack).
const BATCH: usize = 64;

/// What to look for in a scan.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Query {
    /// Pages must have all of these categories.
    pub(crate) required: u64,
    /// Categories reported back in each region.
    pub(crate) reported: u64,
    /// Pages must have none of these categories.
    pub(crate) excluded: u64,
}

/// Why opening /proc/self/pagemap failed with `error`, and the way out, where known. A
/// process that changed its user or group ids (setuid(2)) is not dumpable, and the kernel
/// then gives its /proc files to root and lets only CAP_SYS_PTRACE read its pagemap.
fn denial_reason(error: &std::io::Error) -> &'static str {
    let denied = matches!(error.raw_os_error(), Some(libc::EACCES | libc::EPERM));
    // SAFETY: PR_GET_DUMPABLE takes no pointer and returns the flag.
    let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
    match (denied, dumpable) {
        (true, 0) => {
            ": this process is not dumpable (it changed its user or group ids, e.g. with \
             setuid(2), or runs a set-user-ID program), so the kernel lets only root with \
             CAP_SYS_PTRACE read its pagemap; call prctl(PR_SET_DUMPABLE, 1) after \
             changing ids and before mapping"
        }
        (true, _) => ": udax reads this process's page tables through it (PAGEMAP_SCAN)",
        _ => ": is /proc mounted? udax reads page tables through it (PAGEMAP_SCAN)",
    }
}

/// An open /proc/self/pagemap.
#[derive(Debug)]
pub(crate) struct Pagemap {
    file: File,
}

impl Pagemap {
    /// This process's /proc/self/pagemap, opened once and shared by every region (one fd
    /// for any number of mappings). The file acts on the memory of the process that
    /// opened it, so a forked child opens its own.
    pub(crate) fn shared() -> Result<Arc<Pagemap>, UffdError> {
        static SHARED: PerProcess<Arc<Pagemap>> = PerProcess::new();
        SHARED.get_or_make(|| Pagemap::open().map(Arc::new))
    }

    /// Opens /proc/self/pagemap.
    pub(crate) fn open() -> Result<Pagemap, UffdError> {
        let file = File::open("/proc/self/pagemap").map_err(|source| {
            let why = denial_reason(&source);
            UffdError::Pagemap { source, why }
        })?;
        Ok(Pagemap { file })
    }

    /// Scans `start..end`, filling `out` (at most [`MAX_REGIONS`] used) with the matching
    /// regions; with `protect`, write-protects the matching pages in the same walk
    /// (PM_SCAN_WP_MATCHING, for pages of a WP_ASYNC userfaultfd). Returns the regions
    /// filled and where the walk stopped (`end` when done).
    ///
    /// # Safety
    /// With `protect`, the caller owns the range, as for `Uffd::writeprotect` (see
    /// `sys::uffd`). Without, the walk only reads page tables: nothing to promise.
    pub(crate) unsafe fn scan(
        &self,
        start: usize,
        end: usize,
        query: Query,
        protect: bool,
        out: &mut [PageRegion],
    ) -> Result<(usize, usize), UffdError> {
        let slots = out.len().min(MAX_REGIONS);
        let mut flags = 0;
        if protect {
            flags |= abi::PM_SCAN_WP_MATCHING | abi::PM_SCAN_CHECK_WPASYNC;
        }
        let mut arg = abi::PmScanArg {
            size: size_of::<abi::PmScanArg>() as u64,
            flags,
            start: start as u64,
            end: end as u64,
            vec: out.as_mut_ptr() as u64,
            vec_len: slots as u64,
            category_mask: query.required | query.excluded,
            category_inverted: query.excluded,
            return_mask: query.reported | query.required,
            ..Default::default()
        };
        // SAFETY: PAGEMAP_SCAN reads and writes a `struct pm_scan_arg` (`arg`) and writes at
        // most `vec_len` page regions to `vec`, which points at `slots` slots of `out`.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), abi::PAGEMAP_SCAN, &mut arg) };
        check("PAGEMAP_SCAN", ret)?;
        Ok((ret as usize, arg.walk_end as usize))
    }

    /// Calls `visit` with every region of `start..end` that matches `query`, in ascending
    /// order, scanning in batches of a few slots (no allocation). Stops at the first error.
    pub(crate) fn for_each_region(
        &self,
        start: usize,
        end: usize,
        query: Query,
        mut visit: impl FnMut(&PageRegion),
    ) -> Result<(), UffdError> {
        let mut out = [PageRegion::default(); BATCH];
        let mut at = start;
        while at < end {
            // SAFETY: a read-only walk (no protection).
            let (found, walk_end) = unsafe { self.scan(at, end, query, false, &mut out)? };
            out[..found].iter().for_each(&mut visit);
            // A full batch may stop the walk early; an empty one ends it (walk_end = end).
            if walk_end <= at {
                break;
            }
            at = walk_end;
        }
        Ok(())
    }

    /// Whether `start..start+len` is mapped by one present transparent huge page; with
    /// `zero_page`, by the kernel's huge zero page (a PMD whose pfn is the huge zero pfn).
    pub(crate) fn is_huge(
        &self,
        start: usize,
        len: usize,
        zero_page: bool,
    ) -> Result<bool, UffdError> {
        let mut out = [PageRegion::default(); 1];
        let zero = if zero_page { category::PFNZERO } else { 0 };
        let query = Query {
            required: category::PRESENT | category::HUGE | zero,
            ..Query::default()
        };
        // SAFETY: a read-only walk (no protection).
        let (found, _) = unsafe { self.scan(start, start + len, query, false, &mut out)? };
        Ok(found == 1 && out[0].start == start as u64 && out[0].end == (start + len) as u64)
    }

    /// Whether the page at `address` maps the shared zero page.
    #[cfg(test)]
    fn is_zero_page(&self, address: usize) -> Result<bool, UffdError> {
        self.page_is(address, category::PFNZERO)
    }

    /// Whether the page at `address` holds a non-present, non-empty entry: for udax's
    /// anonymous memory without swap use, a UFFDIO_POISON marker.
    pub(crate) fn is_marker(&self, address: usize) -> Result<bool, UffdError> {
        self.page_is(address, category::SWAPPED)
    }

    /// Whether the page at `address` has every category of `categories`.
    fn page_is(&self, address: usize, categories: u64) -> Result<bool, UffdError> {
        let mut out = [PageRegion::default(); 1];
        let query = Query {
            required: categories,
            ..Query::default()
        };
        let end = address + crate::PAGE_SIZE;
        // SAFETY: a read-only walk (no protection).
        let (found, _) = unsafe { self.scan(address, end, query, false, &mut out)? };
        Ok(found == 1)
    }
}

impl From<io::Error> for UffdError {
    fn from(source: io::Error) -> Self {
        UffdError::Ioctl {
            op: "pagemap",
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh private anonymous mapping of `len` bytes (the tests unmap it).
    fn anonymous(len: usize) -> usize {
        // SAFETY: a new mapping at an address of the kernel's choosing, checked against
        // MAP_FAILED; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        base as usize
    }

    /// An anonymous page read (zero pfn) versus written (a private page).
    #[test]
    fn tells_the_zero_page_from_a_written_one() {
        let len = 2 * crate::PAGE_SIZE;
        let base = anonymous(len) as *mut u8;
        // SAFETY: both pages lie inside the mapping made above.
        unsafe {
            std::ptr::read_volatile(base);
            std::ptr::write_volatile(base.add(crate::PAGE_SIZE), 1);
        }
        let pagemap = Pagemap::open().expect("open pagemap");
        assert!(pagemap.is_zero_page(base as usize).expect("scan"));
        assert!(
            !pagemap
                .is_zero_page(base as usize + crate::PAGE_SIZE)
                .expect("scan")
        );
        // SAFETY: unmapping the mapping made above; nothing references it any more.
        assert_eq!(unsafe { libc::munmap(base.cast(), len) }, 0);
    }

    /// Zero pages alternating with written ones: more regions than one batch holds, each
    /// visited once, in order.
    #[test]
    fn for_each_region_walks_past_a_full_batch() {
        let pages = 4 * BATCH;
        let len = pages * crate::PAGE_SIZE;
        let base = anonymous(len);
        for page in 0..pages {
            let at = (base + page * crate::PAGE_SIZE) as *mut u8;
            // SAFETY: every page lies inside the mapping made above.
            unsafe {
                match page % 2 {
                    0 => drop(std::ptr::read_volatile(at)),
                    _ => std::ptr::write_volatile(at, 1),
                }
            }
        }
        let pagemap = Pagemap::open().expect("open pagemap");
        let query = Query {
            required: category::PFNZERO,
            ..Query::default()
        };
        let mut zero = Vec::new();
        pagemap
            .for_each_region(base, base + len, query, |r| {
                zero.push((r.start as usize - base) / crate::PAGE_SIZE)
            })
            .expect("scan");
        assert_eq!(zero, (0..pages).step_by(2).collect::<Vec<_>>());
        assert!(!pagemap.is_huge(base, len, false).expect("scan"));
        // SAFETY: unmapping the mapping made above; nothing references it any more.
        assert_eq!(unsafe { libc::munmap(base as *mut libc::c_void, len) }, 0);
    }
}
