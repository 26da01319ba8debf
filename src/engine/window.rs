//! Grace periods for short critical windows, without locks (usable from a signal handler).
//!
//! A fault opens a window while a zero page is mapped but not yet known clean (see
//! `install::insert_zero_page`); a store into the page during the window completes without
//! any fault. Flush must wait for the windows open when it starts, not for later ones
//! (which would starve it under a stream of faults). Windows count into one of two
//! epochs; a waiter flips the epoch and waits for the old epoch's count to reach zero.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

use crate::sys::futex;

/// Counts open windows per epoch.
pub(crate) struct Windows {
    epoch: AtomicU32,
    open: [AtomicU32; 2],
    /// Serializes waiters (flushes), which run in ordinary thread context.
    waiters: Mutex<()>,
}

/// An open window; closing it (drop) may wake a waiter.
pub(crate) struct Window<'a> {
    windows: &'a Windows,
    slot: usize,
}

impl Windows {
    pub(crate) fn new() -> Windows {
        Windows {
            epoch: AtomicU32::new(0),
            open: [AtomicU32::new(0), AtomicU32::new(0)],
            waiters: Mutex::new(()),
        }
    }

    /// Opens a window in the current epoch.
    pub(crate) fn open(&self) -> Window<'_> {
        loop {
            let epoch = self.epoch.load(SeqCst);
            let slot = (epoch & 1) as usize;
            self.open[slot].fetch_add(1, SeqCst);
            // If a waiter flipped the epoch between our load and our count, it may already
            // have seen this slot at zero: count again in the new epoch instead.
            if self.epoch.load(SeqCst) == epoch {
                return Window {
                    windows: self,
                    slot,
                };
            }
            self.close(slot);
        }
    }

    fn close(&self, slot: usize) {
        if self.open[slot].fetch_sub(1, SeqCst) == 1 {
            futex::wake_all(&self.open[slot]);
        }
    }

    /// Returns once every window open at the call has closed.
    pub(crate) fn wait(&self) {
        let _serial = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let slot = (self.epoch.fetch_add(1, SeqCst) & 1) as usize;
        loop {
            let open = self.open[slot].load(SeqCst);
            if open == 0 {
                return;
            }
            futex::wait(&self.open[slot], open);
        }
    }
}

impl Drop for Window<'_> {
    fn drop(&mut self) {
        self.windows.close(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    #[test]
    fn wait_returns_at_once_with_no_window_open() {
        let windows = Windows::new();
        windows.wait();
        drop(windows.open());
        windows.wait();
    }

    #[test]
    fn wait_waits_for_a_window_open_before_it() {
        let windows = Arc::new(Windows::new());
        let closed = Arc::new(AtomicBool::new(false));
        let window = windows.open();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                windows.wait();
                assert!(closed.load(SeqCst), "wait returned while a window was open");
            });
            std::thread::sleep(Duration::from_millis(20));
            closed.store(true, SeqCst);
            drop(window);
            waiter.join().expect("waiter");
        });
    }

    #[test]
    fn wait_ignores_windows_opened_after_it() {
        let windows = Windows::new();
        windows.wait();
        // A window opened after a wait began belongs to the next epoch: a later wait on
        // an epoch with nothing open returns even though this one stays open.
        let _late = windows.open();
        let slot_of_late = (windows.epoch.load(SeqCst) & 1) as usize;
        assert_eq!(windows.open[slot_of_late].load(SeqCst), 1);
        assert_eq!(windows.open[1 - slot_of_late].load(SeqCst), 0);
    }
}
