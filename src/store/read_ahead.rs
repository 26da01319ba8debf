//! Read-ahead: [`Ramp`], the window of sequential reads (lock-free, so signal-safe: the
//! [`FileStore`](crate::FileStore) prefetcher sizes its windows with it), and
//! [`ReadAhead`], a remote store's fetched window. When small reads come in order
//! (sequential faults), the next miss reads a whole window in one request and the
//! following reads are copied from it. The window starts at 128 KiB and doubles on each sequential miss up to 2 MiB, as the
//! kernel's read-ahead ramps up; a read that does not continue the last one reads only
//! itself. One round trip costs 30-250 µs over NBD, so 256 faults in order cost one 1 MiB
//! READ instead of 256 small ones.
//!
//! Only the store's own writes change the export (the caller's invariant): every write,
//! allocation and punch drops the window it overlaps and bumps a generation, and a window
//! fetched while the generation moved is not kept. If a write races a fetch, either the
//! fetch was issued after the write completed and holds its bytes, or the window is dropped.

#[cfg(feature = "nbd")]
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The first window of a sequential run.
pub(crate) const FIRST_WINDOW: u64 = 128 << 10;
/// The largest window.
pub(crate) const MAX_WINDOW: u64 = 2 << 20;

/// Which reads are sequential, and the window a sequential run has grown to. Atomics only
/// (no lock, no allocation): callable in a signal handler. Concurrent readers race on it
/// benignly: a read may be taken for random or the window grow one step too far, which
/// changes only how much is read ahead.
#[derive(Debug, Default)]
pub(crate) struct Ramp {
    /// Where the last read ended (a read starting here is sequential).
    last_end: AtomicU64,
    /// The size of the last window (0: none in this run).
    last_window: AtomicU64,
}

impl Ramp {
    /// Records a read of `offset..offset + len`; whether it continues the last one.
    pub(crate) fn follows(&self, offset: u64, len: u64) -> bool {
        self.last_end.swap(offset + len, Relaxed) == offset
    }

    /// The next window of a sequential run: the first, then twice the last, up to the largest.
    pub(crate) fn grow(&self) -> u64 {
        let window = (self.last_window.load(Relaxed) * 2).clamp(FIRST_WINDOW, MAX_WINDOW);
        self.last_window.store(window, Relaxed);
        window
    }

    /// The size of the last window (the first before any).
    pub(crate) fn window(&self) -> u64 {
        self.last_window.load(Relaxed).max(FIRST_WINDOW)
    }

    /// Ends the run: its next window is the first.
    pub(crate) fn reset(&self) {
        self.last_window.store(0, Relaxed);
    }

    /// Where the last read ended.
    pub(crate) fn last_end(&self) -> u64 {
        self.last_end.load(Relaxed)
    }
}

/// The fetched window.
#[cfg(feature = "nbd")]
#[derive(Debug, Default)]
struct State {
    /// Bytes of `start..start + bytes.len()`.
    start: u64,
    bytes: Vec<u8>,
    /// Bumped by every change the store makes.
    generation: u64,
}

/// One read-ahead window of a store.
#[cfg(feature = "nbd")]
#[derive(Debug, Default)]
pub(crate) struct ReadAhead {
    state: Mutex<State>,
    /// Which reads are sequential; updated under `state`'s lock.
    ramp: Ramp,
}

/// What [`ReadAhead::plan`] says about a read.
#[cfg(feature = "nbd")]
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Served from the window.
    Hit,
    /// Read only the bytes asked for.
    Direct,
    /// Read `len` bytes from the read's offset, then [`ReadAhead::keep`] them.
    Fetch {
        /// Bytes to fetch (at least the read's length).
        len: u64,
        /// The generation to pass to `keep`.
        generation: u64,
    },
}

