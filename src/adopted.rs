//! [`Adopted`]: the front-end for memory udax did not reserve. Another process (a VMM
//! restoring a snapshot, say) reserves memory, opens a userfaultfd, registers its ranges
//! for missing faults, and hands the uffd over (over a Unix socket, with SCM_RIGHTS),
//! together with where each range lies in the store. udax serves those faults with the
//! same engine as a [`crate::Mapping`]'s: holes get the shared zero page (no memory, no
//! I/O), data is copied from the store on first touch, fault-around and the 2 MiB path
//! apply.
//!
//! What differs, because the memory is another process's: its writes stay in its memory
//! (the region only fills: no write-protection, no dirty tracking, no writeback), nothing
//! can be evicted, and only handler threads can serve (the faulting threads are not ours).
//! Pages the store holds as data but that read as zeros (a dense snapshot) get the zero
//! page too. Ranges of 2 MiB hugetlbfs pages are filled in whole 2 MiB units.
//!
//! The other process may drop pages (a VMM inflating a balloon: `MADV_DONTNEED`, which
//! its uffd reports as `UFFD_EVENT_REMOVE` when it asked for that feature): they read as
//! zeros from then on, never as the store's bytes. udax sees the store through a private
//! view where those ranges are punched (the store itself is never written). While such
//! an event is queued every fill gets EAGAIN; the fault is retried once the events are
//! read. The order of first faults is recorded ([`Adopted::first_faults`]), and a
//! recorded set can be installed ahead of its faults ([`Adopted::prefetch`]).

use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::engine::config::DirtyTracking;
use crate::engine::prefetch::{page_at, prefetch};
use crate::engine::region::{Memory, Region, check_range};
use crate::engine::stats::Stats;
use crate::error::Error;
use crate::options::Options;
use crate::resolve::events::Reader;
use crate::resolve::{Resolution, Resolver};
use crate::store::Store;
use crate::store::private_view::PrivateView;
use crate::sys::uffd::Uffd;
use crate::{HUGE_PAGE_SIZE, HUGE_PAGES, PAGE_SIZE};

/// One range of another process's memory to serve: `len` bytes at `address` in that
/// process, backed by the store from byte `offset` on. All three are multiples of
/// `page_size`: 4096, or 2 MiB ([`crate::HUGE_PAGE_SIZE`]) for hugetlbfs memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdoptedRange {
    /// The first byte, in the memory of the process that owns the range.
    pub address: usize,
    /// Length in bytes.
    pub len: usize,
    /// Where the range starts in the store.
    pub offset: u64,
    /// The page size of the memory there: 4096, or 2 MiB for hugetlbfs memory (which the
    /// kernel fills only in whole 2 MiB pages).
    pub page_size: usize,
}

/// Ranges of another process's memory, registered with its userfaultfd, served by udax
/// from a store until [`Adopted::close`] (or drop).
///
/// # Examples
///
/// ```no_run
/// use std::os::fd::OwnedFd;
/// use std::sync::Arc;
/// use udax::{Adopted, AdoptedRange, FileStore, Options};
///
/// # fn receive_from_the_vmm() -> (OwnedFd, Vec<AdoptedRange>) { unimplemented!() }
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = Arc::new(FileStore::open("snapshot.mem")?);
/// let (uffd, ranges) = receive_from_the_vmm(); // SCM_RIGHTS and the region list
/// // SAFETY: the uffd and its ranges belong to the VMM process, which handed them over.
/// let adopted = unsafe { Adopted::new(uffd, &ranges, store, Options::default())? };
/// // ... the VMM runs; its faults are served ...
/// let stats = adopted.stats();
/// println!("{} zero pages, {} pages copied", stats.zero_faults, stats.read_faults);
/// adopted.close()?;
/// # Ok(()) }
/// ```
pub struct Adopted {
    /// One region per range, sorted by address.
    regions: Vec<Arc<Region>>,
    /// The handler threads; `None` once closed.
    resolver: Option<Resolver>,
    /// The handler threads' reader of the uffd (first faults, fault count).
    reader: Arc<Reader>,
}

