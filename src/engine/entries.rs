//! The entry table (the mapping's xarray analog, one per region): one state word per
//! 4 KiB page, with a lock bit, and the index of dirty pages.
//!
//! Lock order: entries are locked in ascending index order; nothing else is held while
//! waiting for an entry (eviction takes its victims with `try_lock` only, skipping busy
//! ones, and starts with no entry locked). A thread holding an entry lock may call the
//! store and the uffd ioctls, never touch the region's memory from user space (a fault
//! there would wait for itself).
//!
//! Waiting uses a futex on the entry word itself (the kernel's futex hash plays the part
//! of the kernel DAX code's hashed wait table), so locking needs no allocation and no
//! user-space mutex: it is async-signal-safe, which resolving faults in the faulting
//! thread needs.
//!
//! Invariants (numbered as the tests and comments cite them):
//! 1. Only the holder of an entry's lock changes its state.
//! 2. A page is in the dirty index whenever its state is Dirty (the index may also hold
//!    pages that are no longer Dirty; writeback skips those).
//! 3. `resident` counts entries in Clean or Dirty (Zero pages cost no memory).
//! 4. The referenced bit is set whenever an entry becomes resident or goes Clean -> Dirty
//!    (a fault brought it in or wrote it); only the eviction clock clears it (see evict.rs).
//! 6. The evicted-dirty bit is set only while the entry is Empty: eviction sets it when it
//!    drops a page it has just written back (`set_evicted`), and every change of state
//!    clears it, so the read that brings the page back (policy: refill) consumes it.
//! 7. The unwritten bit is set only on a Dirty entry that a 2 MiB write fault installed
//!    writable, zero-filled, over a hole it did not allocate (write-around, `huge.rs`):
//!    the store holds nothing there, so writeback may skip the page instead of writing
//!    it while its bytes are still all zero. The lifted bit is set only on a Dirty entry
//!    whose protection a write fault lifted ahead of its first write, from Clean (a
//!    sequential write over data, `huge.rs`): writeback may skip it while its bytes equal
//!    the store's. Every change of state clears both (a change can only make writeback
//!    write the page, which is always correct).

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::sys::futex;
use crate::sys::memory::ZeroedArray;

/// What an entry says about its page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Nothing mapped; the next access faults as missing.
    Empty = 0,
    /// The shared zero page, write-protected, over a hole of the store.
    Zero = 1,
    /// A private copy of the store's bytes, write-protected, equal to the store.
    Clean = 2,
    /// A private page that may differ from the store, possibly writable.
    Dirty = 3,
}

impl State {
    fn from_bits(word: u32) -> State {
        match word & STATE_MASK {
            0 => State::Empty,
            1 => State::Zero,
            2 => State::Clean,
            _ => State::Dirty,
        }
    }

    /// Whether the page holds memory of its own.
    pub(crate) fn is_resident(self) -> bool {
        matches!(self, State::Clean | State::Dirty)
    }
}

const STATE_MASK: u32 = 0b11;
const LOCKED: u32 = 1 << 2;
const WAITERS: u32 = 1 << 3;
/// Invariant 4: faulted in or written since the eviction clock last passed.
const REFERENCED: u32 = 1 << 4;
/// Invariant 6: dropped by eviction right after its writeback (it was Dirty).
const EVICTED_DIRTY: u32 = 1 << 5;
/// Invariant 7: installed writable over an unallocated hole, maybe never written.
const UNWRITTEN: u32 = 1 << 6;
/// Invariant 7: made writable from Clean ahead of its first write, maybe never written.
const LIFTED: u32 = 1 << 7;

/// What the eviction clock finds at an entry (see [`Entries::age`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Age {
    /// Empty or Zero: holds no memory, not a victim.
    NotResident,
    /// Locked by a fault, a flush or another eviction: skipped.
    Busy,
    /// Resident and referenced since the clock last passed: the bit is now cleared (its
    /// second chance).
    Referenced,
    /// Resident and not referenced: a victim, if it can be locked.
    Cold,
}

