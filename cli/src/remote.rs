//! Stores the command reaches by URI rather than by path: an NBD export
//! (`nbd://host[:port]/export`, `nbd+unix:///export?socket=PATH`) or a Ceph RBD image
//! (`rbd:POOL/IMAGE[?conf=PATH]`, in a build with `--features rbd`). One type over both,
//! so `inspect`, `bench --store` and lazy-restore take either: opening with a one-line
//! error, the requests the store sent, and the local copy a user would make without udax
//! (`nbdcopy`, `rbd export`).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use udax::{NbdConfig, NbdStore, Store, StoreError};

use crate::error::CliError;

/// How long one request may take before it fails (the access gets SIGBUS).
const TIMEOUT: Duration = Duration::from_secs(30);

/// Whether `text` names a remote store rather than a file.
pub fn is_uri(text: &str) -> bool {
    crate::nbd::is_uri(text) || text.starts_with("rbd:")
}

/// What a remote store sent, in either protocol's terms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteStats {
    /// Read requests.
    pub reads: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Write requests.
    pub writes: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Write-zeroes requests.
    pub zeroes: u64,
    /// Flushes.
    pub flushes: u64,
    /// Layout queries (NBD BLOCK_STATUS, RBD diff-iterate).
    pub layout_queries: u64,
    /// Failed requests.
    pub failures: u64,
    /// The most requests in flight at once.
    pub in_flight_peak: u64,
}

impl RemoteStats {
    /// Adds `run`'s counts (the peak is the larger).
    pub fn add(&mut self, run: RemoteStats) {
        self.reads += run.reads;
        self.bytes_read += run.bytes_read;
        self.writes += run.writes;
        self.bytes_written += run.bytes_written;
        self.zeroes += run.zeroes;
        self.flushes += run.flushes;
        self.layout_queries += run.layout_queries;
        self.failures += run.failures;
        self.in_flight_peak = self.in_flight_peak.max(run.in_flight_peak);
    }
}

/// An open remote store.
#[derive(Clone, Debug)]
pub enum Remote {
    /// An NBD export.
    Nbd(Arc<NbdStore>),
    /// A Ceph RBD image.
    #[cfg(feature = "rbd")]
    Rbd(Arc<udax::RbdStore>),
}

impl Remote {
    /// Opens the store at `uri` (read-only if `read_only`).
    pub fn open(uri: &str, read_only: bool) -> Result<Remote, CliError> {
        let opened = if uri.starts_with("rbd:") {
            open_rbd(uri, read_only)?
        } else {
            let config = NbdConfig {
                read_only,
                timeout: TIMEOUT,
                ..NbdConfig::default()
            };
            Remote::Nbd(Arc::new(
                NbdStore::open_with(uri, &config).map_err(|e| open_error(uri, e))?,
            ))
        };
        Ok(opened)
    }

    /// The protocol, for reports: "NBD" or "RBD".
    pub fn protocol(&self) -> &'static str {
        match self {
            Remote::Nbd(store) => protocol_of(store.uri()),
            #[cfg(feature = "rbd")]
            Remote::Rbd(store) => protocol_of(store.uri()),
        }
    }

    /// The store, to map or copy.
    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            Remote::Nbd(store) => store.clone(),
            #[cfg(feature = "rbd")]
            Remote::Rbd(store) => store.clone(),
        }
    }

    /// What the store has sent so far.
    pub fn stats(&self) -> RemoteStats {
        match self {
            Remote::Nbd(store) => {
                let s = store.stats();
                RemoteStats {
                    reads: s.reads,
                    bytes_read: s.bytes_read,
                    writes: s.writes,
                    bytes_written: s.bytes_written,
                    zeroes: s.zeroes,
                    flushes: s.flushes,
                    layout_queries: s.block_status,
                    failures: s.failures,
                    in_flight_peak: s.in_flight_peak,
                }
            }
            #[cfg(feature = "rbd")]
            Remote::Rbd(store) => {
                let s = store.stats();
                RemoteStats {
                    reads: s.reads,
                    bytes_read: s.bytes_read,
                    writes: s.writes,
                    bytes_written: s.bytes_written,
                    zeroes: s.zeroes,
                    flushes: s.flushes,
                    layout_queries: s.extent_queries,
                    failures: s.failures,
                    in_flight_peak: s.in_flight_peak,
                }
            }
        }
    }
}

