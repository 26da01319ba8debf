//! [`PrivateView`]: a store seen through a private overlay of punched ranges, for memory
//! that only fills from it (an adopted region). Punching a hole marks the range in the
//! view: from then on it is a hole there (it reads as zeros and is served as the zero
//! page), and the store below is never written. A VMM's balloon removes
//! (`UFFD_EVENT_REMOVE`) are such punches: the guest gave those pages back, so they must
//! come back as zeros, not as the snapshot's old bytes.

use std::sync::{Arc, RwLock};

use crate::store::{Extent, ExtentKind, Store, StoreError, check_range, read_only};

/// A read-only view of a store with ranges punched into it (see the module doc).
pub(crate) struct PrivateView {
    below: Arc<dyn Store>,
    /// Punched byte ranges, sorted, disjoint and not touching (merged on insert).
    punched: RwLock<Vec<(u64, u64)>>,
}

impl PrivateView {
    /// A view of `below` with nothing punched.
    pub(crate) fn new(below: Arc<dyn Store>) -> PrivateView {
        PrivateView {
            below,
            punched: RwLock::new(Vec::new()),
        }
    }

    /// The punched ranges (a copy; the lock is never held while the store below runs).
    fn punched(&self) -> Vec<(u64, u64)> {
        match self.punched.read() {
            Ok(punched) => punched.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The punched range holding `offset`, or else where the next one starts.
    fn punch_at(&self, offset: u64) -> Result<(u64, u64), u64> {
        let punched = match self.punched.read() {
            Ok(punched) => punched,
            Err(poisoned) => poisoned.into_inner(),
        };
        let after = punched.partition_point(|&(start, _)| start <= offset);
        if let Some(&(start, end)) = after.checked_sub(1).and_then(|i| punched.get(i)) {
            if offset < end {
                return Ok((start, end));
            }
        }
        Err(punched.get(after).map_or(u64::MAX, |&(start, _)| start))
    }
}

/// Inserts `start..end` into sorted, disjoint, non-touching `ranges`, merging.
fn merge(ranges: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    let first = ranges.partition_point(|&(_, e)| e < start);
    let last = ranges.partition_point(|&(s, _)| s <= end);
    let (mut start, mut end) = (start, end);
    if first < last {
        start = start.min(ranges[first].0);
        end = end.max(ranges[last - 1].1);
    }
    ranges.splice(first..last, [(start, end)]);
}

impl Store for PrivateView {
    fn len(&self) -> u64 {
        self.below.len()
    }

    fn extent(&self, offset: u64) -> Result<Extent, StoreError> {
        check_range(offset, 1, self.len())?;
        match self.punch_at(offset) {
            Ok((_, end)) => Ok(Extent {
                kind: ExtentKind::Hole,
                len: end.min(self.len()) - offset,
            }),
            Err(next) => {
                let below = self.below.extent(offset)?;
                let len = below.len.min(next - offset);
                Ok(Extent { len, ..below })
            }
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.below.read_at(offset, buf)?;
        let end = offset + buf.len() as u64;
        for (start, stop) in self.punched() {
            let (from, to) = (start.max(offset), stop.min(end));
            if from < to {
                buf[(from - offset) as usize..(to - offset) as usize].fill(0);
            }
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, _buf: &[u8]) -> Result<(), StoreError> {
        Err(read_only("write", offset))
    }

    fn allocate(&self, offset: u64, _len: u64) -> Result<(), StoreError> {
        Err(read_only("allocate", offset))
    }

    /// Marks the range a hole in this view only.
    fn punch_hole(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_range(offset, len, self.len())?;
        if len > 0 {
            let mut punched = match self.punched.write() {
                Ok(punched) => punched,
                Err(poisoned) => poisoned.into_inner(),
            };
            merge(&mut punched, offset, offset + len);
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn allocated_bytes(&self) -> Option<u64> {
        self.below.allocated_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[test]
    fn punches_merge() {
        let mut ranges = Vec::new();
        for (start, end) in [(10, 20), (30, 40), (20, 25), (5, 8), (7, 31)] {
            merge(&mut ranges, start, end);
        }
        assert_eq!(ranges, vec![(5, 40)]);
        merge(&mut ranges, 50, 60);
        assert_eq!(ranges, vec![(5, 40), (50, 60)]);
    }

    #[test]
    fn a_punched_range_is_a_hole_of_the_view_only() {
        let below = Arc::new(MemStore::new(16 * 4096));
        below.write_at(0, &[7; 16 * 4096]).expect("write");
        let view = PrivateView::new(below.clone());
        view.punch_hole(4 * 4096, 2 * 4096).expect("punch");
        let extent = |offset| view.extent(offset).expect("extent");
        assert_eq!(extent(0).kind, ExtentKind::Data);
        assert_eq!(extent(0).len, 4 * 4096, "data stops where the punch starts");
        assert_eq!(extent(4 * 4096).kind, ExtentKind::Hole);
        assert_eq!(extent(5 * 4096).len, 4096);
        let mut buf = vec![1; 8 * 4096];
        view.read_at(0, &mut buf).expect("read");
        assert!(buf[..4 * 4096].iter().all(|&b| b == 7));
        assert!(buf[4 * 4096..6 * 4096].iter().all(|&b| b == 0));
        assert!(buf[6 * 4096..].iter().all(|&b| b == 7));
        let mut below_bytes = vec![0; 4096];
        below.read_at(4 * 4096, &mut below_bytes).expect("read");
        assert!(
            below_bytes.iter().all(|&b| b == 7),
            "the store below is untouched"
        );
        assert!(view.write_at(0, &[1]).is_err());
    }
}