/// The per-page entries of one region.
///
/// Memory follows the pages touched, not the pages mapped: every table is a
/// [`ZeroedArray`] (Empty is the all-zero word), so a 1 TiB sparse mapping costs address
/// space, not Rss, until its pages fault.
pub(crate) struct Entries {
    words: ZeroedArray<AtomicU32>,
    dirty: PageBits,
    /// Invariant 5: a page's bit is set exactly while its state is Clean or Dirty (set
    /// and cleared under its entry lock, in `set`), so the eviction clock visits resident
    /// pages only.
    resident_pages: PageBits,
    resident: AtomicU64,
    resident_peak: AtomicU64,
}

/// A locked entry. Dropping it unlocks and wakes waiters.
pub(crate) struct EntryGuard<'a> {
    entries: &'a Entries,
    index: usize,
}

impl Entries {
    /// A table of `pages` Empty entries.
    ///
    /// # Errors
    /// ENOMEM if the tables' memory (address space, `vm.max_map_count`) cannot be had.
    pub(crate) fn new(pages: usize) -> io::Result<Entries> {
        Ok(Entries {
            words: ZeroedArray::new(pages)?,
            dirty: PageBits::new(pages)?,
            resident_pages: PageBits::new(pages)?,
            resident: AtomicU64::new(0),
            resident_peak: AtomicU64::new(0),
        })
    }

    /// The first resident page at or after `from`, if any (invariant 5; a hint, like
    /// [`Entries::peek`]).
    pub(crate) fn next_resident(&self, from: usize) -> Option<usize> {
        self.resident_pages.next_set(from)
    }

    /// The state without locking: a hint that may be stale by the time it is used.
    pub(crate) fn peek(&self, index: usize) -> State {
        State::from_bits(self.words[index].load(Ordering::Acquire))
    }

    /// Locks entry `index`, waiting while another thread holds it.
    pub(crate) fn lock(&self, index: usize) -> EntryGuard<'_> {
        let word = &self.words[index];
        loop {
            if let Some(guard) = self.try_lock(index) {
                return guard;
            }
            let current = word.load(Ordering::Relaxed);
            if current & LOCKED == 0 {
                continue;
            }
            // Announce a waiter before sleeping; if the holder unlocked in between, the
            // CAS fails and we retry instead of sleeping on a stale value.
            let waiting = current | WAITERS;
            if word
                .compare_exchange(current, waiting, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                futex::wait(word, waiting, None);
            }
        }
    }

    /// Locks entry `index` if nobody holds it.
    pub(crate) fn try_lock(&self, index: usize) -> Option<EntryGuard<'_>> {
        let word = &self.words[index];
        let current = word.load(Ordering::Relaxed);
        if current & LOCKED != 0 {
            return None;
        }
        word.compare_exchange(
            current,
            current | LOCKED,
            Ordering::Acquire,
            Ordering::Relaxed,
        )
        .ok()
        .map(|_| EntryGuard {
            entries: self,
            index,
        })
    }

    /// Takes every index marked dirty so far, in ascending order, clearing the marks.
    pub(crate) fn take_dirty(&self) -> Vec<usize> {
        self.dirty.take()
    }

    /// Marks `index` dirty again (after a failed writeback).
    pub(crate) fn remark_dirty(&self, index: usize) {
        self.dirty.mark(index);
    }

    /// The eviction clock's look at entry `index`: clears a set referenced bit (second
    /// chance) of an unlocked resident entry and says what it found. A hint like
    /// [`Entries::peek`]: the caller re-checks a `Cold` entry under its lock.
    pub(crate) fn age(&self, index: usize) -> Age {
        let word = &self.words[index];
        let current = word.load(Ordering::Relaxed);
        if !State::from_bits(current).is_resident() {
            return Age::NotResident;
        }
        if current & LOCKED != 0 {
            return Age::Busy;
        }
        if current & REFERENCED != 0 {
            // Only the bit changes; a concurrent lock, unlock or waiter bit is kept.
            word.fetch_and(!REFERENCED, Ordering::Relaxed);
            return Age::Referenced;
        }
        Age::Cold
    }

    /// Pages in Clean or Dirty now, and the highest that count has been.
    pub(crate) fn resident(&self) -> (u64, u64) {
        (
            self.resident.load(Ordering::Relaxed),
            self.resident_peak.load(Ordering::Relaxed),
        )
    }
}

