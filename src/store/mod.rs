//! Stores: where the bytes of a mapping live (the iomap and block-device analog).
//!
//! A store answers "what is at this offset: hole or data, and for how long", reads,
//! writes, allocates, punches holes and makes itself durable. It knows nothing of
//! memory mappings, userfaultfd or entry states: the fault policy asks, the store answers.
//!
//! Offsets and lengths are bytes. Callers (the fault and writeback paths) only ever pass
//! ranges inside `0..len()`; a store still checks and returns [`StoreError::OutOfRange`]
//! rather than panicking.

mod extent_cache;
#[cfg(any(feature = "nbd", feature = "rbd"))]
mod extent_runs;
mod file;
mod file_ahead;
mod file_direct;
mod layered;
mod mem;
#[cfg(feature = "nbd")]
mod nbd;
#[cfg(feature = "nbd")]
mod nbd_ffi;
pub(crate) mod private_view;
#[cfg(feature = "rbd")]
mod rbd;
#[cfg(feature = "rbd")]
mod rbd_ffi;
mod read_ahead;

pub use file::FileStore;
pub use layered::LayeredStore;
pub use mem::MemStore;
#[cfg(feature = "nbd")]
pub use nbd::{NbdConfig, NbdStats, NbdStore};
#[cfg(feature = "rbd")]
pub use rbd::{RbdConfig, RbdStats, RbdStore, RbdTarget};

use std::io;

/// How a mapping reads from its store, told to the store before its first fault
/// ([`Store::serve_mapping`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Serving {
    /// The mapping's resident budget in bytes, if it has one.
    pub budget: Option<u64>,
    /// The mapping reads the 2 MiB ranges ahead of its sequential faults itself (no
    /// budget: `Options::read_ahead`): a sequential 2 MiB read is needed now,
    /// and the next ones are already asked for, so the store need not read ahead of it.
    pub reads_ahead: bool,
}

/// What a store holds at an offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentKind {
    /// Never written and not allocated: reads as zeros, costs no space.
    Hole,
    /// Allocated (possibly written): reads return the stored bytes.
    Data,
}

/// A run of one [`ExtentKind`] starting at the queried offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Hole or data.
    pub kind: ExtentKind,
    /// Bytes from the queried offset to the end of the run (at least 1, at most the
    /// rest of the store). A store may report a shorter run than the truth, never a longer one.
    pub len: u64,
}

/// Errors of a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening a store that does not exist.
    #[error(
        "store file {path} does not exist: create it first (e.g. FileStore::create) or check the path"
    )]
    NotFound {
        /// The path that was looked up.
        path: std::path::PathBuf,
    },
    /// Opening a store that may not be written (permissions, read-only file system, immutable).
    #[error("store file {path} is not writable ({source}): fix its permissions or map a copy")]
    NotWritable {
        /// The path that was opened.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Opening or creating a store failed for another reason.
    #[error("cannot open store file {path}: {source}")]
    Open {
        /// The path that was opened.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A network store could not be reached: a malformed URI, no server, a failed or
    /// timed-out handshake.
    #[error("cannot connect to {uri}: {reason}: check that the server runs and the URI")]
    Connect {
        /// The URI given.
        uri: String,
        /// What the client library said.
        reason: String,
    },
    /// A read-only export or image opened for writing (mappings are writable).
    #[error("{uri} is read-only: serve it writable (e.g. qemu-nbd without -r) or map a copy")]
    ReadOnly {
        /// The store's URI or path.
        uri: String,
    },
    /// The underlying I/O failed.
    #[error("store {op} at offset {offset} failed: {source}")]
    Io {
        /// The operation: "read", "write", "allocate", "punch hole", "sync", "extent query".
        op: &'static str,
        /// Byte offset of the operation.
        offset: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// No space left to allocate or write (ENOSPC, EDQUOT).
    #[error("store is out of space at offset {offset}")]
    NoSpace {
        /// Byte offset of the operation that needed space.
        offset: u64,
    },
    /// A range outside the store.
    #[error("range {offset}+{len} lies outside the store of {store_len} bytes")]
    OutOfRange {
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// The store's length.
        store_len: u64,
    },
    /// A range at or past the store's current end: something outside udax (another
    /// process, `truncate(1)`) shrank the store while it was mapped. As with the kernel's
    /// mmap of a truncated file, the fault gets SIGBUS and flush drops the pages there.
    #[error(
        "offset {offset} lies beyond the end of the store, which something outside udax \
         shrank to {size} bytes while it was mapped: the pages there are gone (grow the \
         store back, or map less)"
    )]
    BeyondEnd {
        /// Start of the range that was asked for.
        offset: u64,
        /// The store's size now.
        size: u64,
    },
}

impl StoreError {
    /// Wraps an OS error, turning ENOSPC and EDQUOT into [`StoreError::NoSpace`].
    pub fn from_io(op: &'static str, offset: u64, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::NoSpace { offset },
            _ => StoreError::Io { op, offset, source },
        }
    }
}