/// The protocol of a remote store's URI, for reports: "NBD" or "RBD".
pub fn protocol_of(uri: &str) -> &'static str {
    if uri.starts_with("rbd:") {
        "RBD"
    } else {
        "NBD"
    }
}

/// The tool a user copies the store to a local file with, for reports.
pub fn copy_tool(uri: &str) -> &'static str {
    if uri.starts_with("rbd:") {
        "rbd export"
    } else {
        "nbdcopy"
    }
}

/// Copies the whole store at `uri` into a new sparse file `local` of `len` bytes, as a
/// user would without udax: `nbdcopy --destination-is-zero URI FILE`, or
/// `rbd [-c CONF] export POOL/IMAGE FILE` (which skips zeros).
pub fn copy_to_file(uri: &str, local: &Path, len: u64) -> Result<(), CliError> {
    let _ = std::fs::remove_file(local);
    let mut command = if uri.starts_with("rbd:") {
        let (pool, image, conf) = rbd_target(uri)?;
        let mut command = Command::new("rbd");
        if let Some(conf) = conf {
            command.arg("-c").arg(conf);
        }
        command.args(["export", "--no-progress", &format!("{pool}/{image}")]);
        command
    } else {
        std::fs::File::create_new(local)
            .and_then(|f| f.set_len(len))
            .map_err(|e| CliError::failed(format!("creating {}", local.display()), e))?;
        let mut command = Command::new("nbdcopy");
        command.args(["--destination-is-zero", uri]);
        command
    };
    let tool = copy_tool(uri);
    let output = command.arg(local).output().map_err(|e| {
        CliError::bad(
            format!("cannot run {tool}: {e}"),
            "install it (Debian: apt-get install libnbd-bin, or ceph-common for rbd)",
        )
    })?;
    if !output.status.success() {
        return Err(CliError::failed(
            tool,
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// A store error at open as the command's error: bad input when the user can fix it.
fn open_error(uri: &str, e: StoreError) -> CliError {
    match e {
        StoreError::Connect { .. } | StoreError::ReadOnly { .. } => CliError::bad_as_is(e),
        other => CliError::failed(format!("opening {uri}"), other),
    }
}

#[cfg(feature = "rbd")]
fn open_rbd(uri: &str, read_only: bool) -> Result<Remote, CliError> {
    let config = udax::RbdConfig {
        read_only,
        timeout: TIMEOUT,
        ..udax::RbdConfig::default()
    };
    let store = udax::RbdStore::open_with(uri, &config).map_err(|e| open_error(uri, e))?;
    Ok(Remote::Rbd(Arc::new(store)))
}

#[cfg(not(feature = "rbd"))]
fn open_rbd(uri: &str, _read_only: bool) -> Result<Remote, CliError> {
    Err(no_rbd(uri))
}

/// The error for an RBD URI given to a build without the `rbd` feature.
#[cfg(not(feature = "rbd"))]
fn no_rbd(uri: &str) -> CliError {
    CliError::bad(
        format!("{uri}: this udax was built without RBD support"),
        "build it with `cargo build --release -p udax-cli --features rbd` (needs librbd-dev)",
    )
}

/// The pool, image and conf of an RBD URI.
#[cfg(feature = "rbd")]
fn rbd_target(uri: &str) -> Result<(String, String, Option<std::path::PathBuf>), CliError> {
    let target = udax::RbdTarget::parse(uri).map_err(CliError::bad_as_is)?;
    Ok((target.pool, target.image, target.conf))
}

#[cfg(not(feature = "rbd"))]
fn rbd_target(uri: &str) -> Result<(String, String, Option<std::path::PathBuf>), CliError> {
    Err(no_rbd(uri))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_remote_uris_from_paths() {
        assert!(is_uri("nbd://localhost:10809/disk"));
        assert!(is_uri("rbd:rbd/disk?conf=/tmp/ceph.conf"));
        assert!(!is_uri("./rbd:x") && !is_uri("disk.img"));
        assert_eq!(copy_tool("rbd:p/i"), "rbd export");
    }

    #[cfg(not(feature = "rbd"))]
    #[test]
    fn an_rbd_uri_without_the_feature_says_how_to_build_it() {
        let error = Remote::open("rbd:p/i", true).expect_err("no rbd feature");
        assert!(error.to_string().contains("--features rbd"), "{error}");
    }
}
