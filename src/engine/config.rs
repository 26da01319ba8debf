//! What a region's faults do: the engine's share of the options (granularity, how writes
//! are noticed, the 2 MiB choices, the budget, and the testing delays).

use std::time::Duration;

use crate::engine::shared_budget::SharedBudget;
use crate::sys::uffd::features;
use crate::{HUGE_PAGES, PAGE_SIZE};

/// How much a fault resolves at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Granularity {
    /// One 4 KiB page per fault.
    #[default]
    Page,
    /// On a read fault, also the Empty neighbours inside an aligned window of this many bytes.
    FaultAround(usize),
    /// Fault-around of this many bytes for a read fault that continues a sequential run
    /// (it lands right after or right before one of the last few faults' pages), 4 KiB
    /// for any other: the default under a budget, where a neighbour read in for nothing
    /// costs the eviction of a page in use, and a random 4 KiB read costs little less
    /// than 64 KiB of disk time.
    SequentialAround(usize),
    /// The whole aligned 2 MiB range when the kernel's conditions hold, else 4 KiB.
    Huge,
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

/// The engine's configuration of one region.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// How writes are noticed; `None`: not at all. Such a region only fills: pages go in
    /// writable, nothing is write-protected, nothing is ever Dirty or written back (memory
    /// of another process, registered for missing faults only, as a VMM's guest memory).
    pub(crate) tracking: Option<DirtyTracking>,
    /// How much a missing fault resolves at once (`huge` and `around` serve the wide ones).
    pub(crate) granularity: Granularity,
    /// See `Options::huge_dirty`.
    pub(crate) huge_dirty: bool,
    /// See `Options::write_around`.
    pub(crate) write_around: bool,
    /// Whether 2 MiB data ranges are moved in as huge pages (UFFDIO_MOVE, this process's
    /// memory only); decided by the front-end once it knows the kernel has MOVE and THP.
    pub(crate) huge_move: bool,
    /// Whether 2 MiB hole ranges may be the huge zero page (`Options::huge_zero_page`;
    /// only with `huge_move`, and where `sys::huge_zero` trusts the kernel).
    pub(crate) huge_zero: bool,
    /// Whether sequential runs of read faults are read ahead (`Options::read_ahead`; see
    /// [`Config::read_ahead_unit`] for where they can be).
    pub(crate) read_ahead: bool,
    /// Whether faulting threads wait to be woken: false when each serves its own faults
    /// (in-thread resolution), so nothing is woken.
    pub(crate) wakes: bool,
    /// The resident budget in bytes, if any (with a shared budget, its size: the region's
    /// clock hand).
    pub(crate) budget: Option<u64>,
    /// A budget shared with other regions, which then replaces the region's own
    /// watermarks (see `shared_budget`).
    pub(crate) shared_budget: Option<SharedBudget>,
    /// Testing only: see `Options::zero_window_delay`.
    pub(crate) zero_window_delay: Option<Duration>,
    /// Testing only: see `Options::evict_delay`.
    pub(crate) evict_delay: Option<Duration>,
}

impl Config {
    /// Pages one read fault fills, if this region's sequential runs of faults are read
    /// ahead (`engine::read_ahead`): asked for (`Options::read_ahead`), and no budget
    /// bounds the region (a range read for nothing would evict pages in use). The 2 MiB
    /// of `Granularity::Huge`, a fault-around window, or one page.
    pub(crate) fn read_ahead_unit(&self) -> Option<usize> {
        if !self.read_ahead || self.budget.is_some() {
            return None;
        }
        match self.granularity {
            Granularity::Huge => Some(HUGE_PAGES),
            Granularity::Page => Some(1),
            Granularity::FaultAround(window) => Some((window / PAGE_SIZE).clamp(1, HUGE_PAGES)),
            // A budget's granularity: its windows are read ahead by the store alone.
            Granularity::SequentialAround(_) => None,
        }
    }

    /// The userfaultfd features a region of this configuration needs from a uffd udax
    /// opens itself: POISON (a fault that cannot be served gets SIGBUS), write-protect
    /// faults if writes are tracked, WP_ASYNC for asynchronous tracking, MOVE to move huge
    /// pages in.
    pub(crate) fn features(&self) -> u64 {
        let mut needed = features::POISON;
        if self.tracking.is_some() {
            needed |= features::WP;
        }
        if self.tracking == Some(DirtyTracking::Async) {
            needed |= features::WP_ASYNC;
        }
        if self.huge_move {
            needed |= features::MOVE;
        }
        needed
    }
}
