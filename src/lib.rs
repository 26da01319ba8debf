//! udax: a DAX-style memory-mapped view of any store, with page faults served in user
//! space through Linux userfaultfd.
//!
//! A program maps a [`Store`] (a sparse file, memory) and uses it as plain memory. Faults
//! follow the policy of the kernel's DAX files: a read of a hole maps the shared zero
//! page, the first write to a page is one fault that installs it writable and dirty,
//! clean pages are write-protected so their first write is one fault, and
//! [`Mapping::flush`] writes back exactly the dirty pages. The same engine serves memory
//! of another process handed over with its userfaultfd ([`Adopted`]).
//!
//! ```
//! use std::sync::Arc;
//! use udax::{FileStore, Mapping, Options};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("example.img");
//! let store = Arc::new(FileStore::create(&path, 64 << 20)?); // 64 MiB, all hole
//! let mapping = Mapping::new(store, Options::default())?;
//! mapping.write_at(4096, b"hello")?;          // one write fault, page now dirty
//! let mut buf = [0u8; 5];
//! mapping.read_at(4096, &mut buf)?;           // no fault: the page is resident
//! assert_eq!(&buf, b"hello");
//! mapping.flush()?;                           // writes back exactly one page
//! assert_eq!(mapping.stats().pages_written_back, 1);
//! mapping.close()?;
//! # Ok(()) }
//! ```
//!
//! The crate is built in floors, each importing only the ones below it (DESIGN.md and
//! ARCHITECTURE.md describe them; `tests/layers.rs` checks the imports):
//! `sys` (system calls) and `store` -> `engine` (a region and its fault policy) ->
//! `resolve` (who serves faults) -> front-ends (`mapping`, `adopted`, with `options`).

#![deny(missing_docs)]

mod adopted;
mod engine;
mod error;
mod exit;
mod mapping;
mod options;
mod resolve;
pub mod store;
mod sys;

pub use adopted::{Adopted, AdoptedRange};
pub use engine::config::{DirtyTracking, Granularity};
pub use engine::shared_budget::SharedBudget;
pub use engine::stats::Stats;
pub use error::Error;
pub use mapping::Mapping;
pub use options::Options;
pub use resolve::Resolution;
#[doc(hidden)]
pub use resolve::failure::inject_serve_failures;
pub use store::{
    Extent, ExtentKind, FileStore, LayeredStore, MemStore, Serving, Store, StoreError,
};
#[cfg(feature = "nbd")]
pub use store::{NbdConfig, NbdStats, NbdStore};
#[cfg(feature = "rbd")]
pub use store::{RbdConfig, RbdStats, RbdStore, RbdTarget};
#[doc(hidden)]
pub use sys::huge_zero::available as huge_zero_available;
pub use sys::uffd::UffdError;

/// The base page size udax tracks (x86-64 and arm64 4 KiB kernels).
pub const PAGE_SIZE: usize = 4096;
/// The huge (PMD) page size on x86-64.
pub const HUGE_PAGE_SIZE: usize = 2 << 20;
/// Pages in a 2 MiB range.
pub(crate) const HUGE_PAGES: usize = HUGE_PAGE_SIZE / PAGE_SIZE;

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
