//! [`Mapping`]: the mmap analog, the front-end that reserves its own memory. It reserves
//! an address range, opens a userfaultfd and registers the range, builds the engine's
//! region over it, starts a resolver, and hands out the pointer, `read_at`/`write_at`,
//! flush, stats and close.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};

use crate::engine::config::{DirtyTracking, Granularity};
use crate::engine::region::{Memory, Region};
use crate::engine::shared_budget::Evictable;
use crate::engine::stats::Stats;
use crate::engine::writeback;
use crate::error::Error;
use crate::exit;
use crate::options::Options;
use crate::resolve::pool::Pool;
use crate::resolve::{Resolution, Resolver};
use crate::store::{Serving, Store};
use crate::sys::memory::{Placement, Reservation};
use crate::sys::uffd::Uffd;
use crate::{HUGE_PAGE_SIZE, PAGE_SIZE};

/// A store mapped into memory, its faults served by udax.
///
/// Dropping a mapping writes back its dirty pages (like munmap of a shared file mapping,
/// which never loses data), stops serving it and unmaps it; [`Mapping::close`] does the
/// same and returns any error. Accessing memory through [`Mapping::as_ptr`] after the
/// mapping is gone is the caller's bug, as with any unmapped memory.
///
/// **fork.** The mapping's memory is not inherited (MADV_DONTFORK): in a forked child
/// the range is unmapped, and touching it raises SIGSEGV. The child's copy of a
/// `Mapping` value does nothing to the parent: its `flush` and `close` return
/// [`Error::ForeignProcess`], `stats` reads the copy's counters as they were at fork,
/// and dropping it frees nothing (the parent's threads, uffd and memory are untouched).
pub struct Mapping {
    region: Arc<Region>,
    /// Who serves the faults; `None` once closed.
    resolver: Option<Resolver>,
    resolution: Resolution,
    /// The process that made the mapping (see fork, above).
    owner: u32,
    /// Mapped PROT_READ (`Options::read_only`): writes are refused.
    read_only: bool,
}

impl Mapping {
    /// Maps the store (or its first `Options::len` bytes) read-write.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use udax::{Mapping, MemStore, Options};
    ///
    /// let store = Arc::new(MemStore::new(16 << 20)); // 16 MiB, all hole
    /// let mapping = Mapping::new(store, Options::default())?;
    /// assert_eq!(mapping.len(), 16 << 20);
    /// mapping.close()?;
    /// # Ok::<(), udax::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::EmptyMapping`], [`Error::UnalignedLength`] or [`Error::StoreTooShort`] for
    /// a length that cannot be mapped; [`Error::IncompatibleOptions`] for options that
    /// cannot work together (asynchronous tracking with a budget, a full in-thread table);
    /// [`Error::BudgetTooSmall`]; [`Error::Uffd`] when userfaultfd is unavailable (the
    /// message names the sysctl and the device to fix) or lacks a feature;
    /// [`Error::Os`] when memory or a thread cannot be had.
    pub fn new(store: Arc<dyn Store>, options: Options) -> Result<Mapping, Error> {
        let len = mapping_len(store.len(), options.len)?;
        let budgeted = options.budget.is_some() || options.shared_budget.is_some();
        if options.tracking == DirtyTracking::Async && budgeted {
            return Err(Error::IncompatibleOptions {
                reason: "asynchronous dirty tracking cannot be combined with a budget \
                         (eviction could not stop a write racing it)",
            });
        }
        let resolution = options.resolution.effective(&*store);
        if resolution == Resolution::InThread && options.shared_budget.is_some() {
            return Err(Error::IncompatibleOptions {
                reason: "a shared budget needs handler threads (its lock is not for \
                         signal handlers)",
            });
        }
        let config = options.config(resolution, true);
        let features = config.features() | resolution.features();
        // In-thread resolution never serves kernel-side faults: a user-mode-only fd loses nothing.
        let user_mode_only = options.user_mode_only || resolution == Resolution::InThread;
        let pool = match resolution {
            Resolution::HandlerThreads => Some(Pool::get(
                features,
                options.handler_threads,
                user_mode_only,
            )?),
            Resolution::InThread => None,
        };
        let uffd = match pool {
            Some(pool) => Arc::clone(pool.uffd()),
            None => {
                Arc::new(Uffd::open(features, user_mode_only, false).map_err(Error::uffd_open)?)
            }
        };
        check_placement(&options)?;
        let budget_bytes = match &options.shared_budget {
            Some(shared) => Some(shared.bytes()),
            None => options.budget,
        };
        // The ranges ahead of sequential faults are read by the handler threads, or by an
        // in-thread mapping's read-ahead thread (`engine::read_ahead`), not by the store.
        let reads_ahead = config.read_ahead_unit().is_some();
        store.serve_mapping(Serving {
            budget: budget_bytes,
            reads_ahead,
        });
        // SAFETY: a replacing placement is the caller's promise (`Options::address_replacing`
        // is unsafe and states it).
        let memory =
            unsafe { Reservation::place(len, false, options.placement, !options.read_only) }
                .map_err(|source| Error::os("mmap", source))?;
        // SAFETY: the reservation was just made and nothing references it; from here on
        // its accesses fault to `uffd`, which the region below serves.
        unsafe { uffd.register(memory.base(), len, true)? };
        // SAFETY: registered above for missing and write-protect faults; the region owns
        // the reservation, whose bytes are reached only through raw pointers and atomics
        // (`as_ptr`, `read_at`, `write_at`, the slices' documented contracts).
        let region = unsafe {
            Region::new(
                Memory::Reserved(memory),
                0,
                Arc::clone(&uffd),
                store,
                config,
            )?
        };
        let region = Arc::new(region);
        if let Some(shared) = &options.shared_budget {
            let weak: Weak<dyn Evictable> = Arc::downgrade(&region) as Weak<Region>;
            shared.register(weak);
        }
        let resolver = match pool {
            Some(pool) => Resolver::Pooled(pool.join(Arc::clone(&region))?),
            None => Resolver::start(resolution, &uffd, vec![Arc::clone(&region)], 0)?,
        };
        exit::flush_at_exit(&region);
        Ok(Mapping {
            region,
            resolver: Some(resolver),
            resolution,
            owner: std::process::id(),
            read_only: options.read_only,
        })
    }

