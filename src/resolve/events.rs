//! Reading a userfaultfd's messages, for all the handler threads of it at once: under one
//! lock, so that what the messages say applies in the kernel's order whichever thread
//! read them. A balloon's remove (`UFFD_EVENT_REMOVE`) is applied (`engine::remove`)
//! before the lock is released, so a fault read after it, by any thread, is served as
//! the removed range now is (zeros), even if the fault was raised by a vCPU before the
//! VMM's thread got its remove read. (The remove completes, and `MADV_DONTNEED` goes on
//! to drop the pages, once the message is read; their refaults come after.)
//!
//! A reader made to record also keeps the store offset of each page (or 2 MiB unit) in
//! the order of its first fault: the working set a later restore can prefetch.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use crate::engine::region::{Region, region_of};
use crate::engine::remove;
use crate::sys::uffd::{Fault, Uffd, UffdError, UffdMsg, removed_range};

/// The shared reader of one uffd (see the module doc). The default one (a `Mapping`'s,
/// whose uffd reports no events) reads without the lock: a contended lock would park
/// the handler thread on the faulting CPU behind one elsewhere, a wake across CPUs.
#[derive(Default)]
pub(crate) struct Reader {
    /// Whether reads take `record`'s lock (a uffd with events, another process's).
    ordered: bool,
    /// Held while reading and applying; holds the first-fault record, if one is kept.
    record: Mutex<Option<Record>>,
    /// Fault messages read.
    faults: AtomicU64,
    /// When the first fault message was read.
    first: OnceLock<Instant>,
}

/// Store offsets of faulted pages, by first fault.
#[derive(Default)]
struct Record {
    order: Vec<u64>,
    seen: HashSet<u64>,
}

impl Reader {
    /// A reader that applies events in order, and keeps the first-fault record when
    /// `record`.
    pub(crate) fn ordered(record: bool) -> Reader {
        Reader {
            ordered: true,
            record: Mutex::new(record.then(Record::default)),
            faults: AtomicU64::new(0),
            first: OnceLock::new(),
        }
    }

    /// Reads the pending messages (without blocking) into `messages`, applies the removes
    /// among them to `regions` (sorted by address) and appends the faults to `faults`.
    /// Returns how many messages it read.
    pub(crate) fn read(
        &self,
        uffd: &Uffd,
        regions: &[Arc<Region>],
        messages: &mut [UffdMsg],
        faults: &mut VecDeque<Fault>,
    ) -> Result<usize, UffdError> {
        let mut guard = self.ordered.then(|| match self.record.lock() {
            Ok(record) => record,
            Err(poisoned) => poisoned.into_inner(),
        });
        let record = guard.as_deref_mut().and_then(Option::as_mut);
        let count = uffd.read_events(messages)?;
        self.take(record, regions, &messages[..count], faults);
        Ok(count)
    }

    /// Takes messages read by [`Uffd::wait_events`] (which sleeps, so no lock is held
    /// across it), as `read` takes its own: only for a reader that is not `ordered`, whose
    /// uffd reports no events, so that no order between readers matters.
    pub(crate) fn take_waited(
        &self,
        regions: &[Arc<Region>],
        messages: &[UffdMsg],
        faults: &mut VecDeque<Fault>,
    ) {
        debug_assert!(!self.ordered);
        self.take(None, regions, messages, faults);
    }

    /// Applies the removes among `messages` to `regions` and appends the faults to `faults`.
    fn take(
        &self,
        mut record: Option<&mut Record>,
        regions: &[Arc<Region>],
        messages: &[UffdMsg],
        faults: &mut VecDeque<Fault>,
    ) {
        for message in messages {
            if let Some(fault) = Fault::from_msg(message) {
                self.faults.fetch_add(1, Ordering::Relaxed);
                self.first.get_or_init(Instant::now);
                let region = region_of(regions, fault.address);
                if let (Some(record), Some(region)) = (record.as_deref_mut(), region) {
                    record.note(region, fault.address);
                }
                faults.push_back(fault);
            } else if let Some((start, end)) = removed_range(message) {
                for region in regions {
                    if let Err(error) = remove::apply(region, start, end) {
                        region.record_error(0, &error);
                    }
                }
            }
        }
    }

    /// Whether reads are ordered under a lock (a uffd with events).
    pub(crate) fn is_ordered(&self) -> bool {
        self.ordered
    }

    /// Store offsets of the faulted pages (2 MiB units in hugetlbfs memory), in the
    /// order of their first faults (empty unless made to record).
    pub(crate) fn first_faults(&self) -> Vec<u64> {
        let record = match self.record.lock() {
            Ok(record) => record,
            Err(poisoned) => poisoned.into_inner(),
        };
        record
            .as_ref()
            .map(|record| record.order.clone())
            .unwrap_or_default()
    }

    /// When the first fault message was read, if one was.
    pub(crate) fn first_fault_at(&self) -> Option<Instant> {
        self.first.get().copied()
    }

    /// How many fault messages were read.
    pub(crate) fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }
}

impl Record {
    /// Notes a fault at `address` of `region`, if its page is faulting for the first time.
    fn note(&mut self, region: &Region, address: usize) {
        let Some(index) = region.page_index(address) else {
            return;
        };
        let offset = region.page_offset(region.unit_of(index));
        if self.seen.insert(offset) {
            self.order.push(offset);
        }
    }
}
