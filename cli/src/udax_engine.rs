//! The udax engine: a [`udax::Mapping`] of the store file, faults served in user space.

use std::path::Path;
use std::sync::Arc;

use udax::{FileStore, Mapping, Options, Stats, Store};

use crate::args::Variant;

use crate::engine::{Engine, Region};
use crate::error::CliError;

/// A udax mapping of the first `len` bytes of a store file.
pub struct UdaxMap {
    mapping: Mapping,
}

impl UdaxMap {
    /// Opens the store file at `path` and maps `len` bytes of it.
    pub fn new(
        path: &Path,
        len: u64,
        variant: &Variant,
        budget: Option<u64>,
    ) -> Result<UdaxMap, CliError> {
        let store = FileStore::open(path)
            .map_err(|e| CliError::failed(format!("opening store {}", path.display()), e))?;
        UdaxMap::over(Arc::new(store), len, variant, budget)
    }

    /// Maps `len` bytes of `store`.
    pub fn over(
        store: Arc<dyn Store>,
        len: u64,
        variant: &Variant,
        budget: Option<u64>,
    ) -> Result<UdaxMap, CliError> {
        let mut options = Options::default()
            .len(len)
            .resolution(variant.resolution.value)
            .dirty_tracking(variant.tracking.value)
            .read_ahead(variant.read_ahead);
        if let Some(granularity) = variant.granularity.value {
            options = options.granularity(granularity);
        }
        if let Some(budget) = budget {
            options = options.budget(budget);
        }
        let mapping = Mapping::new(store, options).map_err(map_error)?;
        Ok(UdaxMap { mapping })
    }

    /// Flushes and unmaps, reporting any error.
    pub fn close(self) -> Result<(), CliError> {
        self.mapping
            .close()
            .map_err(|e| CliError::failed("closing the udax mapping", e))
    }
}

/// A userfaultfd error at mapping time is the user's to fix (permissions, kernel
/// features; the library's message names the cause and the fix); anything else is a failure.
pub fn map_error(error: udax::Error) -> CliError {
    match error {
        udax::Error::Uffd(e) => CliError::bad_as_is(e),
        other => CliError::failed("mapping the store with udax", other),
    }
}

impl Engine for UdaxMap {
    fn region(&self) -> Region {
        // SAFETY: the mapping is readable and writable over as_ptr()..+len(), page-aligned,
        // and stays mapped until the Mapping is dropped or closed, which consumes self.
        unsafe { Region::new(self.mapping.as_ptr(), self.mapping.len()) }
    }

    fn flush(&self) -> Result<(), CliError> {
        self.mapping
            .flush()
            .map_err(|e| CliError::failed("udax flush", e))
    }

    fn counters(&self) -> Option<Stats> {
        Some(self.mapping.stats())
    }

    fn maps_page_cache(&self) -> bool {
        false
    }
}

/// Checks that userfaultfd can be used, by mapping one page of memory, before any file is
/// made or any time is spent.
pub fn probe() -> Result<(), CliError> {
    let store = udax::MemStore::new(udax::PAGE_SIZE as u64);
    let mapping = Mapping::new(Arc::new(store), Options::default()).map_err(map_error)?;
    mapping
        .close()
        .map_err(|e| CliError::failed("closing the probe mapping", e))
}
