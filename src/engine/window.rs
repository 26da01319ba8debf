//! Grace periods for short critical windows, without locks (usable from a signal handler).
//!
//! A fault opens a window while a zero page is mapped but not yet known clean (see
//! `install::insert_zero_page`); a store into the page during the window completes without
//! any fault. Flush must wait for the windows open when it starts, not for later ones
//! (which would starve it under a stream of faults). Windows count into one of two
//! epochs; a waiter flips the epoch and waits for the old epoch's count to reach zero.
//!
//! Closing the last window of an epoch wakes the futex only when a waiter is counted
//! (`futex::Waiters`): a fault with no flush running makes no futex call.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

use crate::sys::futex;

/// Counts open windows per epoch.
pub(crate) struct Windows {
    epoch: AtomicU32,
    open: [AtomicU32; 2],
    /// Waiters inside [`Windows::wait`] (0 or 1: they are serialized), sleeping on the
    /// `open` count of their epoch.
    waiting: futex::Waiters,
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
            waiting: futex::Waiters::default(),
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

    /// Closes a window; the last of its epoch wakes a counted waiter (the race with
    /// [`Windows::wait`] is `futex::Waiters`'s: the waiter counts itself before it reads
    /// `open`, the closer decrements `open` before it looks for waiters).
    fn close(&self, slot: usize) {
        if self.open[slot].fetch_sub(1, SeqCst) == 1 {
            self.waiting.wake(&self.open[slot]);
        }
    }

    /// Returns once every window open at the call has closed.
    pub(crate) fn wait(&self) {
        let _serial = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        // Counted before any read of `open` (see `close`).
        let _waiting = self.waiting.enter();
        let slot = (self.epoch.fetch_add(1, SeqCst) & 1) as usize;
        loop {
            let open = self.open[slot].load(SeqCst);
            if open == 0 {
                break;
            }
            futex::wait(&self.open[slot], open, None);
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
    fn a_close_with_no_waiter_makes_no_futex_call() {
        let windows = Windows::new();
        for _ in 0..3 {
            drop(windows.open());
        }
        assert_eq!(windows.waiting.wakes.load(SeqCst), 0);
    }

    /// A waiter racing the close of the last window is never left asleep: many rounds of
    /// one window closed while a flush-like waiter starts. (With the waiter not counted,
    /// a round hangs.)
    #[test]
    fn a_waiter_racing_the_last_close_is_woken() {
        let windows = Arc::new(Windows::new());
        for round in 0..2000 {
            let window_windows = Arc::clone(&windows);
            let opened = Arc::new(AtomicBool::new(false));
            let opened_by_closer = Arc::clone(&opened);
            let closer = std::thread::spawn(move || {
                let window = window_windows.open();
                opened_by_closer.store(true, SeqCst);
                // Held for a varying while: the waiter sometimes sleeps, sometimes not.
                (0..(round % 64) * 200).for_each(|_| std::hint::spin_loop());
                drop(window);
            });
            while !opened.load(SeqCst) {
                std::hint::spin_loop();
            }
            windows.wait();
            closer.join().expect("closer");
        }
        assert_eq!(windows.waiting.count(), 0);
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
