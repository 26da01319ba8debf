//! [`Options`]: how to map a store (or serve an adopted region). The builder the front-ends
//! share; each turns it into the engine's `Config` and picks a resolution from it.

use std::time::Duration;

use crate::engine::config::{Config, DirtyTracking, Granularity};
use crate::engine::huge_slots::HugeSlots;
use crate::engine::shared_budget::SharedBudget;
use crate::resolve::Resolution;
use crate::resolve::threads;
use crate::sys::memory::Placement;

/// How to map a store. Start from `Options::default()` and chain the setters.
///
/// # Examples
///
/// ```
/// use udax::{Granularity, Options};
///
/// let options = Options::default()
///     .granularity(Granularity::FaultAround(64 << 10)) // read 64 KiB per fault
///     .budget(256 << 20);                              // at most 256 MiB resident
/// # let _ = options;
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    pub(crate) len: Option<u64>,
    /// `None`: chosen per mapping by [`Options::granularity_for`].
    pub(crate) granularity: Option<Granularity>,
    pub(crate) handler_threads: usize,
    pub(crate) budget: Option<u64>,
    pub(crate) resolution: Resolution,
    pub(crate) tracking: DirtyTracking,
    pub(crate) huge_dirty: bool,
    pub(crate) write_around: bool,
    pub(crate) huge_move: bool,
    pub(crate) huge_zero: bool,
    pub(crate) read_ahead: bool,
    pub(crate) zero_window_delay: Option<Duration>,
    pub(crate) evict_delay: Option<Duration>,
    pub(crate) user_mode_only: bool,
    pub(crate) placement: Placement,
    pub(crate) read_only: bool,
    pub(crate) shared_budget: Option<SharedBudget>,
}

/// The window of a sequential fault under a budget (`Granularity::SequentialAround`).
/// Measured, the budgeted sort of `udax bench` (1 GiB, 256 MiB budget, handler mode):
/// 3.02x the kernel at 64 KiB, 2.21-2.39x at 128 KiB, 1.88-1.99x at 256 KiB, 4.51x at
/// 512 KiB; in-thread 2.56x at 64 KiB, 2.07x at 256 KiB; rand-read-budget (random faults:
/// 4 KiB) unchanged.
const SEQUENTIAL_WINDOW: usize = 256 << 10;

impl Default for Options {
    fn default() -> Self {
        Options {
            len: None,
            granularity: None,
            handler_threads: threads::default_count(),
            budget: None,
            resolution: Resolution::HandlerThreads,
            tracking: DirtyTracking::Sync,
            huge_dirty: false,
            write_around: true,
            huge_move: true,
            huge_zero: true,
            read_ahead: true,
            zero_window_delay: None,
            evict_delay: None,
            user_mode_only: false,
            placement: Placement::Any,
            read_only: false,
            shared_budget: None,
        }
    }
}

impl Options {
    /// Maps only the first `len` bytes of the store (a multiple of 4096; default: all of it).
    pub fn len(mut self, len: u64) -> Self {
        self.len = Some(len);
        self
    }

    /// Sets the fault granularity. A fault-around window is at most 2 MiB (wider ones are
    /// served as 2 MiB).
    ///
    /// The default fits file mappings, as the kernel's own mmap does with fault-around and
    /// read-ahead: [`Granularity::Huge`] (a 2 MiB hole is one huge zero page, 2 MiB of data
    /// one read; dirty tracking stays exact at 4 KiB, a write still makes only its own
    /// page Dirty) for a mapping of this process's memory at an address the kernel
    /// chooses or at a 2 MiB-aligned one, without a budget; under a budget
    /// [`Granularity::SequentialAround`] of 256 KiB (a sequential read reads 256 KiB, a
    /// random one 4 KiB; the Rss bound of [`Options::budget`] is then 256 KiB per serving
    /// thread); [`Granularity::Page`] at an address off a 2 MiB boundary, and for another
    /// process's memory ([`Adopted`](crate::Adopted)).
    pub fn granularity(mut self, granularity: Granularity) -> Self {
        self.granularity = Some(granularity);
        self
    }

    /// The granularity a mapping with these options gets: the one set, or the default
    /// described at [`Options::granularity`]. `own_memory`: a [`Mapping`](crate::Mapping)
    /// (not an adopted region).
    pub fn granularity_for(&self, own_memory: bool) -> Granularity {
        if let Some(granularity) = self.granularity {
            return granularity;
        }
        let aligned = match self.placement {
            Placement::Any => true,
            Placement::At(address) | Placement::Replace(address) => {
                address % crate::HUGE_PAGE_SIZE == 0
            }
        };
        let budgeted = self.budget.is_some() || self.shared_budget.is_some();
        if own_memory && aligned && !budgeted {
            Granularity::Huge
        } else if own_memory && budgeted {
            Granularity::SequentialAround(SEQUENTIAL_WINDOW)
        } else {
            Granularity::Page
        }
    }

