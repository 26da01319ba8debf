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
    /// A write was asked of a read-only mapping.
    #[error("the mapping is read-only: map it without Options::read_only to write")]
    ReadOnly,
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
