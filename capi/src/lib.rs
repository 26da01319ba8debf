//! libudax: udax for C and C++.
//!
//! Two APIs over the same library (headers in `include/`):
//!
//! - udax's own (`udax.h`, [`native`]): map a file or a descriptor with options (budget,
//!   granularity, resolution, dirty tracking, read-only, address), flush, prefault, stats,
//!   unmap; failures return a negative errno and leave a message for `udax_strerror`.
//! - UMap's (`umap/umap.h`, [`umap`]): `umap`, `uunmap`, `umap_flush`, `umap_prefetch`,
//!   `umap_fetch_and_pin`, `umap_has_write_support` and the `umapcfg_*` getters, configured
//!   by the `UMAP_*` environment variables read once on first use ([`umap_config`]), so
//!   that a program written for LLNL UMap 2.1 builds and runs unchanged, except that every
//!   failure returns `UMAP_FAILED`/-1 with errno instead of aborting.
//!
//! No function unwinds into C: each body runs under [`ffi::guard`], which turns a panic
//! into an error (EIO).

pub mod ffi;
pub mod native;
pub mod umap;
pub mod umap_config;