impl Adopted {
    /// Serves `ranges` of the memory behind `uffd` from `store`, with handler threads.
    /// Of `options`, the granularity and the number of handler threads apply.
    ///
    /// # Errors
    /// [`Error::BadRange`] for a range that is empty, unaligned (to its page size, which
    /// must be 4096 or 2 MiB), overlaps another (in memory or in the store) or runs past
    /// the end of the store; [`Error::IncompatibleOptions`] for options that cannot
    /// apply to another process's memory (a budget, in-thread resolution, asynchronous
    /// dirty tracking, a length); [`Error::Uffd`] if `uffd` is not a userfaultfd;
    /// [`Error::Os`] if a thread cannot be started.
    ///
    /// # Safety
    /// `uffd` is a userfaultfd whose API handshake is done, on which every range is
    /// registered for missing faults, and whose faults nobody else serves. The memory it
    /// covers is another process's, or memory of this process that no Rust reference
    /// points into: udax installs pages there. A fault the uffd reports outside `ranges`
    /// is answered with SIGBUS.
    pub unsafe fn new(
        uffd: OwnedFd,
        ranges: &[AdoptedRange],
        store: Arc<dyn Store>,
        options: Options,
    ) -> Result<Adopted, Error> {
        check_options(&options)?;
        let mut ranges = ranges.to_vec();
        ranges.sort_by_key(|range| range.address);
        check_disjoint(
            &ranges,
            |range| (range.address as u64, range.len as u64),
            "memory",
        )?;
        let mut by_offset = ranges.clone();
        by_offset.sort_by_key(|range| range.offset);
        check_disjoint(
            &by_offset,
            |range| (range.offset, range.len as u64),
            "the store",
        )?;
        for range in &ranges {
            check_range(range.address, range.len, range.offset, store.len())?;
            check_page_size(range)?;
        }
        let uffd = Arc::new(Uffd::adopt(uffd)?);
        // Balloon removes punch this view, never the store.
        let store: Arc<dyn Store> = Arc::new(PrivateView::new(store));
        let config = options.config(Resolution::HandlerThreads, false);
        let mut regions = Vec::with_capacity(ranges.len());
        for range in &ranges {
            let memory = Memory::Foreign {
                base: range.address,
                len: range.len,
                hugetlb: range.page_size == HUGE_PAGE_SIZE,
            };
            // SAFETY: the caller vouches that the range is registered with `uffd` for
            // missing faults and that its memory is not this process's Rust objects'.
            let region = unsafe {
                Region::new(
                    memory,
                    range.offset,
                    Arc::clone(&uffd),
                    Arc::clone(&store),
                    config.clone(),
                )?
            };
            regions.push(Arc::new(region));
        }
        let threads = options.handler_threads;
        let reader = Arc::new(Reader::ordered(true));
        let resolver = Resolver::handler_threads(&uffd, regions.clone(), threads, &reader)?;
        Ok(Adopted {
            regions,
            resolver: Some(resolver),
            reader,
        })
    }

    /// The ranges served, sorted by address.
    pub fn ranges(&self) -> Vec<AdoptedRange> {
        let range = |region: &Arc<Region>| AdoptedRange {
            address: region.base(),
            len: region.len(),
            offset: region.page_offset(0),
            page_size: if region.is_hugetlb() {
                HUGE_PAGE_SIZE
            } else {
                PAGE_SIZE
            },
        };
        self.regions.iter().map(range).collect()
    }

    /// Store offsets of the pages faulted so far (of 2 MiB units, in hugetlbfs ranges), in
    /// the order of their first faults: the working set to [`Adopted::prefetch`] on a
    /// later restore of the same snapshot.
    pub fn first_faults(&self) -> Vec<u64> {
        self.reader.first_faults()
    }

    /// How many page faults the other process has raised so far (pages installed ahead
    /// of their faults, by prefetch or fault-around, raise none).
    pub fn faults(&self) -> u64 {
        self.reader.faults()
    }

    /// When udax read the other process's first page fault, if it has raised one.
    pub fn first_fault_at(&self) -> Option<std::time::Instant> {
        self.reader.first_fault_at()
    }

    /// Installs the pages at the store offsets `offsets` (a recorded working set) before
    /// they fault, in batches of up to 2 MiB where they are contiguous, in about the
    /// given order; returns how many bytes it installed. Offsets no range maps, pages
    /// already present, and pages whose fill fails are left to their faults.
    pub fn prefetch(&self, offsets: &[u64]) -> u64 {
        let mut scratch = vec![0u8; HUGE_PAGE_SIZE];
        let mut installed = 0;
        for chunk in offsets.chunks(HUGE_PAGES) {
            let mut chunk = chunk.to_vec();
            chunk.sort_unstable();
            chunk.dedup();
            let mut rest = &chunk[..];
            while let Some(&first) = rest.first() {
                let run = 1 + rest
                    .windows(2)
                    .take_while(|pair| pair[1] == pair[0] + PAGE_SIZE as u64)
                    .count();
                rest = &rest[run..];
                let found = self
                    .regions
                    .iter()
                    .find_map(|region| page_at(region, first).map(|page| (region, page)));
                if let Some((region, page)) = found {
                    let pages = if region.is_hugetlb() {
                        HUGE_PAGES.max(run)
                    } else {
                        run
                    };
                    installed += prefetch(region, page..page + pages, &mut scratch);
                }
            }
        }
        (installed * PAGE_SIZE) as u64
    }

    /// A snapshot of the counters, summed over the ranges.
    pub fn stats(&self) -> Stats {
        let stats = self.regions.iter().map(|region| region.stats());
        stats.fold(Stats::default(), |sum, one| sum + one)
    }