    /// Who serves this mapping's faults (in-thread falls back to handler threads for a
    /// store that is not signal-safe, or off x86-64).
    pub fn resolution(&self) -> Resolution {
        self.resolution
    }

    /// Whether system calls touching pages not yet present (`read(2)` into the mapping,
    /// `write(2)` from it) are served like user-space accesses. False with in-thread
    /// resolution, and with a user-mode-only userfaultfd
    /// ([`Options::user_mode_only`](crate::Options::user_mode_only)): such calls then fail
    /// with EFAULT unless the pages were made present first ([`Mapping::prefault`]).
    pub fn serves_kernel_access(&self) -> bool {
        self.resolution == Resolution::HandlerThreads && !self.region.is_user_mode_only()
    }

    /// Makes every page of `offset..offset+len` present, as reads (or writes, when
    /// `write`) from user space would, so that a system call may access the range. With
    /// in-thread resolution, kernel-side accesses to missing pages fail with EFAULT;
    /// call this first. Writing prefaults dirty the pages (their bytes are unchanged).
    ///
    /// # Errors
    /// [`Error::OutOfRange`] if the range does not lie inside the mapping;
    /// [`Error::ReadOnly`] for a writing prefault of a read-only mapping.
    pub fn prefault(&self, offset: usize, len: usize, write: bool) -> Result<(), Error> {
        self.check_writable(write)?;
        let bytes = self.atomic_bytes(offset, len)?;
        let first = offset / PAGE_SIZE;
        let last = (offset + len).div_ceil(PAGE_SIZE);
        for page in first..last {
            let at = (page * PAGE_SIZE).max(offset) - offset;
            if write {
                // A compare-exchange of a byte with itself: a locked write cycle, so it
                // faults as a store, and changes nothing even if another thread races it.
                // (`fetch_add(0)` would not do: LLVM turns idempotent RMWs into loads.)
                let value = bytes[at].load(Ordering::Relaxed);
                let _ =
                    bytes[at].compare_exchange(value, value, Ordering::Relaxed, Ordering::Relaxed);
            } else {
                bytes[at].load(Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// The first byte of the mapping. Reads and writes through it fault as udax serves
    /// them; dereferencing it is `unsafe` in the usual way (stay inside `len()`, no data
    /// races between your threads).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use udax::{Mapping, MemStore, Options};
    ///
    /// let mapping = Mapping::new(Arc::new(MemStore::new(1 << 20)), Options::default())?;
    /// let words = mapping.as_ptr().cast::<u64>();
    /// // SAFETY: both words lie inside the mapping, which outlives the accesses, and no
    /// // other thread touches them.
    /// unsafe {
    ///     words.add(1).write(42);           // one write fault: the page is dirty
    ///     assert_eq!(words.read(), 0);      // same page: no fault
    ///     assert_eq!(words.add(1).read(), 42);
    /// }
    /// assert_eq!(mapping.stats().write_faults, 1);
    /// mapping.close()?;
    /// # Ok::<(), udax::Error>(())
    /// ```
    pub fn as_ptr(&self) -> *mut u8 {
        self.region.base() as *mut u8
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Whether the mapping is empty (never: a mapping has at least one page).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The whole mapping as a byte slice.
    ///
    /// # Safety
    /// While the slice lives, nothing may write the mapping: no [`Mapping::write_at`], no
    /// writes through [`Mapping::as_ptr`] from any thread.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the region is mapped for `len` bytes while `self` lives; the caller
        // promises no writes during the borrow. Faults are served by the resolver.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len()) }
    }

    /// The whole mapping as a mutable byte slice. Writes through it to a read-only
    /// mapping raise SIGSEGV, as with any PROT_READ memory.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `&mut self` excludes every other safe access for the borrow's life; udax
        // itself only reads the bytes in writeback while the pages are write-protected and
        // locked (a write through the slice then waits in its fault), never writes them.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), self.len()) }
    }

    /// Copies `buf.len()` bytes at `offset` out of the mapping (faulting as a load would).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use udax::{Mapping, MemStore, Options};
    ///
    /// let mapping = Mapping::new(Arc::new(MemStore::new(1 << 20)), Options::default())?;
    /// mapping.write_at(4096, b"hello")?;        // one fault: writable and dirty
    /// let mut buf = [0u8; 5];
    /// mapping.read_at(4096, &mut buf)?;         // resident: no fault
    /// assert_eq!(&buf, b"hello");
    /// mapping.read_at(8192, &mut buf)?;         // a hole: the shared zero page
    /// assert_eq!(buf, [0; 5]);
    /// let stats = mapping.stats();
    /// assert_eq!((stats.write_faults, stats.zero_faults), (1, 1));
    /// mapping.close()?;
    /// # Ok::<(), udax::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::OutOfRange`] if the range does not lie inside the mapping. A page whose
    /// fault cannot be served (the store failed) raises SIGBUS, as a load would.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), Error> {
        let bytes = self.atomic_bytes(offset, buf.len())?;
        for (out, byte) in buf.iter_mut().zip(bytes) {
            *out = byte.load(Ordering::Relaxed);
        }
        Ok(())
    }

    /// Copies `buf` into the mapping at `offset` (faulting as a store would).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use udax::{Mapping, MemStore, Options};
    ///
    /// let mapping = Mapping::new(Arc::new(MemStore::new(1 << 20)), Options::default())?;
    /// mapping.write_at(4096 - 2, b"span")?;     // crosses a page boundary: two faults
    /// assert_eq!(mapping.stats().write_faults, 2);
    /// assert!(mapping.write_at(1 << 20, b"x").is_err()); // past the end: OutOfRange
    /// mapping.close()?;
    /// # Ok::<(), udax::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::OutOfRange`] if the range does not lie inside the mapping;
    /// [`Error::ReadOnly`] for a read-only mapping. A page whose fault cannot be served
    /// (the store failed, no space) raises SIGBUS, as a store would.
    pub fn write_at(&self, offset: usize, buf: &[u8]) -> Result<(), Error> {
        self.check_writable(true)?;
        let bytes = self.atomic_bytes(offset, buf.len())?;
        for (byte, value) in bytes.iter().zip(buf) {
            byte.store(*value, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Whether the mapping is read-only ([`Options::read_only`]).
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Refuses a write to a read-only mapping (it would raise SIGSEGV).
    fn check_writable(&self, write: bool) -> Result<(), Error> {
        if write && self.read_only {
            return Err(Error::ReadOnly);
        }
        Ok(())
    }

    /// `offset..offset+len` of the mapping as atomic bytes: racing accesses from other
    /// threads through `read_at`/`write_at` are then data-race free.
    fn atomic_bytes(&self, offset: usize, len: usize) -> Result<&[AtomicU8], Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => {}
            _ => {
                return Err(Error::OutOfRange {
                    offset,
                    len,
                    mapping_len: self.len(),
                });
            }
        }
        // SAFETY: the range lies inside the mapping (checked above), which stays mapped
        // while `self` is borrowed; AtomicU8 has the layout of u8 and no alignment needs.
        Ok(unsafe { std::slice::from_raw_parts(self.as_ptr().add(offset).cast(), len) })
    }

    /// Writes back every dirty page, then makes the store durable. Returns the first
    /// error of the writeback, or of a fault served since the last flush.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use udax::{Mapping, MemStore, Options, Store};
    ///
    /// let store = Arc::new(MemStore::new(1 << 20));
    /// let mapping = Mapping::new(store.clone(), Options::default())?;
    /// mapping.write_at(0, b"durable")?;
    /// mapping.flush()?;                          // exactly one page written back
    /// assert_eq!(mapping.stats().pages_written_back, 1);
    /// let mut bytes = [0u8; 7];
    /// store.read_at(0, &mut bytes)?;
    /// assert_eq!(&bytes, b"durable");
    /// mapping.close()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Store`] if a write or the sync failed (the pages stay dirty and the next
    /// flush tries them again); [`Error::FaultFailed`] for a fault that could not be
    /// served since the last flush (its access got SIGBUS); [`Error::Uffd`] if a page
    /// could not be write-protected.
    pub fn flush(&self) -> Result<(), Error> {
        self.check_owner()?;
        writeback::flush(&self.region)
    }

    /// Refuses in a forked child (see the type's doc on fork).
    fn check_owner(&self) -> Result<(), Error> {
        if self.owner != std::process::id() {
            return Err(Error::ForeignProcess { owner: self.owner });
        }
        Ok(())
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.region.stats()
    }

    /// Flushes, stops serving faults and unmaps, returning any error of the flush.
    ///
    /// # Errors
    /// As [`Mapping::flush`].
    pub fn close(mut self) -> Result<(), Error> {
        self.check_owner()?;
        let result = self.flush();
        self.stop();
        result
    }

    fn stop(&mut self) {
        exit::forget(&self.region);
        if let Some(resolver) = self.resolver.take() {
            resolver.stop();
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.owner != std::process::id() {
            // A forked child's copy: the region's memory is not mapped here (the range may
            // even hold the child's own memory by now), its uffd and pool are the
            // parent's. Unmapping, unregistering or flushing would act on them: leak it.
            std::mem::forget(self.resolver.take());
            std::mem::forget(Arc::clone(&self.region));
            return;
        }
        if self.resolver.is_some() {
            // Like munmap of a shared mapping: never lose data. An error here has no one
            // to go to; close() is the way to see it.
            let _ = self.flush();
            self.stop();
        }
    }
}

/// Checks a fixed address: 2 MiB-aligned for 2 MiB faults (the 4 KiB alignment and the
/// range itself are checked by the reservation).
fn check_placement(options: &Options) -> Result<(), Error> {
    let address = match options.placement {
        Placement::Any => return Ok(()),
        Placement::At(address) | Placement::Replace(address) => address,
    };
    if options.granularity == Some(Granularity::Huge) && address % HUGE_PAGE_SIZE != 0 {
        return Err(Error::IncompatibleOptions {
            reason: "2 MiB faults need a 2 MiB-aligned address",
        });
    }
    Ok(())
}

/// Checks the requested length against the store.
fn mapping_len(store_len: u64, requested: Option<u64>) -> Result<usize, Error> {
    let len = requested.unwrap_or(store_len);
    if len == 0 {
        return Err(Error::EmptyMapping);
    }
    if len % PAGE_SIZE as u64 != 0 {
        return Err(Error::UnalignedLength { len });
    }
    if len > store_len {
        return Err(Error::StoreTooShort { len, store_len });
    }
    usize::try_from(len).map_err(|_| Error::StoreTooShort { len, store_len })
}