/// A backing store for a mapping.
///
/// Implementations must be safe to call from several threads at once; concurrent calls
/// touch disjoint 4 KiB pages except `sync`, `len` and `extent`.
pub trait Store: Send + Sync {
    /// Size of the store in bytes.
    fn len(&self) -> u64;

    /// The store's size now, which is less than [`Store::len`] if something outside udax
    /// shrank it (a file truncated by another process). Flush asks once per call, to drop
    /// the pages beyond the end; stores that cannot shrink keep this default.
    ///
    /// # Errors
    /// [`StoreError::Io`] if the store cannot say.
    fn current_len(&self) -> Result<u64, StoreError> {
        Ok(self.len())
    }

    /// Whether the store has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What is at `offset` (which is `< len()`), and for how long.
    ///
    /// # Errors
    /// [`StoreError::OutOfRange`] past the end; [`StoreError::BeyondEnd`] at or past
    /// the end of a store that shrank since it was opened; [`StoreError::Io`] if the store
    /// cannot say.
    fn extent(&self, offset: u64) -> Result<Extent, StoreError>;

    /// Fills `buf` with the bytes at `offset`. Holes read as zeros.
    ///
    /// # Errors
    /// [`StoreError::OutOfRange`] for a range past the end; [`StoreError::BeyondEnd`] for
    /// one past the end of a store that shrank; [`StoreError::Io`] if the read fails (the
    /// fault path then poisons the page: its access gets SIGBUS).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError>;

    /// Writes all of `buf` at `offset`, allocating as needed. Never grows the store.
    ///
    /// # Errors
    /// [`StoreError::OutOfRange`]; [`StoreError::BeyondEnd`] (nothing written) for a
    /// range past the end of a store that shrank; [`StoreError::NoSpace`] when the store is full;
    /// [`StoreError::Io`] otherwise (flush returns it and keeps the pages dirty).
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), StoreError>;

    /// Makes `offset..offset+len` data (allocated, reading as its old bytes or zeros),
    /// so that a later write there cannot fail for lack of space.
    ///
    /// # Errors
    /// [`StoreError::OutOfRange`]; [`StoreError::BeyondEnd`] past the end of a store that
    /// shrank (never grows it); [`StoreError::NoSpace`] when the space is not there
    /// (the faulting write then gets SIGBUS, as on a full DAX file system);
    /// [`StoreError::Io`] otherwise.
    fn allocate(&self, offset: u64, len: u64) -> Result<(), StoreError>;

    /// Turns `offset..offset+len` back into a hole (reads as zeros, frees space).
    ///
    /// # Errors
    /// [`StoreError::OutOfRange`]; [`StoreError::Io`] if the store refuses.
    fn punch_hole(&self, offset: u64, len: u64) -> Result<(), StoreError>;

    /// Makes every completed write durable.
    ///
    /// # Errors
    /// [`StoreError::Io`] if the store cannot promise durability (flush returns it).
    fn sync(&self) -> Result<(), StoreError>;

    /// Whether `extent`, `read_at`, `write_at` and `allocate` may run inside a signal
    /// handler (the faulting thread's SIGBUS handler, in in-thread resolution): no memory
    /// allocation, no lock that the interrupted code could hold, only async-signal-safe
    /// system calls. Stores that say no are served by handler threads.
    fn is_signal_safe(&self) -> bool {
        false
    }

    /// Tells the store that a mapping serves its faults from it from now on, and how
    /// ([`Serving`]). Called once per mapping, before its first fault, on an ordinary
    /// thread (never in a signal handler). A store that caches what it reads
    /// ([`FileStore`]: the page cache) may start reading ahead here; under a budget, keep
    /// its cache of the bytes it handed over small (the mapping holds them, and the
    /// budget is to bound what the mapping costs); and leave to the mapping the runs it
    /// reads ahead itself. The default does nothing.
    fn serve_mapping(&self, serving: Serving) {
        let _ = serving;
    }

    /// Bytes of space the store has allocated (for reports), if it knows.
    fn allocated_bytes(&self) -> Option<u64> {
        None
    }
}

/// Checks that `offset..offset+len` lies inside a store of `store_len` bytes.
pub(crate) fn check_range(offset: u64, len: u64, store_len: u64) -> Result<(), StoreError> {
    match offset.checked_add(len) {
        Some(end) if end <= store_len => Ok(()),
        _ => Err(StoreError::OutOfRange {
            offset,
            len,
            store_len,
        }),
    }
}

/// The error of writing (`op`) a read-only store at `offset`: EROFS.
pub(crate) fn read_only(op: &'static str, offset: u64) -> StoreError {
    let source = io::Error::from_raw_os_error(libc::EROFS);
    StoreError::Io { op, offset, source }
}