    /// Stops serving faults and returns the first fault that could not be served since
    /// the start (its access got SIGBUS), if any. Faults the other process takes after
    /// this are no longer served: close only once it is done with the memory (or gone).
    ///
    /// # Errors
    /// [`Error::FaultFailed`] (or [`Error::Uffd`]) for the first fault that failed.
    pub fn close(mut self) -> Result<(), Error> {
        self.stop();
        match self.regions.iter().find_map(|region| region.take_error()) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn stop(&mut self) {
        if let Some(resolver) = self.resolver.take() {
            resolver.stop();
        }
    }
}

impl Drop for Adopted {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Refuses the options that cannot apply to another process's memory.
fn check_options(options: &Options) -> Result<(), Error> {
    let reason = if options.budget.is_some() {
        "a budget needs memory of this process (eviction drops pages with madvise)"
    } else if options.resolution == Resolution::InThread {
        "the faulting threads belong to another process: only handler threads can serve"
    } else if options.tracking == DirtyTracking::Async {
        "another process's writes stay in its memory: there is no dirty tracking to choose"
    } else if options.len.is_some() {
        "the ranges give the lengths: do not set Options::len"
    } else {
        return Ok(());
    };
    Err(Error::IncompatibleOptions { reason })
}

/// Checks that a range's page size is one udax can fill, and that the range is aligned to
/// it.
fn check_page_size(range: &AdoptedRange) -> Result<(), Error> {
    let AdoptedRange {
        address,
        len,
        offset,
        page_size,
    } = *range;
    let reason = match page_size {
        PAGE_SIZE => return Ok(()),
        HUGE_PAGE_SIZE
            if address % HUGE_PAGE_SIZE == 0
                && len % HUGE_PAGE_SIZE == 0
                && offset % HUGE_PAGE_SIZE as u64 == 0 =>
        {
            return Ok(());
        }
        HUGE_PAGE_SIZE => "a 2 MiB-page range needs its address, length and offset 2 MiB-aligned",
        _ => "the page size must be 4096 or 2 MiB",
    };
    Err(Error::BadRange {
        address,
        len,
        offset,
        reason,
    })
}

/// Checks that ranges sorted by start (`span` gives start and length) do not overlap in
/// `space` (memory, or the store).
fn check_disjoint(
    ranges: &[AdoptedRange],
    span: impl Fn(&AdoptedRange) -> (u64, u64),
    space: &'static str,
) -> Result<(), Error> {
    if ranges.is_empty() {
        return Err(Error::BadRange {
            address: 0,
            len: 0,
            offset: 0,
            reason: "no range was given",
        });
    }
    for pair in ranges.windows(2) {
        let ((start, len), (next, _)) = (span(&pair[0]), span(&pair[1]));
        if start.saturating_add(len) > next {
            let AdoptedRange {
                address,
                len,
                offset,
                ..
            } = pair[1];
            let reason = match space {
                "memory" => "it overlaps another range in memory",
                _ => "its bytes in the store overlap another range's",
            };
            return Err(Error::BadRange {
                address,
                len,
                offset,
                reason,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(address: usize, len: usize) -> AdoptedRange {
        AdoptedRange {
            address,
            len,
            offset: 0,
            page_size: PAGE_SIZE,
        }
    }

    fn check(ranges: &[AdoptedRange]) -> Result<(), Error> {
        check_disjoint(ranges, |r| (r.address as u64, r.len as u64), "memory")
    }

    #[test]
    fn overlapping_or_missing_ranges_are_refused() {
        assert!(check(&[range(0x1000, 0x1000), range(0x2000, 0x1000)]).is_ok());
        let overlap = check(&[range(0x1000, 0x2000), range(0x2000, 0x1000)]);
        assert!(matches!(
            overlap,
            Err(Error::BadRange {
                address: 0x2000,
                ..
            })
        ));
        assert!(matches!(check(&[]), Err(Error::BadRange { .. })));
    }

    #[test]
    fn page_sizes_are_4k_or_2m_and_aligned() {
        let huge = |address, len, offset| AdoptedRange {
            address,
            len,
            offset,
            page_size: HUGE_PAGE_SIZE,
        };
        assert!(check_page_size(&range(0x1000, 0x1000)).is_ok());
        assert!(check_page_size(&huge(0x20_0000, 0x40_0000, 0x20_0000)).is_ok());
        for bad in [
            huge(0x1000, 0x20_0000, 0),
            huge(0x20_0000, 0x1000, 0),
            huge(0x20_0000, 0x20_0000, 0x1000),
            AdoptedRange {
                page_size: 8192,
                ..range(0x1000, 0x1000)
            },
        ] {
            assert!(check_page_size(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn options_that_need_this_process_are_refused() {
        assert!(check_options(&Options::default()).is_ok());
        for options in [
            Options::default().budget(1 << 20),
            Options::default().resolution(Resolution::InThread),
            Options::default().dirty_tracking(DirtyTracking::Async),
            Options::default().len(4096),
        ] {
            assert!(matches!(
                check_options(&options),
                Err(Error::IncompatibleOptions { .. })
            ));
        }
    }
}
