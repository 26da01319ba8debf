//! The read-ahead thread of an in-thread region: a faulting thread that serves its own
//! fault has nobody to read ahead for it, so each such region whose runs are read ahead
//! (`engine::read_ahead`) gets one thread that does, asleep until a fault that continues
//! a run asks (`Ahead::ask`: an atomic and a futex wake, signal-safe). A fault on a range
//! it is reading waits for it (`read_ahead::wait_for_reader`) rather than reading the
//! range again. Should the thread not start, faults read what they need: slower, nothing
//! else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::thread::JoinHandle;

use crate::engine::read_ahead;
use crate::engine::region::Region;
use crate::resolve::scratch::Scratch;

/// A running read-ahead thread; dropping it stops and joins it.
pub(crate) struct AheadThread {
    region: Arc<Region>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AheadThread {
    /// Starts the thread of `region`, if its runs are read ahead and a thread can be had.
    pub(crate) fn start(region: &Arc<Region>) -> Option<AheadThread> {
        read_ahead::unit(region)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (served, stopped) = (Arc::clone(region), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("udax-read-ahead".into())
            .spawn(move || serve(&served, &stopped))
            .ok()?;
        Some(AheadThread {
            region: Arc::clone(region),
            stop,
            thread: Some(thread),
        })
    }
}

/// Reads ahead whenever asked, until `stop`: only when asked, since the run's claims
/// (`Ahead::claim`) follow its last fault whether or not that fault asked (one that
/// mapped a hole range does not: `read_ahead::ask_after`). A request that comes during a
/// read-ahead makes the next wait return at once.
fn serve(region: &Region, stop: &AtomicBool) {
    let mut scratch = Scratch::new();
    let mut seen = region.ahead.asked();
    // The stop is looked at after `seen` is read and before each sleep: the stop's own
    // request either came before that read (then the stop is seen) or changes the count
    // the sleep waits on (then the sleep returns at once).
    while !stop.load(SeqCst) {
        region.ahead.wait_asked(seen);
        let now = region.ahead.asked();
        if now == seen {
            continue; // woken for nothing
        }
        seen = now;
        if !stop.load(SeqCst) {
            read_ahead::read_ahead(region, scratch.bytes());
        }
    }
}

impl Drop for AheadThread {
    fn drop(&mut self) {
        // Stop first, then ask: the thread wakes (or does not sleep) and sees the stop.
        self.stop.store(true, SeqCst);
        self.region.ahead.ask();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
