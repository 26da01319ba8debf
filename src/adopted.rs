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

use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::engine::config::DirtyTracking;
use crate::engine::region::{Memory, Region, check_range};
use crate::engine::stats::Stats;
use crate::error::Error;
use crate::options::Options;
use crate::resolve::{Resolution, Resolver};
use crate::store::Store;
use crate::sys::uffd::Uffd;

/// One range of another process's memory to serve: `len` bytes at `address` in that
/// process, backed by the store from byte `offset` on. All three are multiples of 4096.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdoptedRange {
    /// The first byte, in the memory of the process that owns the range.
    pub address: usize,
    /// Length in bytes.
    pub len: usize,
    /// Where the range starts in the store.
    pub offset: u64,
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
}

impl Adopted {
    /// Serves `ranges` of the memory behind `uffd` from `store`, with handler threads.
    /// Of `options`, the granularity and the number of handler threads apply.
    ///
    /// # Errors
    /// [`Error::BadRange`] for a range that is empty, unaligned, overlaps another or runs
    /// past the end of the store; [`Error::IncompatibleOptions`] for options that cannot
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
        check_disjoint(&ranges)?;
        for range in &ranges {
            check_range(range.address, range.len, range.offset, store.len())?;
        }
        let uffd = Arc::new(Uffd::adopt(uffd)?);
        let config = options.config(Resolution::HandlerThreads, false);
        let mut regions = Vec::with_capacity(ranges.len());
        for range in &ranges {
            let memory = Memory::Foreign {
                base: range.address,
                len: range.len,
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
        let resolver =
            Resolver::start(Resolution::HandlerThreads, &uffd, regions.clone(), threads)?;
        Ok(Adopted {
            regions,
            resolver: Some(resolver),
        })
    }

    /// The ranges served, sorted by address.
    pub fn ranges(&self) -> Vec<AdoptedRange> {
        let range = |region: &Arc<Region>| AdoptedRange {
            address: region.base(),
            len: region.len(),
            offset: region.page_offset(0),
        };
        self.regions.iter().map(range).collect()
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

/// Checks that ranges sorted by address do not overlap.
fn check_disjoint(ranges: &[AdoptedRange]) -> Result<(), Error> {
    if ranges.is_empty() {
        return Err(Error::BadRange {
            address: 0,
            len: 0,
            offset: 0,
            reason: "no range was given",
        });
    }
    for pair in ranges.windows(2) {
        if pair[0].address.saturating_add(pair[0].len) > pair[1].address {
            let AdoptedRange {
                address,
                len,
                offset,
            } = pair[1];
            return Err(Error::BadRange {
                address,
                len,
                offset,
                reason: "it overlaps the range before it",
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
        }
    }

    #[test]
    fn overlapping_or_missing_ranges_are_refused() {
        assert!(check_disjoint(&[range(0x1000, 0x1000), range(0x2000, 0x1000)]).is_ok());
        let overlap = check_disjoint(&[range(0x1000, 0x2000), range(0x2000, 0x1000)]);
        assert!(matches!(
            overlap,
            Err(Error::BadRange {
                address: 0x2000,
                ..
            })
        ));
        assert!(matches!(check_disjoint(&[]), Err(Error::BadRange { .. })));
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
