//! [`NbdStore`]: a disk image served over NBD, the network block device protocol
//! (qemu-nbd for qcow2, raw and Ceph RBD images; nbdkit for memory, files and its plugins).
//!
//! The client side is libnbd, the NBD project's reference client, through a small FFI
//! (`nbd_ffi.rs`): it does the fixed-newstyle handshake, structured replies, the
//! `base:allocation` metadata context, TLS and the NBD URI format
//! (`nbd://host[:port]/export`, `nbd+unix:///export?socket=PATH`). crates.io has no
//! client with block status, and the part of the protocol a store needs is small, but
//! libnbd is the one every server is tested against.
//!
//! | store operation | NBD command |
//! |---|---|
//! | `extent` | BLOCK_STATUS `base:allocation` over a window (64 MiB), cached ([`ExtentRuns`]); a run that reads as zeros (flag 2) is a hole, anything else data |
//! | `read_at` | READ (one command per request, split only at the server's maximum, pipelined) |
//! | `write_at` | WRITE |
//! | `allocate` | WRITE_ZEROES with NO_HOLE over the holes of the range |
//! | `punch_hole` | WRITE_ZEROES without NO_HOLE (the server may deallocate; TRIM would leave the contents unspecified), or WRITE of zeros |
//! | `sync` | FLUSH |
//!
//! **Parallel requests.** Each caller (a handler thread, a flush, an eviction) checks a
//! connection out of a pool, or opens one, and puts it back when its command is done: as
//! many requests are in flight as callers want, one connection each, and a large read split
//! at the server's maximum request is pipelined on its connection. When the server does
//! not promise that a FLUSH covers every connection (multi-conn), writes and flushes all
//! go over one connection of their own, so the FLUSH covers them.
//!
//! **Failures never hang.** libnbd's synchronous calls wait forever; this store issues
//! every command asynchronously and polls with a deadline ([`NbdConfig::timeout`]). A
//! command that fails, a connection that dies and a deadline that passes all return
//! [`StoreError::Io`] (ETIMEDOUT for the deadline): the fault path poisons the page (its
//! access gets SIGBUS) and the next flush reports the error. The connection is closed at
//! once, before the call returns, so no late reply can write into a buffer the caller
//! reuses; the next call opens a new one (reconnecting if the server is back).
//!
//! Invariant: while the store lives, nobody else writes to the export (the extent cache
//! keeps holes on that promise).

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::store::extent_runs::ExtentRuns;
use crate::store::nbd_ffi::{
    BASE_ALLOCATION, CMD_FLAG_NO_HOLE, Features, Handle, NbdResult, STATE_ZERO,
};
use crate::store::read_ahead::{Plan, ReadAhead};
use crate::store::{Extent, ExtentKind, Store, StoreError, check_range};

/// The largest single request sent (servers commonly take 32 MiB).
const MAX_REQUEST: u64 = 32 << 20;

/// Bytes of zeros a WRITE sends at a time where the server has no WRITE_ZEROES.
const ZERO_CHUNK: usize = 1 << 20;

/// How an [`NbdStore`] connects and waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdConfig {
    /// How long a connection (handshake included) or a command may take before it fails
    /// with ETIMEDOUT. Default 10 s.
    pub timeout: Duration,
    /// Open the export for reading only (no write may be issued). Default false: a
    /// read-only export then fails to open with [`StoreError::ReadOnly`].
    pub read_only: bool,
    /// Bytes of layout one BLOCK_STATUS asks for. Default 64 MiB.
    pub extent_window: u64,
    /// Read ahead on sequential reads (a window of 128 KiB growing to 2 MiB in one READ).
    /// Default true.
    pub read_ahead: bool,
}

impl Default for NbdConfig {
    fn default() -> Self {
        NbdConfig {
            timeout: Duration::from_secs(10),
            read_only: false,
            extent_window: 64 << 20,
            read_ahead: true,
        }
    }
}