impl EntryGuard<'_> {
    /// The locked entry's index.
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// The locked entry's state.
    pub(crate) fn state(&self) -> State {
        self.entries.peek(self.index)
    }

    /// Whether the locked entry was faulted in or written since the clock last passed.
    pub(crate) fn is_referenced(&self) -> bool {
        self.entries.words[self.index].load(Ordering::Relaxed) & REFERENCED != 0
    }

    /// Whether eviction dropped the page right after writing it back (invariant 6): it was
    /// being written, so it likely will be again.
    pub(crate) fn was_evicted_dirty(&self) -> bool {
        self.entries.words[self.index].load(Ordering::Relaxed) & EVICTED_DIRTY != 0
    }

    /// Whether the page was installed writable over a hole it did not allocate and may
    /// never have been written (invariant 7).
    pub(crate) fn is_unwritten(&self) -> bool {
        self.entries.words[self.index].load(Ordering::Relaxed) & UNWRITTEN != 0
    }

    /// Whether the page was made writable from Clean ahead of its first write and may
    /// still equal the store (invariant 7).
    pub(crate) fn is_lifted(&self) -> bool {
        self.entries.words[self.index].load(Ordering::Relaxed) & LIFTED != 0
    }

    /// Write-around's mark on a Dirty entry it made writable before any write to it
    /// (invariant 7): `lifted` from Clean over data, else installed over a hole it did not
    /// allocate.
    pub(crate) fn set_ahead(&mut self, lifted: bool) {
        debug_assert_eq!(self.state(), State::Dirty, "only Dirty entries are marked");
        let bit = if lifted { LIFTED } else { UNWRITTEN };
        // Only this bit changes; the clock and waiters may change theirs meanwhile.
        self.entries.words[self.index].fetch_or(bit, Ordering::Relaxed);
    }

    /// Eviction's transition: the page is dropped, the entry Empty, remembering whether
    /// the page was Dirty (and written back) when evicted (invariant 6).
    pub(crate) fn set_evicted(&mut self, was_dirty: bool) {
        self.set(State::Empty);
        if was_dirty {
            // Only this bit changes; the clock and waiters may change theirs meanwhile.
            self.entries.words[self.index].fetch_or(EVICTED_DIRTY, Ordering::Relaxed);
        }
    }

    /// Moves the entry to `state`, keeping invariants 2 to 6.
    pub(crate) fn set(&mut self, state: State) {
        let entries = self.entries;
        let word = &entries.words[self.index];
        let old = State::from_bits(word.load(Ordering::Relaxed));
        let referenced = match (old, state) {
            (State::Clean, State::Dirty) => REFERENCED,
            _ if !old.is_resident() && state.is_resident() => REFERENCED,
            _ => 0,
        };
        // Invariant 1: we hold the lock, so only the state bits change under us... and
        // the WAITERS and REFERENCED bits, which a waiter or the clock may change
        // concurrently: update with a CAS loop. Invariants 6 and 7: any change clears the
        // evicted-dirty and unwritten bits.
        let _ = word.fetch_update(Ordering::Release, Ordering::Relaxed, |w| {
            let marks = STATE_MASK | EVICTED_DIRTY | UNWRITTEN | LIFTED;
            Some((w & !marks) | state as u32 | referenced)
        });
        if state == State::Dirty && old != State::Dirty {
            entries.dirty.mark(self.index);
        }
        match (old.is_resident(), state.is_resident()) {
            (false, true) => {
                entries.resident_pages.mark(self.index);
                let now = entries.resident.fetch_add(1, Ordering::Relaxed) + 1;
                entries.resident_peak.fetch_max(now, Ordering::Relaxed);
            }
            (true, false) => {
                entries.resident_pages.clear(self.index);
                entries.resident.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

impl Drop for EntryGuard<'_> {
    fn drop(&mut self) {
        let word = &self.entries.words[self.index];
        let previous = word.fetch_and(!(LOCKED | WAITERS), Ordering::Release);
        if previous & WAITERS != 0 {
            futex::wake(word, i32::MAX);
        }
    }
}

/// A two-level bitmap of pages (the dirty index, the resident set): marking is one atomic
/// OR per level (no lock, no allocation); taking or searching costs O(set bits + pages /
/// 4096), and its memory follows the pages marked.
///
/// The summary bit of a word may be set while the word is zero (a clear or a take raced
/// a mark), never clear while the word has a bit set after a mark returned.
struct PageBits {
    /// Bit `i % 64` of word `i / 64`: page `i` was marked.
    pages: ZeroedArray<AtomicU64>,
    /// Bit `w % 64` of word `w / 64`: word `w` of `pages` may be non-zero.
    summary: ZeroedArray<AtomicU64>,
}

impl PageBits {
    fn new(pages: usize) -> io::Result<PageBits> {
        let words = pages.div_ceil(64);
        Ok(PageBits {
            pages: ZeroedArray::new(words)?,
            summary: ZeroedArray::new(words.div_ceil(64))?,
        })
    }

    /// Page bit first, then summary bit: if `mark` races `take`, either `take` sees the
    /// page now, or the summary bit set after its swap sends the next `take` to it.
    fn mark(&self, index: usize) {
        let word = index / 64;
        self.pages[word].fetch_or(1 << (index % 64), Ordering::Release);
        self.summary[word / 64].fetch_or(1 << (word % 64), Ordering::Release);
    }

    /// Clears the page's bit; the summary bit stays (a later search clears it lazily), so
    /// a racing `mark` of a neighbour is never hidden.
    fn clear(&self, index: usize) {
        self.pages[index / 64].fetch_and(!(1 << (index % 64)), Ordering::Release);
    }

    fn take(&self) -> Vec<usize> {
        let mut taken = Vec::new();
        for (summary_index, summary) in self.summary.iter().enumerate() {
            let mut words = summary.swap(0, Ordering::Acquire);
            while words != 0 {
                let word = summary_index * 64 + words.trailing_zeros() as usize;
                words &= words - 1;
                let mut bits = self.pages[word].swap(0, Ordering::Acquire);
                while bits != 0 {
                    taken.push(word * 64 + bits.trailing_zeros() as usize);
                    bits &= bits - 1;
                }
            }
        }
        taken
    }

    /// The first marked page at or after `from`. Skips 4096 unmarked pages per summary
    /// word; drops summary bits whose word it finds zero.
    fn next_set(&self, from: usize) -> Option<usize> {
        let mut word = from / 64;
        // Bits of the first word below `from` do not count.
        let mut mask = u64::MAX.checked_shl((from % 64) as u32).unwrap_or(0);
        while word < self.pages.len() {
            let summary = &self.summary[word / 64];
            let above = summary.load(Ordering::Acquire) & (u64::MAX << (word % 64));
            if above == 0 {
                word = (word / 64 + 1) * 64;
                mask = u64::MAX;
                continue;
            }
            let candidate = (word / 64) * 64 + above.trailing_zeros() as usize;
            if candidate != word {
                (word, mask) = (candidate, u64::MAX);
            }
            let bits = self.pages[word].load(Ordering::Acquire) & mask;
            if bits != 0 {
                return Some(word * 64 + bits.trailing_zeros() as usize);
            }
            if mask == u64::MAX {
                self.drop_summary_bit(word);
            }
            (word, mask) = (word + 1, u64::MAX);
        }
        None
    }

    /// Clears the summary bit of `word` if the word is zero, re-setting it if a mark
    /// raced in between (the mark's own summary OR may have landed before our clear).
    fn drop_summary_bit(&self, word: usize) {
        let summary = &self.summary[word / 64];
        summary.fetch_and(!(1 << (word % 64)), Ordering::AcqRel);
        if self.pages[word].load(Ordering::Acquire) != 0 {
            summary.fetch_or(1 << (word % 64), Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn dirty_index_returns_each_marked_page_once_in_order() {
        let entries = Entries::new(10_000).expect("entries");
        for index in [9_999, 0, 64, 4_095, 4_096, 63, 64] {
            let mut guard = entries.lock(index);
            guard.set(State::Dirty);
        }
        assert_eq!(entries.take_dirty(), vec![0, 63, 64, 4_095, 4_096, 9_999]);
        assert!(entries.take_dirty().is_empty());
    }

    /// Invariant 5: the resident set follows the states, and the search skips whole
    /// empty summary words and cleared pages.
    #[test]
    fn next_resident_finds_resident_pages_only() {
        let entries = Entries::new(1 << 20).expect("entries");
        for index in [5, 64, 70_000, (1 << 20) - 1] {
            entries.lock(index).set(State::Clean);
        }
        entries.lock(6).set(State::Zero);
        entries.lock(64).set(State::Empty);
        let found: Vec<_> = [0, 6, 65, 70_001, (1 << 20) - 1]
            .map(|from| entries.next_resident(from))
            .into();
        let expected = [
            Some(5),
            Some(70_000),
            Some(70_000),
            Some((1 << 20) - 1),
            Some((1 << 20) - 1),
        ];
        assert_eq!(found, expected);
        entries.lock((1 << 20) - 1).set(State::Dirty);
        entries.lock((1 << 20) - 1).set(State::Empty);
        assert_eq!(entries.next_resident(70_001), None);
        assert_eq!(entries.next_resident(0), Some(5));
    }

    #[test]
    fn set_counts_resident_pages_and_peak() {
        let entries = Entries::new(4).expect("entries");
        entries.lock(0).set(State::Zero);
        entries.lock(1).set(State::Clean);
        entries.lock(2).set(State::Dirty);
        entries.lock(1).set(State::Dirty);
        entries.lock(2).set(State::Empty);
        assert_eq!(entries.resident(), (1, 2));
        assert_eq!(entries.peek(0), State::Zero);
    }

    /// Invariant 4 and the second chance: a page brought in or written is referenced
    /// once; the clock clears the bit, then finds it cold; locked and non-resident
    /// entries are left alone.
    #[test]
    fn age_gives_referenced_pages_a_second_chance() {
        let entries = Entries::new(4).expect("entries");
        entries.lock(0).set(State::Clean);
        entries.lock(1).set(State::Zero);
        assert_eq!(entries.age(0), Age::Referenced);
        assert_eq!(entries.age(0), Age::Cold);
        assert_eq!(entries.age(1), Age::NotResident);
        assert_eq!(entries.age(2), Age::NotResident);
        // A write (Clean -> Dirty) references it again; writeback (Dirty -> Clean) does not.
        entries.lock(0).set(State::Dirty);
        assert!(entries.lock(0).is_referenced());
        let guard = entries.lock(0);
        assert_eq!(entries.age(0), Age::Busy);
        drop(guard);
        assert_eq!(entries.age(0), Age::Referenced);
        entries.lock(0).set(State::Clean);
        assert_eq!(entries.age(0), Age::Cold);
        assert!(!entries.lock(0).is_referenced());
    }

    /// Invariant 6: eviction of a Dirty page leaves the mark; the refill (any change of
    /// state) clears it; a Clean page evicted leaves none.
    #[test]
    fn the_evicted_dirty_mark_lasts_until_the_next_state() {
        let entries = Entries::new(2).expect("entries");
        entries.lock(0).set(State::Dirty);
        entries.lock(1).set(State::Clean);
        entries.lock(0).set_evicted(true);
        entries.lock(1).set_evicted(false);
        assert!(entries.lock(0).was_evicted_dirty());
        assert!(!entries.lock(1).was_evicted_dirty());
        assert_eq!(entries.peek(0), State::Empty);
        assert_eq!(entries.resident(), (0, 2));
        entries.lock(0).set(State::Dirty);
        assert!(!entries.lock(0).was_evicted_dirty());
    }

    #[test]
    fn try_lock_fails_while_held() {
        let entries = Entries::new(2).expect("entries");
        let guard = entries.lock(1);
        assert!(entries.try_lock(1).is_none());
        assert!(entries.try_lock(0).is_some());
        drop(guard);
        assert!(entries.try_lock(1).is_some());
    }

    /// Increments under the entry lock from several threads lose nothing.
    #[test]
    fn lock_serializes_threads() {
        let entries = Arc::new(Entries::new(1).expect("entries"));
        let counter = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (entries, counter) = (entries.clone(), counter.clone());
                std::thread::spawn(move || {
                    for _ in 0..2_000 {
                        let _guard = entries.lock(0);
                        // A non-atomic read-modify-write, made safe only by the lock.
                        let value = counter.load(Ordering::Relaxed);
                        std::hint::spin_loop();
                        counter.store(value + 1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        assert_eq!(counter.load(Ordering::Relaxed), 8_000);
    }
}
