//! Per-region counters (the /proc/vmstat analog).
//!
//! The fault and writeback paths bump [`Counters`] with `Relaxed` atomics; readers only
//! ever see a [`Stats`] snapshot. Counter names are the ones DESIGN.md lists, and
//! [`Stats::fields`] yields them by name for the CLI and the JSON reports.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// The live counters of one region (internal; read through [`Stats`]).
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)*
        }

        /// A snapshot of a mapping's (or an adopted region's) counters.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Stats {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl Counters {
            /// Reads every counter once.
            pub(crate) fn snapshot(&self) -> Stats {
                Stats { $($name: self.$name.load(Relaxed),)* }
            }
        }

        impl Stats {
            /// Every counter as `(name, value)`, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }

        /// Counters of several regions together, field by field (a sum of peaks bounds
        /// the peak of the sum from above).
        impl std::ops::Add for Stats {
            type Output = Stats;

            fn add(self, other: Stats) -> Stats {
                Stats { $($name: self.$name + other.$name,)* }
            }
        }
    };
}

counters! {
    /// Read faults on holes served with the shared zero page.
    zero_faults,
    /// Read faults on data served by reading the store (installed clean, write-protected).
    read_faults,
    /// Write faults on Empty pages (hole or data), installed writable and dirty in one step;
    /// also read faults on pages evicted dirty, which are installed the same way (a refill).
    write_faults,
    /// Write-protect faults on Clean pages: marked dirty, protection lifted in place.
    mkwrite_faults,
    /// Write-protect faults on Zero pages: block allocated, zero page replaced by a writable page.
    zero_to_dirty,
    /// Faults resolved as a whole 2 MiB range.
    huge_faults,
    /// 2 MiB faults that fell back to 4 KiB.
    huge_fallbacks,
    /// 2 MiB hole ranges mapped as the kernel's huge zero page (moved in: one PMD, no
    /// memory); each also counts in `zero_faults` and `huge_faults`.
    huge_zero_faults,
    /// 2 MiB hole ranges mapped as 512 zero pages although huge pages are moved in: the
    /// kernel cannot be trusted to move the huge zero page (see `sys::huge_zero`), no
    /// source slot was free, or the move fell short.
    huge_zero_fallbacks,
    /// 2 MiB ranges installed ahead of a sequential run of read faults by a handler thread
    /// (`engine::read_ahead`), before the run faulted there (wholly, or the rest of the
    /// run's own range). At 2 MiB granularity each also counts in `huge_faults`, and in
    /// `read_faults` (data) or `zero_faults` (a hole); at a finer one each stretch of one
    /// extent installed counts as a read or zero fault, its other pages in
    /// `fault_around_pages`.
    read_ahead_ranges,
    /// Neighbouring pages installed by fault-around.
    fault_around_pages,
    /// Pages a write fault made writable before they were written (write-around:
    /// `Options::write_around`): installed over a hole by a 2 MiB fault, unallocated, or
    /// lifted from Clean by a sequential write over data (to the end of its 2 MiB range,
    /// or under a budget to its window's edge).
    write_around_pages,
    /// Write-around pages a writeback found unchanged (a hole's still all zero, a lifted
    /// page equal to the store's bytes): not written. A flush leaves the hole ones
    /// writable and looks again at the next (each look counts); lifted ones become Clean.
    unwritten_skipped,
    /// Dirty pages written back to the store (by flush or eviction).
    pages_written_back,
    /// Calls to flush that completed.
    flushes,
    /// Pages dropped to stay under the resident budget.
    evictions,
    /// Evicted pages that were dirty (written back first).
    evicted_dirty,
    /// Entries the eviction clock looked at (the pgscan analog): it visits resident
    /// pages only, so this follows the pages evicted, not the size mapped.
    evict_scanned,
    /// Pages currently resident (Clean or Dirty; Zero pages cost no memory). Kept by the
    /// entry table and filled in by the snapshot.
    resident_pages,
    /// Highest value `resident_pages` reached.
    resident_pages_peak,
    /// Bytes read from the store.
    bytes_read,
    /// Bytes written to the store.
    bytes_written,
    /// Faulting accesses answered with SIGBUS because the store failed.
    sigbus_delivered,
}

impl Counters {
    /// Adds `n` to a counter.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Takes back `n` counted for an operation that then failed.
    pub(crate) fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_every_counter() {
        let counters = Counters::default();
        Counters::add(&counters.zero_faults, 3);
        let stats = counters.snapshot();
        assert_eq!(stats.zero_faults, 3);
        let fields = stats.fields();
        assert_eq!(fields[0], ("zero_faults", 3));
        assert!(fields.iter().any(|&(name, _)| name == "sigbus_delivered"));
    }
}