/// What an [`NbdStore`] has sent so far (a snapshot of its counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NbdStats {
    /// READ commands.
    pub reads: u64,
    /// Bytes asked for by READ: the data moved over the network (read-ahead included).
    pub bytes_read: u64,
    /// Reads served from the read-ahead window, without a request.
    pub read_ahead_hits: u64,
    /// WRITE commands.
    pub writes: u64,
    /// Bytes sent by WRITE.
    pub bytes_written: u64,
    /// WRITE_ZEROES commands.
    pub zeroes: u64,
    /// FLUSH commands.
    pub flushes: u64,
    /// BLOCK_STATUS commands (extent queries the cache did not answer).
    pub block_status: u64,
    /// Connections opened (the first included).
    pub connects: u64,
    /// Calls that failed (a command error, a dead connection or a timeout).
    pub failures: u64,
    /// Of those, deadlines that passed.
    pub timeouts: u64,
    /// The most commands in flight at once, over every connection.
    pub in_flight_peak: u64,
}

/// The counters behind [`NbdStats`] (relaxed atomics: a report, not a synchronization).
#[derive(Debug, Default)]
struct Counters {
    reads: AtomicU64,
    bytes_read: AtomicU64,
    read_ahead_hits: AtomicU64,
    writes: AtomicU64,
    bytes_written: AtomicU64,
    zeroes: AtomicU64,
    flushes: AtomicU64,
    block_status: AtomicU64,
    connects: AtomicU64,
    failures: AtomicU64,
    timeouts: AtomicU64,
    in_flight: AtomicU64,
    in_flight_peak: AtomicU64,
}

/// Which connection a command goes over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    /// Any pooled connection (reads, block status; every command with multi-conn).
    Pool,
    /// The one connection of writes and flushes (servers without multi-conn).
    Writer,
}

/// A store on an NBD export.
#[derive(Debug)]
pub struct NbdStore {
    /// The URI, for errors and reports.
    uri: String,
    /// The same, for libnbd.
    c_uri: CString,
    config: NbdConfig,
    /// The export's size. Invariant 1: exports are not resized while the store lives.
    len: u64,
    /// What the server offered on the first connection.
    features: Features,
    /// The largest request sent.
    max_request: u64,
    /// Idle connections, ready for a command.
    idle: Mutex<Vec<Handle>>,
    /// The connection of writes and flushes where the server has no multi-conn.
    writer: Mutex<Option<Handle>>,
    /// Layout windows. Invariant 2: nobody else writes to the export.
    extents: ExtentRuns,
    /// The read-ahead window (invariant 2 too).
    ahead: ReadAhead,
    counters: Counters,
}

impl NbdStore {
    /// Connects to the export at `uri` for reading and writing, with the default
    /// [`NbdConfig`].
    ///
    /// # Errors
    /// See [`NbdStore::open_with`].
    pub fn open(uri: &str) -> Result<NbdStore, StoreError> {
        NbdStore::open_with(uri, &NbdConfig::default())
    }

