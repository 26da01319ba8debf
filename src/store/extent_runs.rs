//! Windows of a store's layout, as a remote store's extent queries answered them: each
//! window is one answer (a few megabytes to gigabytes of holes and data), kept so that the
//! next faults in it ask nothing (an NBD block-status round trip costs 60-70 µs, ten
//! times a userfaultfd fault).
//!
//! Unlike [`ExtentCache`](crate::store::extent_cache::ExtentCache), which keeps one data
//! run lock-free for signal handlers, this keeps holes too: over a network most of a sparse
//! image is hole and asking again for each is the cost to avoid. That is only sound while
//! the store is the only writer of the export (the caller's invariant) and tells the cache
//! of every change it makes: a write or allocation marks its range data, a punch forgets
//! the windows it touches (the server decides whether it became a hole).
//!
//! Races: an answer is remembered only if no change was marked since its query was issued
//! (a generation number): if a write races a query, either the query was issued after the
//! write completed and saw it, or the generation moved and the answer is dropped.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::store::{Extent, ExtentKind};

/// How many windows are kept (the oldest is dropped first).
const MAX_WINDOWS: usize = 64;

/// One run of a window: its kind, up to `end` (it starts where the previous run ends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    end: u64,
    kind: ExtentKind,
}

/// One answer: `start..end` covered by `runs` (in order, adjacent runs of different kinds).
#[derive(Debug)]
struct Window {
    start: u64,
    runs: Vec<Run>,
}

impl Window {
    fn end(&self) -> u64 {
        self.runs.last().map_or(self.start, |r| r.end)
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.end()
    }

    /// The run holding `offset`, from `offset` to its end.
    fn extent_at(&self, offset: u64) -> Option<Extent> {
        if offset < self.start || offset >= self.end() {
            return None;
        }
        let index = self.runs.partition_point(|r| r.end <= offset);
        let run = self.runs[index];
        Some(Extent {
            kind: run.kind,
            len: run.end - offset,
        })
    }

    /// Sets `start..end` (clipped to the window) to `kind`.
    fn set(&mut self, start: u64, end: u64, kind: ExtentKind) {
        let (start, end) = (start.max(self.start), end.min(self.end()));
        let mut runs = Vec::with_capacity(self.runs.len() + 2);
        let mut run_start = self.start;
        for run in &self.runs {
            if run_start < start {
                push(&mut runs, run.end.min(start), run.kind);
            }
            if run.end > start && run_start < end {
                push(&mut runs, end, kind);
            }
            if run.end > end {
                push(&mut runs, run.end, run.kind);
            }
            run_start = run.end;
        }
        self.runs = runs;
    }
}

/// Appends the run `..end` of `kind`, merging it into the last one of the same kind.
fn push(runs: &mut Vec<Run>, end: u64, kind: ExtentKind) {
    match runs.last_mut() {
        Some(last) if last.kind == kind => last.end = last.end.max(end),
        Some(last) if last.end >= end => {}
        _ => runs.push(Run { end, kind }),
    }
}

/// The remembered windows and the generation of changes.
#[derive(Debug, Default)]
struct Windows {
    /// Newest first.
    list: VecDeque<Window>,
    /// Bumped by every change the store marks.
    generation: u64,
}

/// The windows of a store's layout its queries have answered.
#[derive(Debug, Default)]
pub(crate) struct ExtentRuns {
    windows: Mutex<Windows>,
}

impl ExtentRuns {
    fn lock(&self) -> std::sync::MutexGuard<'_, Windows> {
        // A panic while holding the lock leaves the windows consistent (every change is
        // made on a copy and swapped in), so a poisoned lock is used as it is.
        self.windows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The remembered run at `offset`, from `offset` to its end (as far as the window knows).
    pub(crate) fn extent_at(&self, offset: u64) -> Option<Extent> {
        self.lock().list.iter().find_map(|w| w.extent_at(offset))
    }

    /// The generation to pass to [`ExtentRuns::remember`]: read it before issuing the query.
    pub(crate) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Keeps the answer `runs` (lengths and kinds, in order from `start`) unless a change
    /// was marked since `generation` was read.
    pub(crate) fn remember(&self, generation: u64, start: u64, runs: &[(u64, ExtentKind)]) {
        let mut window = Window {
            start,
            runs: Vec::with_capacity(runs.len()),
        };
        let mut end = start;
        for &(len, kind) in runs.iter().filter(|(len, _)| *len > 0) {
            end += len;
            push(&mut window.runs, end, kind);
        }
        let mut windows = self.lock();
        if windows.generation != generation || window.runs.is_empty() {
            return;
        }
        windows.list.retain(|w| !w.overlaps(start, end));
        windows.list.push_front(window);
        windows.list.truncate(MAX_WINDOWS);
    }

    /// Records that `start..end` is now data (a write or an allocation completed).
    pub(crate) fn mark_data(&self, start: u64, end: u64) {
        let mut windows = self.lock();
        windows.generation += 1;
        for window in windows.list.iter_mut().filter(|w| w.overlaps(start, end)) {
            window.set(start, end, ExtentKind::Data);
        }
    }

    /// Forgets every window touching `start..end` (a punch: only the server knows what
    /// it left there).
    pub(crate) fn forget(&self, start: u64, end: u64) {
        let mut windows = self.lock();
        windows.generation += 1;
        windows.list.retain(|w| !w.overlaps(start, end));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExtentKind::{Data, Hole};

    fn at(runs: &ExtentRuns, offset: u64) -> Option<(ExtentKind, u64)> {
        runs.extent_at(offset).map(|e| (e.kind, e.len))
    }

    #[test]
    fn answers_inside_a_remembered_window_only() {
        let runs = ExtentRuns::default();
        let generation = runs.generation();
        runs.remember(
            generation,
            100,
            &[(50, Hole), (0, Data), (25, Hole), (25, Data)],
        );
        assert_eq!(at(&runs, 99), None);
        assert_eq!(at(&runs, 100), Some((Hole, 75)));
        assert_eq!(at(&runs, 174), Some((Hole, 1)));
        assert_eq!(at(&runs, 175), Some((Data, 25)));
        assert_eq!(at(&runs, 200), None);
    }

    #[test]
    fn a_write_turns_its_range_into_data_and_a_punch_forgets() {
        let runs = ExtentRuns::default();
        runs.remember(runs.generation(), 0, &[(100, Hole)]);
        runs.mark_data(10, 20);
        assert_eq!(at(&runs, 0), Some((Hole, 10)));
        assert_eq!(at(&runs, 10), Some((Data, 10)));
        assert_eq!(at(&runs, 20), Some((Hole, 80)));
        runs.mark_data(15, 30);
        assert_eq!(at(&runs, 10), Some((Data, 20)));
        runs.mark_data(0, 100);
        assert_eq!(at(&runs, 0), Some((Data, 100)));
        runs.forget(50, 51);
        assert_eq!(at(&runs, 0), None);
    }

    #[test]
    fn an_answer_older_than_a_change_is_dropped() {
        let runs = ExtentRuns::default();
        let generation = runs.generation();
        runs.mark_data(0, 10); // a write completes while the query is in flight
        runs.remember(generation, 0, &[(100, Hole)]);
        assert_eq!(at(&runs, 0), None);
    }

    #[test]
    fn a_new_window_replaces_the_ones_it_overlaps() {
        let runs = ExtentRuns::default();
        runs.remember(runs.generation(), 0, &[(100, Hole)]);
        runs.remember(runs.generation(), 50, &[(100, Data)]);
        assert_eq!(at(&runs, 0), None);
        assert_eq!(at(&runs, 60), Some((Data, 90)));
    }
}
