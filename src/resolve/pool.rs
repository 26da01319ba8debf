//! The process-wide handler pool: every mapping served by handler threads joins a pool
//! that owns one userfaultfd and a fixed set of handler threads, instead of opening a uffd
//! and starting threads of its own.
//!
//! A uffd can register any number of ranges, and the threads find the region of each
//! fault in the pool's [`Table`]; so ten thousand mappings cost one uffd and a few threads,
//! not ten thousand of each (per mapping there remain its reservation, one VMA, and its
//! page-state table, on the heap while small). Features are per uffd (write-protect,
//! asynchronous tracking, move), and the thread count is the caller's choice, so there is
//! one pool per (features, threads) pair; a program with one kind of mapping has one.
//!
//! Pools are never torn down: their threads sleep in read(2) of the uffd (opened
//! blocking; poll(2) where the kernel cannot read a uffd without waiting) while no
//! mapping needs them, and end with the process.
//!
//! **fork.** A child inherits the pools' values but none of their threads, and the uffd it
//! inherits still serves the parent's memory (a uffd acts on the memory of the process
//! that opened it). So every pool records its process; a child's lookup never returns a
//! parent's pool (it gets a pool of its own), and a parent's pool is never signalled,
//! written or dropped by the child ([`Membership`]'s drop does nothing there).

use std::sync::{Arc, Mutex};

use crate::engine::region::Region;
use crate::error::Error;
use crate::resolve::threads::{Handlers, Lives, Table, Unknown};
use crate::sys::uffd::Uffd;

/// One uffd, its handler threads, and the regions they serve.
pub(crate) struct Pool {
    /// The process whose memory `uffd` serves.
    owner: u32,
    features: u64,
    threads: usize,
    /// Whether the uffd may be user-mode-only (see `Options::user_mode_only`).
    user_mode_only: bool,
    uffd: Arc<Uffd>,
    table: Arc<Table>,
    /// Kept running for the life of the process.
    _handlers: Handlers,
}

/// Every pool made, for the life of the process (leaked on purpose: see the module doc).
static POOLS: Mutex<Vec<&'static Pool>> = Mutex::new(Vec::new());

impl Pool {
    /// This process's pool for uffds with exactly `features` served by `threads` threads
    /// (user-mode-only accepted or not), made (uffd opened, threads started) on first use.
    /// A pool whose threads gave up on their uffd is never handed out again.
    ///
    /// # Errors
    /// [`Error::Uffd`] when userfaultfd is unavailable or lacks a feature;
    /// [`Error::ResourceLimit`] or [`Error::Os`] when a thread or fd cannot be had.
    pub(crate) fn get(
        features: u64,
        threads: usize,
        user_mode_only: bool,
    ) -> Result<&'static Pool, Error> {
        let owner = std::process::id();
        let key = (owner, features, threads, user_mode_only);
        let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
        let found = pools.iter().find(|pool| {
            (pool.owner, pool.features, pool.threads, pool.user_mode_only) == key
                && !pool.table.is_closed()
        });
        if let Some(pool) = found {
            return Ok(pool);
        }
        let uffd = Uffd::open(features, user_mode_only, true).map_err(Error::uffd_open)?;
        let uffd = Arc::new(uffd);
        let table = Arc::new(Table::new(Vec::new(), Unknown::Wake));
        // A mapping's uffd reports no events: the default reader, which takes no lock.
        let handlers =
            Handlers::start(&uffd, &table, threads, &Arc::default(), Lives::WithProcess)?;
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            owner,
            features,
            threads,
            user_mode_only,
            uffd,
            table,
            _handlers: handlers,
        }));
        pools.push(pool);
        Ok(pool)
    }

    /// The pool's uffd, to register a range with and build its region over.
    pub(crate) fn uffd(&self) -> &Arc<Uffd> {
        &self.uffd
    }

    /// Starts serving `region` (registered with this pool's uffd) until the membership
    /// is dropped.
    ///
    /// # Errors
    /// [`Error::HandlerFailed`] if the pool's threads gave up on its uffd since `get`.
    pub(crate) fn join(&'static self, region: Arc<Region>) -> Result<Membership, Error> {
        if !self.table.insert(Arc::clone(&region)) {
            let source = std::io::Error::from_raw_os_error(libc::EIO);
            return Err(Error::HandlerFailed { source });
        }
        Ok(Membership { pool: self, region })
    }
}

/// A region served by a pool; dropping it stops serving the region (faults on its range
/// from then on only wake their thread: see [`Unknown::Wake`]).
pub(crate) struct Membership {
    pool: &'static Pool,
    region: Arc<Region>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        if self.pool.owner == std::process::id() {
            self.pool.table.remove(&self.region);
        }
    }
}
