//! The resolution floor: who serves a region's faults. Handler threads read the uffd's
//! events (`threads`); or each faulting thread serves its own fault in a SIGBUS handler
//! (`in_thread`). Both call the same `engine::fault::resolve`; the engine does not know
//! which one called. This floor knows nothing of the store's kind or of the front-ends.

mod ahead_thread;
pub(crate) mod events;
pub(crate) mod failure;
mod in_thread;
pub(crate) mod pool;
mod scratch;
pub(crate) mod threads;

use std::sync::Arc;

use crate::engine::region::Region;
use crate::error::Error;
use crate::store::Store;
use crate::sys::uffd::{Uffd, features};

/// Who serves a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Handler threads read userfaultfd events and serve them. Kernel-side accesses to the
    /// mapping (`read(2)` into it, `write(2)` from it) fault and are served like any other.
    HandlerThreads,
    /// The faulting thread serves its own fault, in a SIGBUS handler (UFFD_FEATURE_SIGBUS):
    /// no thread wakes another, several times cheaper here. Kernel-side accesses to pages
    /// not yet present fail with EFAULT instead of faulting: call `Mapping::prefault`
    /// on a range before handing it to a system call. Needs x86-64 and a store whose
    /// `is_signal_safe` is true (`FileStore`); otherwise handler threads serve.
    /// Install your own SIGBUS handler, if any, before the first such mapping: udax
    /// passes it every SIGBUS that is not a udax fault.
    InThread,
}

impl Resolution {
    /// What actually serves faults of a store asked to be served this way: in-thread
    /// resolution needs x86-64 (the fault's direction comes from its error code) and a
    /// store that is safe to call inside a signal handler; else handler threads serve.
    pub(crate) fn effective(self, store: &dyn Store) -> Resolution {
        let in_thread = cfg!(target_arch = "x86_64") && store.is_signal_safe();
        match self {
            Resolution::InThread if in_thread => Resolution::InThread,
            _ => Resolution::HandlerThreads,
        }
    }

    /// The userfaultfd features this resolution needs.
    pub(crate) fn features(self) -> u64 {
        match self {
            Resolution::HandlerThreads => 0,
            Resolution::InThread => features::SIGBUS,
        }
    }
}

/// What serves a set of regions of one uffd, running; stopped by [`Resolver::stop`] (or
/// on drop).
pub(crate) enum Resolver {
    /// Handler threads of the region's own, polling its uffd (an adopted uffd).
    Threads(threads::Handlers),
    /// The process-wide pool's handler threads (a mapping: see `pool`).
    Pooled(pool::Membership),
    /// The regions' entries in the SIGBUS table.
    InThread(Vec<in_thread::Registration>),
}

impl Resolver {
    /// Starts serving `regions` of `uffd` as `resolution` says (`threads` handler threads
    /// of their own; in-thread needs a uffd opened with its features). Mappings served by
    /// handler threads join a [`pool::Pool`] instead.
    ///
    /// # Errors
    /// [`Error::Os`] if a thread, the eventfd or the SIGBUS handler cannot be had;
    /// [`Error::IncompatibleOptions`] if the in-thread table is full.
    pub(crate) fn start(
        resolution: Resolution,
        uffd: &Arc<Uffd>,
        regions: Vec<Arc<Region>>,
        threads: usize,
    ) -> Result<Resolver, Error> {
        match resolution {
            Resolution::HandlerThreads => {
                Resolver::handler_threads(uffd, regions, threads, &Arc::default())
            }
            Resolution::InThread => {
                let mut registrations = Vec::with_capacity(regions.len());
                for region in &regions {
                    let registration = in_thread::register(region)?;
                    registrations.push(registration.ok_or(Error::IncompatibleOptions {
                        reason: "too many in-thread mappings at once (64): close one or use \
                                 handler threads",
                    })?);
                }
                Ok(Resolver::InThread(registrations))
            }
        }
    }

    /// Starts `threads` handler threads serving `regions` (sorted by address) of `uffd`,
    /// reading its messages through `reader`.
    ///
    /// # Errors
    /// [`Error::Os`] if a thread or the eventfd cannot be had.
    pub(crate) fn handler_threads(
        uffd: &Arc<Uffd>,
        regions: Vec<Arc<Region>>,
        threads: usize,
        reader: &Arc<events::Reader>,
    ) -> Result<Resolver, Error> {
        let table = Arc::new(threads::Table::new(regions, threads::Unknown::Poison));
        threads::Handlers::start(uffd, &table, threads, reader, threads::Lives::UntilStopped)
            .map(Resolver::Threads)
    }

    /// Stops serving: joins the handler threads, or leaves the SIGBUS table (waiting out
    /// a handler still running there). Callers stop only when no thread touches the
    /// regions any more.
    pub(crate) fn stop(self) {
        match self {
            Resolver::Threads(mut handlers) => handlers.stop(),
            Resolver::Pooled(membership) => drop(membership),
            Resolver::InThread(registrations) => drop(registrations),
        }
    }
}
