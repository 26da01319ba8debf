//! What a workload runs against: a mapped region plus a way to flush it.
//!
//! Both the udax mapping and the kernel's MAP_SHARED baseline are an [`Engine`]; the
//! workloads only see a [`Region`] (pointer and length) and call [`Engine::flush`] where
//! the workload makes the data durable.

use udax::Stats;

use crate::error::CliError;

/// The page size workloads step by.
pub const PAGE: usize = udax::PAGE_SIZE;

/// The two engines, by the names the reports use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EngineKind {
    /// udax: faults served in user space.
    Udax,
    /// The kernel's own mmap(MAP_SHARED) of the same file.
    Kernel,
}

impl EngineKind {
    /// The name in reports: "udax" or "kernel".
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Udax => "udax",
            EngineKind::Kernel => "kernel",
        }
    }
}

/// A mapped, readable and writable range of `pages` 4 KiB pages.
///
/// Invariant: `ptr..ptr + pages * PAGE` stays mapped read-write for as long as the engine
/// that handed the region out is alive; workloads only use a region while they borrow
/// that engine.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    ptr: *mut u8,
    pages: usize,
}

// SAFETY: a Region is an address range of shared memory; the workloads hand each thread a
// disjoint share of its pages and only use volatile single-word accesses, and the engine
// keeps the range mapped while the threads run (they are scoped inside the borrow).
unsafe impl Send for Region {}
// SAFETY: as for Send: concurrent users touch disjoint pages through raw pointers only.
unsafe impl Sync for Region {}

impl Region {
    /// A region of `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr + len` must be mapped readable and writable, page-aligned, and stay so
    /// until the owner that hands out the region is dropped.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Region {
        debug_assert_eq!(ptr as usize % PAGE, 0);
        Region {
            ptr,
            pages: len / PAGE,
        }
    }

    /// Number of 4 KiB pages.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Address of the first byte.
    pub fn addr(&self) -> usize {
        self.ptr as usize
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.pages * PAGE
    }

    /// Reads the first byte of page `page` (a load the compiler cannot drop).
    pub fn read_page(&self, page: usize) -> u8 {
        assert!(page < self.pages, "page {page} outside the region");
        // SAFETY: the offset lies inside the region (checked above), which is mapped
        // readable while its engine lives (the type's invariant); u8 has no alignment.
        unsafe { std::ptr::read_volatile(self.ptr.add(page * PAGE)) }
    }

    /// Reads all 4 KiB of page `page` (volatile 8-byte loads) and returns their xor.
    pub fn read_whole_page(&self, page: usize) -> u64 {
        assert!(page < self.pages, "page {page} outside the region");
        // SAFETY: the page lies inside the region (checked above), which is mapped readable
        // while its engine lives; a page start is 8-byte aligned (the region is page-aligned).
        let words = unsafe { self.ptr.add(page * PAGE).cast::<u64>() };
        (0..PAGE / 8).fold(0, |acc, i| {
            // SAFETY: `i < PAGE / 8`, so the word lies inside the page.
            acc ^ unsafe { std::ptr::read_volatile(words.add(i)) }
        })
    }

    /// Writes `value` as the first 8 bytes of page `page` (a store the compiler cannot drop).
    pub fn write_page(&self, page: usize, value: u64) {
        assert!(page < self.pages, "page {page} outside the region");
        // SAFETY: the offset lies inside the region (checked above), which is mapped
        // writable while its engine lives; a page start is 8-byte aligned because the
        // region is page-aligned. Other threads only touch other pages.
        unsafe { std::ptr::write_volatile(self.ptr.add(page * PAGE).cast::<u64>(), value) }
    }
}

/// A mapped store a workload can run on.
pub trait Engine {
    /// The mapped range.
    fn region(&self) -> Region;

    /// Makes every write so far durable: udax `Mapping::flush`, kernel `msync(MS_SYNC)`.
    fn flush(&self) -> Result<(), CliError>;

    /// The udax counters so far (None for the kernel).
    fn counters(&self) -> Option<Stats>;

    /// Whether the mapping's resident pages are the store file's page cache itself (the
    /// kernel's MAP_SHARED), rather than memory of its own beside it (udax).
    fn maps_page_cache(&self) -> bool;
}
