//! udax: a DAX-style memory-mapped view of any store, with page faults served in user
//! space through Linux userfaultfd.
//!
//! A program maps a [`Store`] (a sparse file, memory) and uses it as plain memory. Faults
//! follow the policy of the kernel's DAX files: a read of a hole maps the shared zero
//! page, the first write to a page is one fault that installs it writable and dirty,
//! clean pages are write-protected so their first write is one fault, and
//! [`Mapping::flush`] writes back exactly the dirty pages. See DESIGN.md for the pieces.
//!
//! ```no_run
//! use std::sync::Arc;
//! use udax::{FileStore, Mapping, Options};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Arc::new(FileStore::create("/tmp/udax-example.img", 64 << 20)?);
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

mod around;
mod entries;
mod error;
mod evict;
mod fault;
mod futex;
mod grace;
mod handler;
mod huge;
mod mapping;
mod sigbus;
mod stats;
pub mod store;
pub mod uffd;
mod writeback;

pub use error::Error;
pub use mapping::{DirtyTracking, Granularity, Mapping, Options, Resolution};
pub use stats::Stats;
pub use store::{Extent, ExtentKind, FileStore, MemStore, Store, StoreError};

/// The base page size udax tracks (x86-64 and arm64 4 KiB kernels).
pub const PAGE_SIZE: usize = 4096;
/// The huge (PMD) page size on x86-64.
pub const HUGE_PAGE_SIZE: usize = 2 << 20;

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