    /// Connects to the export at `uri` (`nbd://host[:port]/export`,
    /// `nbd+unix:///export?socket=PATH`, or any other form libnbd takes).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use udax::{Mapping, NbdStore, Options};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // qemu-nbd -f qcow2 -t -e 8 -k /tmp/disk.sock -x disk disk.qcow2
    /// let store = NbdStore::open("nbd+unix:///disk?socket=/tmp/disk.sock")?;
    /// let mapping = Mapping::new(Arc::new(store), Options::default())?;
    /// mapping.write_at(0, b"over the network")?;
    /// mapping.flush()?; // WRITE of one page, then FLUSH
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StoreError::Connect`] if the URI is malformed, the server cannot be reached or
    /// the handshake fails or times out; [`StoreError::ReadOnly`] if the export is
    /// read-only and `config.read_only` is false.
    pub fn open_with(uri: &str, config: &NbdConfig) -> Result<NbdStore, StoreError> {
        let connect_error = |reason: String| StoreError::Connect {
            uri: uri.to_string(),
            reason,
        };
        let c_uri =
            CString::new(uri).map_err(|_| connect_error("the URI holds a NUL byte".into()))?;
        let mut store = NbdStore {
            uri: uri.to_string(),
            c_uri,
            config: config.clone(),
            len: 0,
            features: Features::default(),
            max_request: MAX_REQUEST,
            idle: Mutex::new(Vec::new()),
            writer: Mutex::new(None),
            extents: ExtentRuns::default(),
            ahead: ReadAhead::default(),
            counters: Counters::default(),
        };
        let handle = store.connect().map_err(|(_, why)| connect_error(why))?;
        store.len = handle.size().map_err(|(_, why)| connect_error(why))?;
        store.features = handle.features();
        if store.features.read_only && !config.read_only {
            return Err(StoreError::ReadOnly {
                uri: uri.to_string(),
            });
        }
        store.max_request = match handle.max_request() {
            0 => MAX_REQUEST,
            max => max.min(MAX_REQUEST),
        };
        lock(&store.idle).push(handle);
        Ok(store)
    }

    /// The URI the store was opened with.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Whether the server reports holes (`base:allocation`); without it every byte is data.
    pub fn has_block_status(&self) -> bool {
        self.features.block_status
    }

    /// What the store has sent so far.
    pub fn stats(&self) -> NbdStats {
        let c = &self.counters;
        NbdStats {
            reads: c.reads.load(Relaxed),
            bytes_read: c.bytes_read.load(Relaxed),
            read_ahead_hits: c.read_ahead_hits.load(Relaxed),
            writes: c.writes.load(Relaxed),
            bytes_written: c.bytes_written.load(Relaxed),
            zeroes: c.zeroes.load(Relaxed),
            flushes: c.flushes.load(Relaxed),
            block_status: c.block_status.load(Relaxed),
            connects: c.connects.load(Relaxed),
            failures: c.failures.load(Relaxed),
            timeouts: c.timeouts.load(Relaxed),
            in_flight_peak: c.in_flight_peak.load(Relaxed),
        }
    }

    /// Opens a connection and waits for its handshake, within the timeout.
    fn connect(&self) -> NbdResult<Handle> {
        self.counters.connects.fetch_add(1, Relaxed);
        let deadline = Instant::now() + self.config.timeout;
        let handle = Handle::new()?;
        handle.start_connect(&self.c_uri)?;
        while handle.is_connecting() {
            handle.poll(poll_ms(deadline)?)?;
        }
        if !handle.is_ready() {
            return Err((
                libc::ECONNRESET,
                "the NBD handshake did not complete".into(),
            ));
        }
        Ok(handle)
    }

    /// The lane of a command: mutations share one connection unless FLUSH covers all.
    fn lane(&self, mutation: bool) -> Lane {
        if mutation && !self.features.multi_conn {
            Lane::Writer
        } else {
            Lane::Pool
        }
    }

    /// Runs one request: takes an idle connection of its lane (or opens one), `issue`s its
    /// commands (pushing their cookies), waits for all of them within the timeout, and
    /// puts the connection back. On a failure the connection is closed before anything
    /// else, so no command of it can touch the caller's buffers afterwards.
    ///
    /// A connection that had served before and is found dead (not a timeout: the server
    /// went away, perhaps to come back) makes every idle one suspect: they are all closed
    /// and the request is tried once more on a new connection, so that the first access
    /// after a server restart succeeds. READ, WRITE, WRITE_ZEROES, BLOCK_STATUS and FLUSH
    /// are idempotent, so a repeat is harmless.
    ///
    /// The writer lane holds its lock for the whole request: mutations go one at a time
    /// over one connection, which the FLUSH then covers.
    fn request(
        &self,
        mutation: bool,
        op: &'static str,
        offset: u64,
        mut issue: impl FnMut(&Handle, &mut Vec<u64>) -> NbdResult<()>,
    ) -> Result<(), StoreError> {
        let mut writer = (self.lane(mutation) == Lane::Writer).then(|| lock(&self.writer));
        let mut attempts = 0;
        loop {
            attempts += 1;
            let idle = match &mut writer {
                Some(slot) => slot.take(),
                None => lock(&self.idle).pop(),
            };
            let reused = idle.is_some();
            let handle = match idle {
                Some(handle) => handle,
                None => self
                    .connect()
                    .map_err(|(e, _)| self.failed(op, offset, e))?,
            };
            let errno = match self.exchange(&handle, &mut issue) {
                Ok(()) => {
                    match &mut writer {
                        Some(slot) => **slot = Some(handle),
                        None => lock(&self.idle).push(handle),
                    }
                    return Ok(());
                }
                Err((errno, _)) => errno,
            };
            let died = reused && errno != libc::ETIMEDOUT && !handle.is_ready();
            drop(handle);
            if !died || attempts > 1 {
                return Err(self.failed(op, offset, errno));
            }
            lock(&self.idle).clear();
        }
    }

    /// Issues a request's commands on `handle` and waits for them, counting them in flight.
    fn exchange(
        &self,
        handle: &Handle,
        issue: &mut impl FnMut(&Handle, &mut Vec<u64>) -> NbdResult<()>,
    ) -> NbdResult<()> {
        let mut cookies = Vec::new();
        let issued = issue(handle, &mut cookies);
        let in_flight = cookies.len() as u64;
        let now = self.counters.in_flight.fetch_add(in_flight, Relaxed) + in_flight;
        self.counters.in_flight_peak.fetch_max(now, Relaxed);
        let done = issued.and_then(|()| self.wait(handle, &cookies));
        self.counters.in_flight.fetch_sub(in_flight, Relaxed);
        done
    }

    /// Waits for every command in `cookies` until the deadline.
    fn wait(&self, handle: &Handle, cookies: &[u64]) -> NbdResult<()> {
        let deadline = Instant::now() + self.config.timeout;
        for &cookie in cookies {
            while !handle.is_completed(cookie)? {
                handle.poll(poll_ms(deadline)?)?;
            }
        }
        Ok(())
    }

    /// Counts a failed request and turns its errno into the store's error.
    fn failed(&self, op: &'static str, offset: u64, errno: i32) -> StoreError {
        self.counters.failures.fetch_add(1, Relaxed);
        if errno == libc::ETIMEDOUT {
            self.counters.timeouts.fetch_add(1, Relaxed);
        }
        StoreError::from_io(op, offset, io::Error::from_raw_os_error(errno))
    }

    /// Asks the server for the layout from `offset` (one window) and remembers it.
    fn query_extent(&self, offset: u64) -> Result<Extent, StoreError> {
        self.counters.block_status.fetch_add(1, Relaxed);
        let generation = self.extents.generation();
        let count = self.config.extent_window.clamp(1, self.len - offset);
        let mut answer = BlockStatus::default();
        self.request(false, "extent query", offset, |handle, cookies| {
            answer.pairs.clear(); // a retry starts over
            let user_data = (&raw mut answer).cast::<c_void>();
            // SAFETY: `answer` outlives the command: `request` waits for it or closes the
            // connection before returning; `collect_extents` expects a BlockStatus.
            let cookie =
                unsafe { handle.issue_block_status(count, offset, collect_extents, user_data)? };
            cookies.push(cookie);
            Ok(())
        })?;
        let runs = answer.runs(self.len - offset);
        let Some(&(len, kind)) = runs.first() else {
            let empty = io::Error::new(io::ErrorKind::InvalidData, "empty block status reply");
            return Err(StoreError::from_io("extent query", offset, empty));
        };
        self.extents.remember(generation, offset, &runs);
        Ok(Extent { kind, len })
    }

    /// READ of `buf` at `offset` (inside the store), split at the server's maximum and
    /// pipelined on one connection.
    fn read_remote(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.counters.reads.fetch_add(1, Relaxed);
        self.counters
            .bytes_read
            .fetch_add(buf.len() as u64, Relaxed);
        let (ptr, len) = (buf.as_mut_ptr(), buf.len() as u64);
        self.request(false, "read", offset, |handle, cookies| {
            self.pieces(offset, len, handle, cookies, |h, at, n| {
                // SAFETY: `at - offset + n <= len`, inside `buf`, which outlives the
                // command: `request` waits for it or closes the connection first.
                unsafe { h.issue_read(ptr.add((at - offset) as usize), n as usize, at) }
            })
        })
    }

    /// Issues `command` over `offset..offset + len` in pieces of at most `max_request`,
    /// all in flight at once on one connection.
    fn pieces(
        &self,
        offset: u64,
        len: u64,
        handle: &Handle,
        cookies: &mut Vec<u64>,
        mut command: impl FnMut(&Handle, u64, u64) -> NbdResult<u64>,
    ) -> NbdResult<()> {
        let mut at = 0;
        while at < len {
            let n = self.max_request.min(len - at);
            cookies.push(command(handle, offset + at, n)?);
            at += n;
        }
        Ok(())
    }

    /// WRITE_ZEROES (`flags`: NO_HOLE or not) over `offset..offset + len`, or WRITE of
    /// zeros where the server has no WRITE_ZEROES.
    fn zero(&self, op: &'static str, offset: u64, len: u64, flags: u32) -> Result<(), StoreError> {
        if !self.features.zero {
            static ZEROS: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];
            let mut at = offset;
            while at < offset + len {
                let n = (offset + len - at).min(ZERO_CHUNK as u64) as usize;
                self.write_at(at, &ZEROS[..n])?;
                at += n as u64;
            }
            return Ok(());
        }
        self.counters.zeroes.fetch_add(1, Relaxed);
        let zeroed = self.request(true, op, offset, |handle, cookies| {
            self.pieces(offset, len, handle, cookies, |h, at, n| {
                h.issue_zero(n, at, flags)
            })
        });
        self.ahead.changed(offset, len);
        zeroed
    }
}

/// Locks a mutex of connections; a panic while holding it leaves a valid list.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Milliseconds left until `deadline` for one poll (at least 1), or ETIMEDOUT if it passed.
fn poll_ms(deadline: Instant) -> NbdResult<c_int> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err((
            libc::ETIMEDOUT,
            "the NBD server did not answer in time".into(),
        ));
    }
    Ok(left.as_millis().clamp(1, c_int::MAX as u128) as c_int)
}

/// A BLOCK_STATUS answer as it arrives: (length, flags) pairs of `base:allocation`.
#[derive(Debug, Default)]
struct BlockStatus {
    pairs: Vec<(u64, u32)>,
}

impl BlockStatus {
    /// The answer as runs of holes (reads as zeros) and data, at most `limit` bytes long.
    fn runs(&self, limit: u64) -> Vec<(u64, ExtentKind)> {
        let mut runs = Vec::with_capacity(self.pairs.len());
        let mut total = 0;
        for &(len, flags) in &self.pairs {
            let len = len.min(limit - total);
            if len == 0 {
                break;
            }
            let kind = if flags & STATE_ZERO != 0 {
                ExtentKind::Hole
            } else {
                ExtentKind::Data
            };
            runs.push((len, kind));
            total += len;
        }
        runs
    }
}

/// libnbd's extent callback: appends the `base:allocation` pairs to the BlockStatus
/// behind `user_data`.
///
/// # Safety
/// `user_data` is a live `BlockStatus` used by nobody else during the call; libnbd passes
/// a NUL-terminated context name and `count` valid u32 entries.
unsafe extern "C" fn collect_extents(
    user_data: *mut c_void,
    context: *const c_char,
    _offset: u64,
    entries: *mut u32,
    count: usize,
    _error: *mut c_int,
) -> c_int {
    // SAFETY: per this function's contract (libnbd's, and issue_block_status's caller's).
    let (answer, context) = unsafe {
        (
            &mut *user_data.cast::<BlockStatus>(),
            CStr::from_ptr(context),
        )
    };
    if context != BASE_ALLOCATION || entries.is_null() {
        return 0;
    }
    // SAFETY: libnbd passes `count` entries at `entries` (see above).
    let entries = unsafe { std::slice::from_raw_parts(entries, count) };
    for pair in entries.chunks_exact(2) {
        answer.pairs.push((u64::from(pair[0]), pair[1]));
    }
    0
}

impl Store for NbdStore {
    fn len(&self) -> u64 {
        self.len
    }

    fn extent(&self, offset: u64) -> Result<Extent, StoreError> {
        check_range(offset, 1, self.len)?;
        if !self.features.block_status {
            return Ok(Extent {
                kind: ExtentKind::Data,
                len: self.len - offset,
            });
        }
        match self.extents.extent_at(offset) {
            Some(extent) => Ok(extent),
            None => self.query_extent(offset),
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        check_range(offset, buf.len() as u64, self.len)?;
        if buf.is_empty() {
            return Ok(());
        }
        if !self.config.read_ahead {
            return self.read_remote(offset, buf);
        }
        match self.ahead.plan(offset, buf, self.len) {
            Plan::Hit => {
                self.counters.read_ahead_hits.fetch_add(1, Relaxed);
                Ok(())
            }
            Plan::Direct => self.read_remote(offset, buf),
            Plan::Fetch { len, generation } => {
                let mut window = vec![0u8; len as usize];
                self.read_remote(offset, &mut window)?;
                buf.copy_from_slice(&window[..buf.len()]);
                self.ahead.keep(generation, offset, window);
                Ok(())
            }
        }
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), StoreError> {
        check_range(offset, buf.len() as u64, self.len)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.counters.writes.fetch_add(1, Relaxed);
        self.counters
            .bytes_written
            .fetch_add(buf.len() as u64, Relaxed);
        let (ptr, len) = (buf.as_ptr(), buf.len() as u64);
        let written = self.request(true, "write", offset, |handle, cookies| {
            self.pieces(offset, len, handle, cookies, |h, at, n| {
                // SAFETY: as in read_remote: inside `buf`, which outlives the command.
                unsafe { h.issue_write(ptr.add((at - offset) as usize), n as usize, at) }
            })
        });
        // After the write completed (or failed, perhaps half done): see read_ahead.rs.
        self.ahead.changed(offset, len);
        written?;
        self.extents.mark_data(offset, offset + len);
        Ok(())
    }

    fn allocate(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_range(offset, len, self.len)?;
        // Only holes: WRITE_ZEROES over data would lose it. Without WRITE_ZEROES there is
        // nothing to reserve space with; the hole reads as zeros until the page is written.
        let end = offset + len;
        let mut at = offset;
        while at < end && self.features.zero {
            let extent = self.extent(at)?;
            let run_end = end.min(at + extent.len);
            if extent.kind == ExtentKind::Hole {
                self.zero("allocate", at, run_end - at, CMD_FLAG_NO_HOLE)?;
                self.extents.mark_data(at, run_end);
            }
            at = run_end;
        }
        Ok(())
    }

    fn punch_hole(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_range(offset, len, self.len)?;
        if len == 0 {
            return Ok(());
        }
        let zeroed = self.zero("punch hole", offset, len, 0);
        // Whether or not it worked, only the server knows what the range holds now.
        self.extents.forget(offset, offset + len);
        zeroed
    }

    fn sync(&self) -> Result<(), StoreError> {
        if !self.features.flush {
            return Ok(());
        }
        self.counters.flushes.fetch_add(1, Relaxed);
        self.request(true, "sync", 0, |handle, cookies| {
            cookies.push(handle.issue_flush()?);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_runs_that_read_as_zeros_are_holes() {
        let answer = BlockStatus {
            pairs: vec![(4096, 3), (4096, 0), (4096, 1), (4096, 2), (1 << 20, 3)],
        };
        let kinds: Vec<_> = answer.runs(5 * 4096).into_iter().collect();
        assert_eq!(
            kinds,
            vec![
                (4096, ExtentKind::Hole),
                (4096, ExtentKind::Data),
                (4096, ExtentKind::Data),
                (4096, ExtentKind::Hole),
                (4096, ExtentKind::Hole),
            ]
        );
    }

    #[test]
    fn a_missing_server_is_a_connect_error_not_a_hang() {
        let config = NbdConfig {
            timeout: Duration::from_secs(2),
            ..NbdConfig::default()
        };
        let missing = NbdStore::open_with("nbd+unix:///x?socket=/nonexistent/udax.sock", &config);
        assert!(
            matches!(missing, Err(StoreError::Connect { .. })),
            "{missing:?}"
        );
        let bad = NbdStore::open_with("http://example/x", &config);
        assert!(matches!(bad, Err(StoreError::Connect { .. })), "{bad:?}");
    }
}