    /// Sets how many handler threads serve faults (at least 1; default: one per CPU the
    /// process may use, at most 4, each pinned to its CPU). The threads belong to a
    /// process-wide pool shared by every mapping with the same count and tracking mode
    /// (they are started by the first such mapping and live as long as the process), so
    /// they are not a per-mapping cost.
    pub fn handler_threads(mut self, threads: usize) -> Self {
        self.handler_threads = threads.max(1);
        self
    }

    /// How many handler threads these options start (the default: one per CPU the
    /// process may use, at most 4).
    pub fn handler_thread_count(&self) -> usize {
        self.handler_threads
    }

    /// Caps the mapping's resident memory at about `bytes` (default: no limit; at least
    /// 64 KiB). Past the budget, pages are evicted with a CLOCK (second chance) policy:
    /// clean ones dropped, dirty ones written back to the store first; the next access
    /// faults and reads them again. Zero pages (holes that were read) hold no memory and
    /// do not count. Rss of the mapping stays at or under the budget plus one fault's pages
    /// (one page on the 4 KiB path) per thread serving faults at once (the handler
    /// threads, or the faulting threads with in-thread resolution). Not combinable with
    /// asynchronous dirty tracking.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use udax::{Mapping, MemStore, Options};
    ///
    /// let store = Arc::new(MemStore::new(8 << 20));                   // 8 MiB
    /// let mapping = Mapping::new(store, Options::default().budget(1 << 20))?;
    /// for page in 0..2048 {
    ///     mapping.write_at(page * 4096, &[1])?;                       // all of it
    /// }
    /// let stats = mapping.stats();
    /// assert!(stats.evicted_dirty > 0);                               // written back, dropped
    /// assert!(stats.resident_pages_peak <= 256 + 4);                  // 1 MiB + a page per thread
    /// mapping.close()?;
    /// # Ok::<(), udax::Error>(())
    /// ```
    pub fn budget(mut self, bytes: u64) -> Self {
        self.budget = Some(bytes);
        self
    }

