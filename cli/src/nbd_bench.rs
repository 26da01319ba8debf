//! `udax bench --store URI` (an NBD export or an RBD image, see `remote.rs`): udax maps the
//! remote store while the kernel baseline maps the benchmark's local file. Before each udax run the file's prepared state is copied into
//! the export, and after a writing run the export is copied back into the file (both
//! untimed), so both engines start from the same bytes and the workload's check reads the
//! udax result. Each step opens its own connection (a store's extent cache assumes it is
//! the only writer), and each run's store starts cold: no cached layout, no connection.
//! The requests of every workload and variant are summed and printed after the table.

use std::io::{self, Write};
use std::path::Path;

use udax::FileStore;

use crate::error::CliError;
use crate::remote::{Remote, RemoteStats};
use crate::size::format_bytes;

/// The remote store and the requests each workload sent to it.
pub struct NbdBench {
    uri: String,
    size: u64,
    /// (workload, variant label, summed requests of its runs), in run order.
    totals: Vec<(String, String, RemoteStats)>,
    /// "NBD" or "RBD".
    protocol: &'static str,
}

impl NbdBench {
    /// Checks that the export at `uri` is writable and holds at least `size` bytes.
    pub fn new(uri: &str, size: u64) -> Result<NbdBench, CliError> {
        let remote = Remote::open(uri, false)?;
        let store = remote.store();
        if store.len() < size {
            return Err(CliError::bad(
                format!(
                    "export {uri} holds {} ({} bytes), less than --size {}",
                    format_bytes(store.len()),
                    store.len(),
                    format_bytes(size)
                ),
                format!(
                    "pass --size {} or less, or serve a larger image",
                    store.len() / 4096 * 4096
                ),
            ));
        }
        Ok(NbdBench {
            uri: uri.to_string(),
            size,
            totals: Vec::new(),
            protocol: remote.protocol(),
        })
    }

    /// Copies the local file at `local` into the export and opens a fresh store on it.
    pub fn before_run(&self, local: &Path) -> Result<Remote, CliError> {
        let file = open_local(local)?;
        let export = Remote::open(&self.uri, false)?;
        crate::nbd::copy(&file, export.store().as_ref(), self.size).map_err(|e| {
            CliError::failed(format!("copying the prepared store into {}", self.uri), e)
        })?;
        drop(export);
        Remote::open(&self.uri, false)
    }

    /// Records the run's requests; after a writing run copies the export back into `local`.
    pub fn after_run(
        &mut self,
        local: &Path,
        store: &Remote,
        writes: bool,
        workload: &str,
        variant: &str,
    ) -> Result<(), CliError> {
        self.add(workload, variant, store.stats());
        if writes {
            let file = open_local(local)?;
            let export = Remote::open(&self.uri, true)?;
            crate::nbd::copy(export.store().as_ref(), &file, self.size)
                .map_err(|e| CliError::failed(format!("copying {} back", self.uri), e))?;
        }
        Ok(())
    }

    fn add(&mut self, workload: &str, variant: &str, run: RemoteStats) {
        match self
            .totals
            .iter_mut()
            .find(|(w, v, _)| w == workload && v == variant)
        {
            Some((_, _, sum)) => sum.add(run),
            None => self
                .totals
                .push((workload.to_string(), variant.to_string(), run)),
        }
    }

    /// The requests table: one row per workload and variant, summed over its runs.
    pub fn write_summary(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "\n{} requests of the udax runs ({}), summed over the repeats:",
            self.protocol, self.uri
        )?;
        writeln!(
            out,
            "  {:<17} {:<8} {:>8} {:>10} {:>8} {:>10} {:>7} {:>8} {:>7}",
            "workload", "variant", "READs", "read", "WRITEs", "written", "zeroes", "layout", "peak"
        )?;
        for (workload, variant, s) in &self.totals {
            writeln!(
                out,
                "  {:<17} {:<8} {:>8} {:>10} {:>8} {:>10} {:>7} {:>8} {:>7}",
                workload,
                variant,
                s.reads,
                format_bytes(s.bytes_read),
                s.writes,
                format_bytes(s.bytes_written),
                s.zeroes,
                s.layout_queries,
                s.in_flight_peak
            )?;
        }
        Ok(())
    }
}

/// The benchmark's local file as a store.
fn open_local(path: &Path) -> Result<FileStore, CliError> {
    FileStore::open(path).map_err(|e| CliError::failed(format!("opening {}", path.display()), e))
}
