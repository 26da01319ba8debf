//! `udax bench --store nbd://...`: udax maps the NBD export while the kernel baseline maps
//! the benchmark's local file. Before each udax run the file's prepared state is copied into
//! the export, and after a writing run the export is copied back into the file (both
//! untimed), so both engines start from the same bytes and the workload's check reads the
//! udax result. Each step opens its own connection (a store's extent cache assumes it is
//! the only writer), and each run's store starts cold: no cached layout, no connection.
//! The NBD requests of every workload and variant are summed and printed after the table.

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use udax::{FileStore, NbdStats, NbdStore, Store};

use crate::error::CliError;
use crate::size::format_bytes;

/// The export and the requests each workload sent to it.
pub struct NbdBench {
    uri: String,
    size: u64,
    /// (workload, variant label, summed requests of its runs), in run order.
    totals: Vec<(String, String, NbdStats)>,
}

impl NbdBench {
    /// Checks that the export at `uri` is writable and holds at least `size` bytes.
    pub fn new(uri: &str, size: u64) -> Result<NbdBench, CliError> {
        let store = crate::nbd::open(uri, false)?;
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
        })
    }

    /// Copies the local file at `local` into the export and opens a fresh store on it.
    pub fn before_run(&self, local: &Path) -> Result<Arc<NbdStore>, CliError> {
        let file = open_local(local)?;
        let export = crate::nbd::open(&self.uri, false)?;
        crate::nbd::copy(&file, &export, self.size).map_err(|e| {
            CliError::failed(format!("copying the prepared store into {}", self.uri), e)
        })?;
        drop(export);
        Ok(Arc::new(crate::nbd::open(&self.uri, false)?))
    }

    /// Records the run's requests; after a writing run copies the export back into `local`.
    pub fn after_run(
        &mut self,
        local: &Path,
        store: &NbdStore,
        writes: bool,
        workload: &str,
        variant: &str,
    ) -> Result<(), CliError> {
        self.add(workload, variant, store.stats());
        if writes {
            let file = open_local(local)?;
            let export = crate::nbd::open(&self.uri, true)?;
            crate::nbd::copy(&export, &file, self.size)
                .map_err(|e| CliError::failed(format!("copying {} back", self.uri), e))?;
        }
        Ok(())
    }

    fn add(&mut self, workload: &str, variant: &str, run: NbdStats) {
        let index = match self
            .totals
            .iter()
            .position(|(w, v, _)| w == workload && v == variant)
        {
            Some(index) => index,
            None => {
                let row = (
                    workload.to_string(),
                    variant.to_string(),
                    NbdStats::default(),
                );
                self.totals.push(row);
                self.totals.len() - 1
            }
        };
        let sum = &mut self.totals[index].2;
        sum.reads += run.reads;
        sum.bytes_read += run.bytes_read;
        sum.writes += run.writes;
        sum.bytes_written += run.bytes_written;
        sum.zeroes += run.zeroes;
        sum.flushes += run.flushes;
        sum.block_status += run.block_status;
        sum.failures += run.failures;
        sum.in_flight_peak = sum.in_flight_peak.max(run.in_flight_peak);
    }

    /// The requests table: one row per workload and variant, summed over its runs.
    pub fn write_summary(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "\nNBD requests of the udax runs ({}), summed over the repeats:",
            self.uri
        )?;
        writeln!(
            out,
            "  {:<17} {:<8} {:>8} {:>10} {:>8} {:>10} {:>7} {:>8} {:>7}",
            "workload",
            "variant",
            "READs",
            "read",
            "WRITEs",
            "written",
            "zeroes",
            "blk-stat",
            "peak"
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
                s.block_status,
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