    /// Holds `budget`, shared with the other mappings given it, instead of a budget of
    /// its own ([`Options::budget`] is then ignored): their resident pages together stay at
    /// or under it, the largest mapping evicting first. Needs handler threads (refused
    /// with [`Resolution::InThread`]).
    pub fn shared_budget(mut self, budget: &SharedBudget) -> Self {
        self.shared_budget = Some(budget.clone());
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

    /// With [`Granularity::Huge`], whether a first write into a 2 MiB hole range installs
    /// the whole range writable (default true): one fault, then the other 511 pages are
    /// written with no fault at all (write-around). Dirty tracking stays exact at 4 KiB
    /// for the store: only the faulting page is allocated at the fault, and flush (or
    /// eviction) writes back the others that were written and drops those still all
    /// zero, so the store keeps its hole there (a page written with zeros only reads the
    /// same from the hole). The price: until flush, the range costs 2 MiB of memory, and a
    /// write-around page is allocated by its writeback, so a full store reports ENOSPC
    /// from flush (the pages stay dirty) rather than as the access's SIGBUS. With `false`
    /// the range is installed write-protected as zero pages and each page's first write
    /// is its own fault that allocates its block, as the kernel's 4 KiB DAX faults do.
    /// Over data, a write that continues a sequential write (the two pages before it in
    /// its range dirty) lifts the protection of the rest of the range's clean pages in
    /// the same fault; flush compares those with the store's bytes and writes only the
    /// ones that differ (the others are clean again).
    pub fn write_around(mut self, write_around: bool) -> Self {
        self.write_around = write_around;
        self
    }

    /// Accepts a user-mode-only userfaultfd where a full one cannot be had (default
    /// false). Unprivileged, with the sysctl vm.unprivileged_userfaultfd=0 and
    /// /dev/userfaultfd closed to the user, the kernel hands out only userfaultfds that
    /// never see faults taken inside the kernel: a system call (`read(2)` into the mapping,
    /// `write(2)` from it) touching a page not yet present then fails with EFAULT instead
    /// of being served. By default [`Mapping::new`](crate::Mapping::new) refuses that
    /// with [`UffdError::UserModeOnly`](crate::UffdError::UserModeOnly), whose message
    /// names the ways out; with `true` it maps, and
    /// [`Mapping::serves_kernel_access`](crate::Mapping::serves_kernel_access) says false
    /// (call [`Mapping::prefault`](crate::Mapping::prefault) before a system call).
    /// [`Resolution::InThread`] accepts such a userfaultfd without this: it never serves
    /// kernel-side faults anyway.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use udax::{Mapping, MemStore, Options};
    ///
    /// let store = Arc::new(MemStore::new(1 << 20));
    /// let mapping = Mapping::new(store, Options::default().user_mode_only(true))?;
    /// if !mapping.serves_kernel_access() {
    ///     mapping.prefault(0, 4096, false)?; // before read(2)/write(2) on that page
    /// }
    /// mapping.close()?;
    /// # Ok::<(), udax::Error>(())
    /// ```
    pub fn user_mode_only(mut self, accept: bool) -> Self {
        self.user_mode_only = accept;
        self
    }

    /// Whether a 2 MiB hole range read at 2 MiB granularity is mapped as the kernel's huge
    /// zero page (one write-protected PMD, no memory) rather than 512 zero pages. On by
    /// default, where the kernel moves it right (a release gate and a self-test decide,
    /// once per process; elsewhere the 512 zero pages serve, counted in
    /// `huge_zero_fallbacks`). Measured on a 1 GiB sparse read: 177 ns a page against
    /// 306-319 in handler mode, 62.8 against 284 in-thread (DESIGN.md, "2 MiB").
    ///
    /// ```
    /// use std::sync::Arc;
    /// use udax::{Mapping, MemStore, Options};
    ///
    /// let store = Arc::new(MemStore::new(4 << 20)); // two 2 MiB hole ranges
    /// let mapping = Mapping::new(store, Options::default().huge_zero_page(false))?;
    /// let mut byte = [1u8];
    /// mapping.read_at(0, &mut byte)?; // one fault: 512 zero pages
    /// assert_eq!(byte, [0]);
    /// assert_eq!(mapping.stats().huge_zero_faults, 0);
    /// mapping.close()?;
    /// # Ok::<(), udax::Error>(())
    /// ```
    pub fn huge_zero_page(mut self, on: bool) -> Self {
        self.huge_zero = on;
        self
    }

    /// Whether handler threads read ahead of sequential read faults, as the kernel's mmap
    /// does: once a run of faults continues (the next page, window or 2 MiB range), the
    /// handler that served it installs the rest of its 2 MiB range and the two ranges
    /// past it, each as a read fault would (data Clean and write-protected, holes as zero
    /// pages, nothing allocated), so that the run's next faults never happen. Counted in
    /// `read_ahead_ranges`. With in-thread resolution a thread of the mapping's own reads
    /// ahead, woken by the fault that continues the run. On by default; it never applies
    /// under a budget, to writes, or to another process's memory. Off, every fault reads
    /// only what its granularity says (`MADV_RANDOM`'s effect on a kernel mapping).
    /// Measured on a 1 GiB sequential read (DESIGN.md, "Read-ahead into the mapping"):
    /// 4 KiB granularity 16.9x the kernel off, 1.33x on; 64 KiB 5.8x off, 1.31x on;
    /// in-thread 4 KiB 8.6x off, 2.0x on.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use udax::{Granularity, Mapping, MemStore, Options};
    ///
    /// let store = Arc::new(MemStore::new(4 << 20));
    /// let options = Options::default()
    ///     .granularity(Granularity::Page)
    ///     .read_ahead(false);
    /// let mapping = Mapping::new(store, options)?;
    /// let mut page = vec![1u8; 4096];
    /// for offset in (0..8).map(|p| p * 4096) {
    ///     mapping.read_at(offset, &mut page)?; // one zero fault a page, in order
    /// }
    /// assert_eq!(mapping.stats().zero_faults, 8);
    /// assert_eq!(mapping.stats().read_ahead_ranges, 0);
    /// mapping.close()?;
    /// # Ok::<(), udax::Error>(())
    /// ```
    pub fn read_ahead(mut self, on: bool) -> Self {
        self.read_ahead = on;
        self
    }

    /// Testing only: never move huge pages in (UFFDIO_MOVE); the 2 MiB path then copies.
    #[doc(hidden)]
    pub fn huge_move(mut self, huge_move: bool) -> Self {
        self.huge_move = huge_move;
        self
    }

    /// Testing only: sleep this long between mapping a zero page and write-protecting it,
    /// to widen the race window the zero-pfn check closes (see `install::insert_zero_page`);
    /// the same between moving a huge page in and write-protecting it (`install::move_in`).
    #[doc(hidden)]
    pub fn zero_window_delay(mut self, delay: Duration) -> Self {
        self.zero_window_delay = Some(delay);
        self
    }

    /// Testing only: sleep this long between writing back the victims of an eviction and
    /// dropping them, with their entries locked, to widen the window a racing write must
    /// get through (see `evict::evict_range`).
    #[doc(hidden)]
    pub fn evict_delay(mut self, delay: Duration) -> Self {
        self.evict_delay = Some(delay);
        self
    }

    /// Maps at exactly `address` (a multiple of 4096; of 2 MiB with [`Granularity::Huge`])
    /// instead of an address of the kernel's choosing. Mapping fails with
    /// [`Error::Os`](crate::Error::Os) (EEXIST) if anything is mapped in the range.
    pub fn address(mut self, address: usize) -> Self {
        self.placement = Placement::At(address);
        self
    }

    /// Maps at exactly `address`, as [`Options::address`], replacing whatever is mapped
    /// there (mmap's MAP_FIXED: a range the caller reserved itself, or mappings placed back
    /// to back).
    ///
    /// # Safety
    /// The caller owns `address..address + len` and nothing references its contents: they
    /// are unmapped when the mapping is made.
    pub unsafe fn address_replacing(mut self, address: usize) -> Self {
        self.placement = Placement::Replace(address);
        self
    }

    /// Maps read-only (default false), as mmap with PROT_READ: faults fill pages as usual,
    /// a write through the pointer raises SIGSEGV (SEGV_ACCERR) before udax sees it, and
    /// [`Mapping::write_at`](crate::Mapping::write_at) and writing prefaults return
    /// [`Error::ReadOnly`](crate::Error::ReadOnly). Nothing is ever dirty, so flush writes
    /// nothing back; the store is never written.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// The engine's configuration for a region served by `resolution`, in this process's
    /// own memory (`own_memory`: a mapping) or another's (an adopted region, which only
    /// fills: no dirty tracking, no huge-page moves). Huge pages are moved in where the
    /// kernel can, by handler threads and in-thread faults alike (those fill through their
    /// mapping's staging buffer, `resolve::in_thread`; slots are claimed lock-free, so a
    /// signal handler may). Measured, 1 GiB at 2 MiB in-thread, alternated against copying
    /// (UFFDIO_COPY into 4 KiB pages): seq-write 1.34-1.44x the kernel to 1.03-1.09x,
    /// mkwrite 1.53x to 1.38x, rand-read 1.01-1.04x to 1.10-1.11x (a moved page is
    /// compared after its write-protect; a copied one comes protected).
    pub(crate) fn config(&self, resolution: Resolution, own_memory: bool) -> Config {
        let in_thread = resolution == Resolution::InThread;
        let granularity = self.granularity_for(own_memory);
        let huge_move = own_memory
            && granularity == Granularity::Huge
            && self.huge_move
            // UFFDIO_MOVE wants source and destination of the same protection.
            && !self.read_only
            && HugeSlots::usable();
        Config {
            tracking: own_memory.then_some(self.tracking),
            granularity,
            huge_dirty: self.huge_dirty,
            write_around: self.write_around,
            huge_move,
            huge_zero: self.huge_zero,
            read_ahead: self.read_ahead,
            wakes: !in_thread,
            budget: match &self.shared_budget {
                Some(shared) => Some(shared.bytes()),
                None => self.budget,
            },
            shared_budget: self.shared_budget.clone(),
            zero_window_delay: self.zero_window_delay,
            evict_delay: self.evict_delay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_granularity_follows_budget_placement_and_owner() {
        let default = Options::default();
        assert_eq!(default.granularity_for(true), Granularity::Huge);
        assert_eq!(default.granularity_for(false), Granularity::Page, "adopted");
        assert_eq!(
            default.clone().budget(1 << 20).granularity_for(true),
            Granularity::SequentialAround(256 << 10)
        );
        assert_eq!(
            default.clone().address(4 << 20).granularity_for(true),
            Granularity::Huge
        );
        assert_eq!(
            default
                .clone()
                .address(4 << 20 | 4096)
                .granularity_for(true),
            Granularity::Page,
            "off a 2 MiB boundary"
        );
        let set = default.granularity(Granularity::FaultAround(64 << 10));
        assert_eq!(
            set.budget(1 << 20).granularity_for(true),
            Granularity::FaultAround(64 << 10),
            "a granularity set is kept"
        );
    }
}
