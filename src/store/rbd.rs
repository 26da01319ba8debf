//! [`RbdStore`]: a Ceph RBD image (a block image striped over a cluster's objects), through
//! librbd, Ceph's own client, by a small FFI (`rbd_ffi.rs`). crates.io's `ceph` crate wraps
//! librados only, and librbd is where striping, the object map and the exclusive lock
//! live. librbd's own cache is turned off (`rbd_cache = false`): the mapping is the cache,
//! and a write that returned is at the OSD, so a failed flush loses nothing the engine
//! has counted clean (with librbd's writeback cache it dropped the cached writes).
//!
//! | store operation | librbd call |
//! |---|---|
//! | `extent` | `rbd_diff_iterate2` over a window (256 MiB), exact extents (not whole objects), cached ([`ExtentRuns`]); what it does not list is a hole |
//! | `read_at` | `rbd_aio_read2` (a hole costs no OSD read: the object map answers) |
//! | `write_at` | `rbd_aio_write2` |
//! | `allocate` | `rbd_aio_write_zeroes` with THICK_PROVISION over the holes of the range |
//! | `punch_hole` | `rbd_aio_write_zeroes` without it (librbd may deallocate; `rbd_discard` skips partial objects, leaving their bytes) |
//! | `sync` | `rbd_aio_flush` |
//!
//! A query of the layout costs milliseconds (3.6 ms for 4 KiB on one node, mostly fixed),
//! a 4 KiB read 250 µs: one window answers the next faults without asking.
//!
//! **Failures never hang.** Every request is issued asynchronously and waited for with a
//! deadline ([`RbdConfig::timeout`]); the layout query, which librbd has only synchronous,
//! runs on a thread of its own and is waited for the same way. librados' own timeouts
//! (`client_mount_timeout`, `rados_mon_op_timeout`, `rados_osd_op_timeout`) are set to the
//! same value, so that the open is bounded too and an abandoned request ends by itself. A
//! request that fails or passes its deadline returns [`StoreError::Io`] (ETIMEDOUT for the
//! deadline): the fault path poisons the page (its access gets SIGBUS) and the next flush
//! reports the error. The next request is tried afresh: once the OSD is back it works.
//!
//! Invariant: while the store lives, nobody else writes to the image (the extent cache
//! keeps holes on that promise; librbd's exclusive lock moves between writers but does
//! not tell this cache).

use std::ffi::c_int;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::store::extent_runs::ExtentRuns;
use crate::store::rbd_ffi::{Image, Op, OpenArgs, RbdResult, THICK_PROVISION, c_string};
use crate::store::{Extent, ExtentKind, Store, StoreError, check_range};

/// The largest single request (the engine asks at most 2 MiB; a copy may ask more).
const MAX_REQUEST: u64 = 32 << 20;

/// How an [`RbdStore`] connects and waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RbdConfig {
    /// How long the open or one request may take before it fails with ETIMEDOUT (also
    /// librados' own timeouts, in whole seconds, at least 1). Default 10 s.
    pub timeout: Duration,
    /// Open the image for reading only. Default false.
    pub read_only: bool,
    /// Bytes of layout one query asks for. Default 256 MiB.
    pub extent_window: u64,
}

impl Default for RbdConfig {
    fn default() -> Self {
        RbdConfig {
            timeout: Duration::from_secs(10),
            read_only: false,
            extent_window: 256 << 20,
        }
    }
}

/// Where an RBD image is: `rbd:POOL/IMAGE[?conf=PATH]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RbdTarget {
    /// The pool.
    pub pool: String,
    /// The image in the pool.
    pub image: String,
    /// The cluster's ceph.conf; None: librados' default (`$CEPH_CONF`, `/etc/ceph/ceph.conf`).
    pub conf: Option<PathBuf>,
}

impl RbdTarget {
    /// Whether `text` is meant as an RBD URI (it starts with `rbd:`).
    pub fn is_uri(text: &str) -> bool {
        text.starts_with("rbd:")
    }