#[cfg(feature = "nbd")]
impl ReadAhead {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the state consistent: a poisoned lock is used as it is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves `buf` at `offset` from the window if it holds it, or says how to read it
    /// (`store_len` bounds the window).
    pub(crate) fn plan(&self, offset: u64, buf: &mut [u8], store_len: u64) -> Plan {
        let state = self.lock();
        let len = buf.len() as u64;
        let sequential = self.ramp.follows(offset, len);
        if offset >= state.start && offset + len <= state.start + state.bytes.len() as u64 {
            let from = (offset - state.start) as usize;
            buf.copy_from_slice(&state.bytes[from..from + buf.len()]);
            return Plan::Hit;
        }
        if !sequential || len >= MAX_WINDOW {
            self.ramp.reset();
            return Plan::Direct;
        }
        let window = self.ramp.grow();
        Plan::Fetch {
            len: window.max(len).min(store_len - offset),
            generation: state.generation,
        }
    }

    /// Keeps `bytes` fetched at `offset` unless the store changed since `generation`.
    pub(crate) fn keep(&self, generation: u64, offset: u64, bytes: Vec<u8>) {
        let mut state = self.lock();
        if state.generation == generation {
            state.start = offset;
            state.bytes = bytes;
        }
    }

    /// Records a change of `offset..offset + len` (a write, an allocation, a punch).
    pub(crate) fn changed(&self, offset: u64, len: u64) {
        let mut state = self.lock();
        state.generation += 1;
        let end = state.start + state.bytes.len() as u64;
        if offset < end && state.start < offset + len {
            state.bytes = Vec::new();
        }
    }
}

#[cfg(all(test, feature = "nbd"))]
mod tests {
    use super::*;

    /// Plays reads of 4 KiB at `pages` and returns what each was.
    fn reads(ahead: &ReadAhead, pages: &[u64]) -> Vec<Plan> {
        let mut buf = [0u8; 4096];
        pages
            .iter()
            .map(|&page| {
                let plan = ahead.plan(page * 4096, &mut buf, 1 << 30);
                if let Plan::Fetch { len, generation } = plan {
                    ahead.keep(generation, page * 4096, vec![page as u8; len as usize]);
                }
                plan
            })
            .collect()
    }

    #[test]
    fn sequential_reads_fetch_growing_windows_and_random_ones_do_not() {
        let ahead = ReadAhead::default();
        let plans = reads(&ahead, &[10, 11, 12, 13]);
        assert_eq!(plans[0], Plan::Direct, "a first read is not sequential");
        assert_eq!(
            plans[1],
            Plan::Fetch {
                len: 128 << 10,
                generation: 0
            }
        );
        assert_eq!(&plans[2..], &[Plan::Hit, Plan::Hit]);
        let plans = reads(&ahead, &(14..44).collect::<Vec<_>>());
        assert!(plans[..29].iter().all(|p| *p == Plan::Hit), "{plans:?}");
        assert_eq!(
            plans[29],
            Plan::Fetch {
                len: 256 << 10,
                generation: 0
            }
        );
        assert_eq!(reads(&ahead, &[5000, 7]), vec![Plan::Direct, Plan::Direct]);
        let mut buf = [0u8; 4096];
        assert_eq!(ahead.plan(44 * 4096, &mut buf, 1 << 30), Plan::Hit);
        assert_eq!(buf[0], 43, "bytes come from the window");
    }

    #[test]
    fn a_change_drops_the_window_and_a_racing_fetch() {
        let ahead = ReadAhead::default();
        reads(&ahead, &[0, 1]);
        ahead.changed(3 * 4096, 1);
        let mut buf = [0u8; 4096];
        let Plan::Fetch { generation, .. } = ahead.plan(2 * 4096, &mut buf, 1 << 30) else {
            panic!("a sequential miss fetches");
        };
        ahead.changed(100 << 20, 1); // a write elsewhere completes while the fetch runs
        ahead.keep(generation, 2 * 4096, vec![1; 256 << 10]);
        assert_ne!(ahead.plan(3 * 4096, &mut buf, 1 << 30), Plan::Hit);
    }
}
