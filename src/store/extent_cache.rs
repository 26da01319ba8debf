//! The last data extent a store reported, remembered without locks (a seqlock over
//! atomics: readers never block, so it may be read inside a signal handler).
//!
//! Only data runs are kept: udax's own writes and allocations turn holes into data, never
//! data into holes, so a remembered data run stays true until a hole is punched, which
//! clears it. Hole runs are asked anew each time.

use std::sync::atomic::{AtomicU64, Ordering, fence};

/// One remembered data run `start..end`.
#[derive(Debug, Default)]
pub(crate) struct ExtentCache {
    /// Even: stable; odd: a writer is between its two stores.
    sequence: AtomicU64,
    start: AtomicU64,
    end: AtomicU64,
}

impl ExtentCache {
    /// The bytes of data from `offset` to the end of the remembered run, if it holds `offset`.
    pub(crate) fn data_at(&self, offset: u64) -> Option<u64> {
        let before = self.sequence.load(Ordering::Acquire);
        if before & 1 == 1 {
            return None;
        }
        let start = self.start.load(Ordering::Relaxed);
        let end = self.end.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if self.sequence.load(Ordering::Relaxed) != before {
            return None;
        }
        (start <= offset && offset < end).then(|| end - offset)
    }

    /// Remembers the data run `start..end` (if another writer is busy, skips: a cache).
    pub(crate) fn remember(&self, start: u64, end: u64) {
        let before = self.sequence.load(Ordering::Relaxed);
        if before & 1 == 1
            || self
                .sequence
                .compare_exchange(before, before + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        fence(Ordering::Release);
        self.start.store(start, Ordering::Relaxed);
        self.end.store(end, Ordering::Relaxed);
        self.sequence.store(before + 2, Ordering::Release);
    }

    /// Forgets the remembered run (a hole was punched). Waits out a concurrent writer so
    /// the forgetting cannot be lost.
    pub(crate) fn forget(&self) {
        loop {
            let before = self.sequence.load(Ordering::Relaxed);
            if before & 1 == 0
                && self
                    .sequence
                    .compare_exchange(before, before + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                fence(Ordering::Release);
                self.start.store(0, Ordering::Relaxed);
                self.end.store(0, Ordering::Relaxed);
                self.sequence.store(before + 2, Ordering::Release);
                return;
            }
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_one_data_run_until_forgotten() {
        let cache = ExtentCache::default();
        assert_eq!(cache.data_at(0), None);
        cache.remember(4096, 16384);
        assert_eq!(cache.data_at(4095), None);
        assert_eq!(cache.data_at(4096), Some(12288));
        assert_eq!(cache.data_at(16383), Some(1));
        assert_eq!(cache.data_at(16384), None);
        cache.forget();
        assert_eq!(cache.data_at(8192), None);
    }
}