    /// Parses `rbd:POOL/IMAGE[?conf=PATH]`.
    ///
    /// # Errors
    /// [`StoreError::Connect`] naming what is malformed.
    pub fn parse(uri: &str) -> Result<RbdTarget, StoreError> {
        let bad = |reason: &str| StoreError::Connect {
            uri: uri.to_string(),
            reason: format!("{reason} (the form is rbd:POOL/IMAGE[?conf=PATH])"),
        };
        let rest = uri
            .strip_prefix("rbd:")
            .ok_or_else(|| bad("no rbd: prefix"))?;
        let (name, query) = match rest.split_once('?') {
            Some((name, query)) => (name, Some(query)),
            None => (rest, None),
        };
        let (pool, image) = name
            .split_once('/')
            .filter(|(p, i)| !p.is_empty() && !i.is_empty() && !i.contains('/'))
            .ok_or_else(|| bad("no POOL/IMAGE"))?;
        let conf = match query {
            None => None,
            Some(query) => match query.strip_prefix("conf=") {
                Some(path) if !path.is_empty() && !path.contains('&') => Some(PathBuf::from(path)),
                _ => return Err(bad("the only parameter is conf=PATH")),
            },
        };
        Ok(RbdTarget {
            pool: pool.to_string(),
            image: image.to_string(),
            conf,
        })
    }
}

/// What an [`RbdStore`] has asked the cluster so far (a snapshot of its counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RbdStats {
    /// Read requests.
    pub reads: u64,
    /// Bytes asked for by reads (holes included: librbd answers those from its object map).
    pub bytes_read: u64,
    /// Write requests.
    pub writes: u64,
    /// Bytes sent by writes.
    pub bytes_written: u64,
    /// Write-zeroes requests (allocations and punches).
    pub zeroes: u64,
    /// Flush requests.
    pub flushes: u64,
    /// Layout queries (`rbd_diff_iterate2`) the cache did not answer.
    pub extent_queries: u64,
    /// Requests that failed (an error or a timeout).
    pub failures: u64,
    /// Of those, deadlines that passed.
    pub timeouts: u64,
    /// The most requests in flight at once.
    pub in_flight_peak: u64,
}

/// The counters behind [`RbdStats`] (relaxed atomics: a report, not a synchronization).
#[derive(Debug, Default)]
struct Counters {
    reads: AtomicU64,
    bytes_read: AtomicU64,
    writes: AtomicU64,
    bytes_written: AtomicU64,
    zeroes: AtomicU64,
    flushes: AtomicU64,
    extent_queries: AtomicU64,
    failures: AtomicU64,
    timeouts: AtomicU64,
    in_flight: AtomicU64,
    in_flight_peak: AtomicU64,
}

/// A store on a Ceph RBD image.
#[derive(Debug)]
pub struct RbdStore {
    uri: String,
    config: RbdConfig,
    /// Shared with layout queries still running on their threads after a timeout.
    image: Arc<Image>,
    /// The image's size. Invariant 1: the image is not resized while the store lives.
    len: u64,
    /// Layout windows. Invariant 2: nobody else writes to the image.
    extents: ExtentRuns,
    counters: Counters,
}

impl RbdStore {
    /// Opens the image at `uri` for reading and writing, with the default [`RbdConfig`].
    ///
    /// # Errors
    /// See [`RbdStore::open_with`].
    pub fn open(uri: &str) -> Result<RbdStore, StoreError> {
        RbdStore::open_with(uri, &RbdConfig::default())
    }

