//! The library's error type, shared by every floor.

use crate::store::StoreError;
use crate::sys::uffd::UffdError;

/// Errors of mapping, flushing and closing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A mapping of zero bytes was asked for.
    #[error(
        "cannot map 0 bytes: the store (or the requested length) must hold at least one 4096-byte page"
    )]
    EmptyMapping,
    /// The requested length is not a whole number of pages.
    #[error("length {len} is not a multiple of 4096: map a page-aligned length")]
    UnalignedLength {
        /// The requested length.
        len: u64,
    },
    /// The store is shorter than the requested mapping.
    #[error("store holds {store_len} bytes but {len} were requested: grow the store or map less")]
    StoreTooShort {
        /// Bytes requested.
        len: u64,
        /// Bytes the store holds.
        store_len: u64,
    },
    /// Options that cannot work together.
    #[error("incompatible options: {reason}")]
    IncompatibleOptions {
        /// Why.
        reason: &'static str,
    },
    /// A range handed to an adopted region cannot be served.
    #[error("range {address:#x}+{len} at store offset {offset} cannot be served: {reason}")]
    BadRange {
        /// Its address, in the memory of the process that owns it.
        address: usize,
        /// Its length.
        len: usize,
        /// Where it starts in the store.
        offset: u64,
        /// Why.
        reason: &'static str,
    },
    /// A range outside the mapping was passed to `read_at`/`write_at`.
    #[error("range {offset}+{len} lies outside the mapping of {mapping_len} bytes")]
    OutOfRange {
        /// Start of the range.
        offset: usize,
        /// Its length.
        len: usize,
        /// The mapping's length.
        mapping_len: usize,
    },
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A userfaultfd operation failed (or userfaultfd is unavailable).
    #[error(transparent)]
    Uffd(#[from] UffdError),
    /// A fault could not be served; the access got SIGBUS. Reported by the next flush.
    #[error(
        "a fault at store offset {offset} could not be served (the access got SIGBUS): {source}"
    )]
    FaultFailed {
        /// Byte offset in the store of the failed page (for a `Mapping`, its offset in
        /// the mapping too).
        offset: u64,
        /// What the store said.
        #[source]
        source: StoreError,
    },
    /// The store shrank underneath the mapping (another process truncated its file): the
    /// dirty pages at or past its new end were dropped, as the kernel drops a truncated
    /// file's pages, and every access there now gets SIGBUS. Reported once, by the flush
    /// that dropped them (or the next one, if eviction did).
    #[error(
        "the store shrank to {size} bytes while mapped (truncated by something outside udax): \
         {pages} dirty pages at or past its new end were dropped, and accesses there get \
         SIGBUS; grow the store back before writing there, or map less"
    )]
    Truncated {
        /// The store's size now.
        size: u64,
        /// Dirty pages dropped.
        pages: u64,
    },
    /// A store sync failed after written-back pages had left memory (evicted): the store
    /// may have lost them, and udax has no copy to write again. Sticks: every later flush
    /// of the mapping returns it.
    #[error(
        "a sync of the store failed ({source}) after {pages} written-back pages had left \
         memory: the store may have lost them and they cannot be written again; every \
         flush of this mapping fails from now on (check the store, then map it again)"
    )]
    WritebackLost {
        /// Pages that may be lost.
        pages: u64,
        /// What the failed sync said.
        #[source]
        source: std::io::Error,
    },
    /// The handler threads could no longer read the mapping's faults from its
    /// userfaultfd and gave up on it: pages not present now raise SIGBUS (never a hang),
    /// writes are no longer tracked, and every flush writes back every resident page and
    /// returns this error.
    #[error(
        "the handler threads could not read faults from the userfaultfd ({source}) and \
         gave up: pages not yet present now raise SIGBUS, and every flush writes back all \
         resident pages and fails; close the mapping and map the store again"
    )]
    HandlerFailed {
        /// What poll(2) or read(2) of the userfaultfd said.
        #[source]
        source: std::io::Error,
    },
    /// The resident budget is too small to make progress.
    #[error(
        "a budget of {budget} bytes is too small: give at least {minimum} bytes (a single \
         instruction may need several pages resident at once)"
    )]
    BudgetTooSmall {
        /// The budget asked for.
        budget: u64,
        /// The smallest budget accepted.
        minimum: u64,
    },
    /// A memory-management call (mmap, madvise, thread spawn) failed.
    #[error("{op} failed: {source}")]
    Os {
        /// The call.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