    /// Opens the image at `uri` (`rbd:POOL/IMAGE[?conf=PATH]`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use udax::{Mapping, Options, RbdStore};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // rbd create rbd/disk --size 1G
    /// let store = RbdStore::open("rbd:rbd/disk?conf=/etc/ceph/ceph.conf")?;
    /// let mapping = Mapping::new(Arc::new(store), Options::default())?;
    /// mapping.write_at(0, b"in the cluster")?;
    /// mapping.flush()?; // one write of a page, then rbd_flush
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StoreError::Connect`] if the URI is malformed, the config cannot be read, the
    /// monitors cannot be reached in time, or the pool or image does not exist.
    pub fn open_with(uri: &str, config: &RbdConfig) -> Result<RbdStore, StoreError> {
        let target = RbdTarget::parse(uri)?;
        let connect_error = |(_, reason): (i32, String)| StoreError::Connect {
            uri: uri.to_string(),
            reason,
        };
        let conf = target
            .conf
            .as_ref()
            .map(|p| c_string(&p.to_string_lossy(), "the conf path"))
            .transpose()
            .map_err(connect_error)?;
        let pool = c_string(&target.pool, "the pool").map_err(connect_error)?;
        let name = c_string(&target.image, "the image").map_err(connect_error)?;
        let image = Image::open(&OpenArgs {
            conf: conf.as_deref(),
            pool: &pool,
            image: &name,
            read_only: config.read_only,
            timeout: config.timeout,
        })
        .map_err(connect_error)?;
        let len = image.size().map_err(connect_error)?;
        Ok(RbdStore {
            uri: uri.to_string(),
            config: config.clone(),
            image: Arc::new(image),
            len,
            extents: ExtentRuns::default(),
            counters: Counters::default(),
        })
    }

    /// The URI the store was opened with.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// What the store has asked so far.
    pub fn stats(&self) -> RbdStats {
        let c = &self.counters;
        RbdStats {
            reads: c.reads.load(Relaxed),
            bytes_read: c.bytes_read.load(Relaxed),
            writes: c.writes.load(Relaxed),
            bytes_written: c.bytes_written.load(Relaxed),
            zeroes: c.zeroes.load(Relaxed),
            flushes: c.flushes.load(Relaxed),
            extent_queries: c.extent_queries.load(Relaxed),
            failures: c.failures.load(Relaxed),
            timeouts: c.timeouts.load(Relaxed),
            in_flight_peak: c.in_flight_peak.load(Relaxed),
        }
    }

    /// Issues one request with `issue` and waits for it within the timeout.
    fn request(
        &self,
        op: &'static str,
        offset: u64,
        issue: impl FnOnce(&Image) -> RbdResult<Op>,
    ) -> Result<Op, StoreError> {
        let deadline = Instant::now() + self.config.timeout;
        let c = &self.counters;
        let now = c.in_flight.fetch_add(1, Relaxed) + 1;
        c.in_flight_peak.fetch_max(now, Relaxed);
        let done = issue(&self.image).and_then(|pending| pending.wait(deadline).map(|_| pending));
        c.in_flight.fetch_sub(1, Relaxed);
        done.map_err(|(errno, _)| self.failed(op, offset, errno))
    }

    /// Counts a failed request and turns its errno into the store's error.
    fn failed(&self, op: &'static str, offset: u64, errno: i32) -> StoreError {
        self.counters.failures.fetch_add(1, Relaxed);
        if errno == libc::ETIMEDOUT {
            self.counters.timeouts.fetch_add(1, Relaxed);
        }
        StoreError::from_io(op, offset, io::Error::from_raw_os_error(errno))
    }

    /// Asks the cluster for the layout of the window holding `offset` and remembers it.
    /// Windows are aligned to their size, so that random faults over an image of one
    /// window cost one query. The query runs on its own thread (it holds the image, so a
    /// late one is harmless) and is waited for within the timeout. The thread lets go of
    /// the image *before* it answers: else the store could be dropped between the answer
    /// and that release, leaving the thread the last owner, closing the image and shutting
    /// the cluster handle down while the process exits. librados then read its freed
    /// configuration: `udax inspect` of an image died of SIGSEGV after printing, about 1
    /// run in 15 (two at once), in `AsyncConnection::mark_down` on this thread.
    fn query_extent(&self, offset: u64) -> Result<Extent, StoreError> {
        self.counters.extent_queries.fetch_add(1, Relaxed);
        let generation = self.extents.generation();
        let window = self.config.extent_window.max(1);
        let start = offset - offset % window;
        let count = window.min(self.len - start);
        let (send, answer) = std::sync::mpsc::channel();
        let image = Arc::clone(&self.image);
        std::thread::Builder::new()
            .name("udax-rbd-extents".into())
            .spawn(move || {
                let allocated = image.allocated(start, count);
                drop(image);
                let _ = send.send(allocated);
            })
            .map_err(|e| StoreError::from_io("extent query", offset, e))?;
        let allocated = match answer.recv_timeout(self.config.timeout) {
            Ok(Ok(allocated)) => allocated,
            Ok(Err((errno, _))) => return Err(self.failed("extent query", offset, errno)),
            Err(_) => return Err(self.failed("extent query", offset, libc::ETIMEDOUT)),
        };
        let runs = runs(start, start + count, &allocated);
        self.extents.remember(generation, start, &runs);
        Ok(extent_at(start, &runs, offset))
    }

    /// Zeroes `offset..offset + len` (`zero_flags`: THICK_PROVISION to allocate, or 0), in
    /// requests of at most [`MAX_REQUEST`].
    fn zero(
        &self,
        op: &'static str,
        offset: u64,
        len: u64,
        zero_flags: c_int,
    ) -> Result<(), StoreError> {
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(MAX_REQUEST);
            self.counters.zeroes.fetch_add(1, Relaxed);
            self.request(op, at, |image| image.issue_zero(at, n as usize, zero_flags))?;
            at += n;
        }
        Ok(())
    }

    /// Refuses a change to a read-only store.
    fn check_writable(&self) -> Result<(), StoreError> {
        if self.config.read_only {
            return Err(StoreError::ReadOnly {
                uri: self.uri.clone(),
            });
        }
        Ok(())
    }
}

/// `start..end` as runs of holes and data, given its allocated extents (in order, possibly
/// reaching outside the range).
fn runs(start: u64, end: u64, allocated: &[(u64, u64)]) -> Vec<(u64, ExtentKind)> {
    let mut runs = Vec::with_capacity(2 * allocated.len() + 1);
    let mut at = start;
    for &(offset, len) in allocated {
        let (from, to) = (offset.max(at), (offset + len).min(end));
        if from >= to {
            continue;
        }
        if from > at {
            runs.push((from - at, ExtentKind::Hole));
        }
        runs.push((to - from, ExtentKind::Data));
        at = to;
    }
    if at < end {
        runs.push((end - at, ExtentKind::Hole));
    }
    runs
}

/// The run of `runs` (laid end to end from `start`, covering `offset`) at `offset`, from
/// `offset` to its end.
fn extent_at(start: u64, runs: &[(u64, ExtentKind)], offset: u64) -> Extent {
    let mut end = start;
    for &(len, kind) in runs {
        end += len;
        if offset < end {
            return Extent {
                kind,
                len: end - offset,
            };
        }
    }
    // Not reached (the window holds the offset); data is always a safe answer.
    Extent {
        kind: ExtentKind::Data,
        len: 1,
    }
}

impl Store for RbdStore {
    fn len(&self) -> u64 {
        self.len
    }

    fn extent(&self, offset: u64) -> Result<Extent, StoreError> {
        check_range(offset, 1, self.len)?;
        match self.extents.extent_at(offset) {
            Some(extent) => Ok(extent),
            None => self.query_extent(offset),
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        check_range(offset, buf.len() as u64, self.len)?;
        for (index, piece) in buf.chunks_mut(MAX_REQUEST as usize).enumerate() {
            let at = offset + index as u64 * MAX_REQUEST;
            self.counters.reads.fetch_add(1, Relaxed);
            self.counters
                .bytes_read
                .fetch_add(piece.len() as u64, Relaxed);
            let done = self.request("read", at, |image| image.issue_read(at, piece.len()))?;
            piece.copy_from_slice(done.bytes());
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), StoreError> {
        check_range(offset, buf.len() as u64, self.len)?;
        self.check_writable()?;
        for (index, piece) in buf.chunks(MAX_REQUEST as usize).enumerate() {
            let at = offset + index as u64 * MAX_REQUEST;
            self.counters.writes.fetch_add(1, Relaxed);
            self.counters
                .bytes_written
                .fetch_add(piece.len() as u64, Relaxed);
            self.request("write", at, |image| image.issue_write(at, piece))?;
            self.extents.mark_data(at, at + piece.len() as u64);
        }
        Ok(())
    }

    fn allocate(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_range(offset, len, self.len)?;
        self.check_writable()?;
        // Only holes: zeroing data would lose it.
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let extent = self.extent(at)?;
            let run_end = end.min(at + extent.len);
            if extent.kind == ExtentKind::Hole {
                self.zero("allocate", at, run_end - at, THICK_PROVISION)?;
                self.extents.mark_data(at, run_end);
            }
            at = run_end;
        }
        Ok(())
    }

    fn punch_hole(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_range(offset, len, self.len)?;
        self.check_writable()?;
        let zeroed = self.zero("punch hole", offset, len, 0);
        // Whether or not it worked, only the cluster knows what the range holds now.
        self.extents.forget(offset, offset + len);
        zeroed
    }

    fn sync(&self) -> Result<(), StoreError> {
        if self.config.read_only {
            return Ok(());
        }
        self.counters.flushes.fetch_add(1, Relaxed);
        self.request("sync", 0, Image::issue_flush).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExtentKind::{Data, Hole};

    #[test]
    fn parses_rbd_uris_and_names_what_is_wrong() {
        let target = RbdTarget::parse("rbd:rbd/disk?conf=/tmp/c/ceph.conf").expect("parse");
        assert_eq!(
            target,
            RbdTarget {
                pool: "rbd".into(),
                image: "disk".into(),
                conf: Some("/tmp/c/ceph.conf".into())
            }
        );
        assert_eq!(RbdTarget::parse("rbd:p/i").expect("parse").conf, None);
        for bad in [
            "rbd:",
            "rbd:disk",
            "rbd:/disk",
            "rbd:p/",
            "rbd:p/a/b",
            "rbd:p/i?x=1",
            "nbd://x",
        ] {
            assert!(
                matches!(RbdTarget::parse(bad), Err(StoreError::Connect { .. })),
                "{bad}"
            );
        }
        assert!(RbdTarget::is_uri("rbd:p/i") && !RbdTarget::is_uri("./rbd:p"));
    }

    #[test]
    fn allocated_extents_become_runs_clipped_to_the_window() {
        assert_eq!(runs(100, 200, &[]), vec![(100, Hole)]);
        let window = runs(100, 200, &[(50, 60), (120, 10), (190, 100)]);
        assert_eq!(
            window,
            vec![(10, Data), (10, Hole), (10, Data), (60, Hole), (10, Data)]
        );
        let at = |offset| {
            let e = extent_at(100, &window, offset);
            (e.kind, e.len)
        };
        assert_eq!(
            (at(100), at(115), at(139), at(199)),
            ((Data, 10), (Hole, 5), (Hole, 51), (Data, 1))
        );
    }

    #[test]
    fn a_missing_cluster_is_a_connect_error_not_a_hang() {
        let dir = std::env::temp_dir().join(format!("udax-rbd-missing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let conf = dir.join("ceph.conf");
        // A monitor address nobody listens on (loopback, a port of this project's range).
        std::fs::write(
            &conf,
            "[global]\nmon host = v2:127.0.0.1:10998\nauth client required = none\n",
        )
        .expect("conf");
        let config = RbdConfig {
            timeout: Duration::from_secs(1),
            ..RbdConfig::default()
        };
        let started = Instant::now();
        let missing = RbdStore::open_with(&format!("rbd:rbd/x?conf={}", conf.display()), &config);
        assert!(
            matches!(missing, Err(StoreError::Connect { .. })),
            "{missing:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "bounded by the timeout"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
