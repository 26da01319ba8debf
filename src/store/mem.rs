//! [`MemStore`]: a store in memory that knows its holes.
//!
//! Owns a sparse map of 4 KiB pages: a page present is data, a page absent is a hole.
//! It models a sparse file with 4 KiB blocks (writes, `allocate` and `punch_hole` change
//! whole pages, partial edges of a punch are zeroed), for tests and benchmarks without a
//! file system. It knows nothing of mappings, userfaultfd or entry states.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::PAGE_SIZE;
use crate::store::{Extent, ExtentKind, Store, StoreError, check_range};

/// [`PAGE_SIZE`] as a byte offset.
const PAGE: u64 = PAGE_SIZE as u64;

/// The longest data run [`Store::extent`] reports, in pages (64 MiB), so that a query
/// costs a bounded walk of the map.
const MAX_DATA_RUN_PAGES: usize = 16384;

/// One stored page.
type Page = Box<[u8; PAGE_SIZE]>;

/// Page index to page.
type Pages = BTreeMap<u64, Page>;

/// A store in memory, sparse at 4 KiB page granularity.
pub struct MemStore {
    /// Size in bytes.
    len: u64,
    /// The data pages, keyed by page index (offset / 4096).
    /// Invariant 1: every key is `< len.div_ceil(4096)`.
    /// Invariant 2: bytes of the last page at or past `len` are never read.
    pages: RwLock<Pages>,
}

impl MemStore {
    /// A store of `size` bytes, all hole.
    ///
    /// # Examples
    ///
    /// ```
    /// use udax::{ExtentKind, MemStore, Store};
    ///
    /// let store = MemStore::new(1 << 20);
    /// assert_eq!(store.extent(0)?.kind, ExtentKind::Hole);
    /// store.write_at(8192, b"data")?;                     // page 2 becomes data
    /// assert_eq!(store.extent(8192)?.kind, ExtentKind::Data);
    /// # Ok::<(), udax::StoreError>(())
    /// ```
    pub fn new(size: u64) -> MemStore {
        MemStore {
            len: size,
            pages: RwLock::new(BTreeMap::new()),
        }
    }

    /// A store holding a copy of `bytes`, every page data (size = `bytes.len()`).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use udax::{Mapping, MemStore, Options};
    ///
    /// let store = Arc::new(MemStore::with_data(&[7u8; 8192]));
    /// let mapping = Mapping::new(store, Options::default())?;
    /// let mut byte = [0u8];
    /// mapping.read_at(4096, &mut byte)?;                   // a data fault: read, clean
    /// assert_eq!((byte[0], mapping.stats().read_faults), (7, 1));
    /// mapping.close()?;
    /// # Ok::<(), udax::Error>(())
    /// ```
    pub fn with_data(bytes: &[u8]) -> MemStore {
        let pages = bytes
            .chunks(PAGE_SIZE)
            .enumerate()
            .map(|(index, chunk)| {
                let mut page = zero_page();
                page[..chunk.len()].copy_from_slice(chunk);
                (index as u64, page)
            })
            .collect();
        MemStore {
            len: bytes.len() as u64,
            pages: RwLock::new(pages),
        }
    }

    /// The map, for reading. A panic while the lock was held can leave at most a partly
    /// copied write (which failed), so a poisoned lock is still used.
    fn read_pages(&self) -> RwLockReadGuard<'_, Pages> {
        self.pages.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The map, for changing. See [`MemStore::read_pages`] on poisoning.
    fn write_pages(&self) -> RwLockWriteGuard<'_, Pages> {
        self.pages.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for MemStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemStore")
            .field("len", &self.len)
            .field("data_pages", &self.read_pages().len())
            .finish()
    }
}

impl Store for MemStore {
    fn len(&self) -> u64 {
        self.len
    }

    fn extent(&self, offset: u64) -> Result<Extent, StoreError> {
        check_range(offset, 1, self.len)?;
        let pages = self.read_pages();
        let first = offset / PAGE;
        let (kind, end) = if pages.contains_key(&first) {
            (ExtentKind::Data, data_run_end(&pages, first) * PAGE)
        } else {
            let next = pages.range(first..).next();
            (ExtentKind::Hole, next.map_or(self.len, |(&k, _)| k * PAGE))
        };
        // `end > offset`: the run covers at least the page holding `offset`.
        Ok(Extent {
            kind,
            len: end.min(self.len) - offset,
        })
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        check_range(offset, buf.len() as u64, self.len)?;
        let pages = self.read_pages();
        for span in spans(offset, buf.len()) {
            let out = &mut buf[span.in_buf];
            match pages.get(&span.page) {
                Some(page) => out.copy_from_slice(&page[span.in_page]),
                None => out.fill(0),
            }
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), StoreError> {
        check_range(offset, buf.len() as u64, self.len)?;
        let mut pages = self.write_pages();
        for span in spans(offset, buf.len()) {
            let page = pages.entry(span.page).or_insert_with(zero_page);
            page[span.in_page].copy_from_slice(&buf[span.in_buf]);
        }
        Ok(())
    }

    fn allocate(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_range(offset, len, self.len)?;
        if len == 0 {
            return Ok(());
        }
        let mut pages = self.write_pages();
        for index in offset / PAGE..=(offset + len - 1) / PAGE {
            pages.entry(index).or_insert_with(zero_page);
        }
        Ok(())
    }

    fn punch_hole(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_range(offset, len, self.len)?;
        let mut end = offset + len;
        if len > 0 && end == self.len {
            // Bytes past `len` are never read (invariant 2): a punch to the end frees the
            // last page whole.
            end = end.checked_next_multiple_of(PAGE).unwrap_or(u64::MAX);
        }
        let (first_full, end_full) = (offset.div_ceil(PAGE), end / PAGE);
        let mut pages = self.write_pages();
        if first_full < end_full {
            let doomed: Vec<u64> = pages.range(first_full..end_full).map(|(&k, _)| k).collect();
            for index in doomed {
                pages.remove(&index);
            }
        }
        // The partial pages at either edge (the same page if the range is inside one).
        zero_within_page(&mut pages, offset..end.min(first_full * PAGE));
        zero_within_page(&mut pages, offset.max(end_full * PAGE)..end);
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn allocated_bytes(&self) -> Option<u64> {
        Some(self.read_pages().len() as u64 * PAGE)
    }
}

/// A page of zeros.
fn zero_page() -> Page {
    Box::new([0; PAGE_SIZE])
}

/// One past the last page of the run of present pages starting at `first` (present),
/// looking at most [`MAX_DATA_RUN_PAGES`] pages ahead.
fn data_run_end(pages: &Pages, first: u64) -> u64 {
    let mut next = first;
    for &index in pages
        .range(first..)
        .map(|(k, _)| k)
        .take(MAX_DATA_RUN_PAGES)
    {
        if index != next {
            break;
        }
        next += 1;
    }
    next
}

/// Zeroes `range`, which lies inside one page, if that page is present (absent pages
/// already read as zeros).
fn zero_within_page(pages: &mut Pages, range: Range<u64>) {
    if range.is_empty() {
        return;
    }
    if let Some(page) = pages.get_mut(&(range.start / PAGE)) {
        let start = (range.start % PAGE) as usize;
        page[start..start + (range.end - range.start) as usize].fill(0);
    }
}

/// The part of a byte range that lies in one page.
struct Span {
    /// Page index.
    page: u64,
    /// Bytes within the page.
    in_page: Range<usize>,
    /// The same bytes within the caller's buffer.
    in_buf: Range<usize>,
}

/// Splits `offset..offset + len` at page boundaries.
fn spans(offset: u64, len: usize) -> impl Iterator<Item = Span> {
    let mut done = 0;
    std::iter::from_fn(move || {
        if done == len {
            return None;
        }
        let at = offset + done as u64;
        let start = (at % PAGE) as usize;
        let n = (PAGE_SIZE - start).min(len - done);
        let span = Span {
            page: at / PAGE,
            in_page: start..start + n,
            in_buf: done..done + n,
        };
        done += n;
        Some(span)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 64 * PAGE;

    fn run(kind: ExtentKind, len: u64) -> Extent {
        Extent { kind, len }
    }

    fn read(store: &MemStore, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0xa5; len];
        store.read_at(offset, &mut buf).expect("read");
        buf
    }

    /// Bytes `i % 251` for `i` in `0..len`: no two neighbouring pages alike.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn new_is_one_hole() {
        let store = MemStore::new(SIZE);
        assert_eq!(store.len(), SIZE);
        assert_eq!(
            store.extent(0).expect("extent"),
            run(ExtentKind::Hole, SIZE)
        );
        assert_eq!(
            store.extent(SIZE - 1).expect("extent"),
            run(ExtentKind::Hole, 1)
        );
        assert_eq!(store.allocated_bytes(), Some(0));
        assert_eq!(read(&store, 100, 5000), vec![0; 5000]);
        store.sync().expect("sync");
    }

    #[test]
    fn huge_hole_is_one_query() {
        let store = MemStore::new(1 << 40);
        store.write_at(1 << 39, b"x").expect("write");
        assert_eq!(
            store.extent(0).expect("extent"),
            run(ExtentKind::Hole, 1 << 39)
        );
        assert_eq!(
            store.extent((1 << 39) + 1).expect("extent"),
            run(ExtentKind::Data, PAGE - 1)
        );
        assert_eq!(
            store.extent((1 << 39) + PAGE).expect("extent"),
            run(ExtentKind::Hole, (1 << 39) - PAGE)
        );
    }

    #[test]
    fn unaligned_write_spans_pages() {
        let store = MemStore::new(SIZE);
        let data = pattern(10_000);
        store.write_at(4000, &data).expect("write");
        assert_eq!(read(&store, 4000, 10_000), data);
        let mut expect = vec![0; 4000];
        expect.extend_from_slice(&data);
        expect.resize(4 * PAGE_SIZE + 10, 0);
        assert_eq!(read(&store, 0, expect.len()), expect);
        // 4000..14000 touches pages 0..=3.
        assert_eq!(store.allocated_bytes(), Some(4 * PAGE));
        assert_eq!(
            store.extent(0).expect("extent"),
            run(ExtentKind::Data, 4 * PAGE)
        );
        assert_eq!(
            store.extent(5000).expect("extent"),
            run(ExtentKind::Data, 4 * PAGE - 5000)
        );
        assert_eq!(
            store.extent(4 * PAGE).expect("extent"),
            run(ExtentKind::Hole, SIZE - 4 * PAGE)
        );
    }

    #[test]
    fn with_data_is_all_data() {
        let data = pattern(3 * PAGE_SIZE + 7);
        let store = MemStore::with_data(&data);
        assert_eq!(store.len(), data.len() as u64);
        assert_eq!(
            store.extent(0).expect("extent"),
            run(ExtentKind::Data, data.len() as u64)
        );
        assert_eq!(read(&store, 0, data.len()), data);
        assert_eq!(store.allocated_bytes(), Some(4 * PAGE));
    }

    #[test]
    fn allocate_makes_data_and_keeps_bytes() {
        let store = MemStore::new(SIZE);
        store.write_at(PAGE + 1, b"keep").expect("write");
        store.allocate(100, 3 * PAGE).expect("allocate");
        // 100..12388 touches pages 0..=3.
        assert_eq!(store.allocated_bytes(), Some(4 * PAGE));
        assert_eq!(
            store.extent(0).expect("extent"),
            run(ExtentKind::Data, 4 * PAGE)
        );
        assert_eq!(read(&store, PAGE + 1, 4), b"keep");
        assert_eq!(read(&store, 0, PAGE_SIZE), vec![0; PAGE_SIZE]);
    }

    #[test]
    fn punch_hole_frees_whole_pages_and_zeroes_edges() {
        let data = pattern(8 * PAGE_SIZE);
        let store = MemStore::with_data(&data);
        store.punch_hole(100, 3 * PAGE).expect("punch");
        // 100..12388: page 0 keeps 0..100, pages 1 and 2 go, page 3 keeps 12388...
        let mut expect = data.clone();
        expect[100..12388].fill(0);
        assert_eq!(read(&store, 0, data.len()), expect);
        assert_eq!(store.allocated_bytes(), Some(6 * PAGE));
        assert_eq!(
            store.extent(0).expect("extent"),
            run(ExtentKind::Data, PAGE)
        );
        assert_eq!(
            store.extent(PAGE).expect("extent"),
            run(ExtentKind::Hole, 2 * PAGE)
        );
        assert_eq!(
            store.extent(3 * PAGE).expect("extent"),
            run(ExtentKind::Data, 5 * PAGE)
        );
    }

    #[test]
    fn punch_hole_inside_one_page() {
        let data = pattern(2 * PAGE_SIZE);
        let store = MemStore::with_data(&data);
        store.punch_hole(10, 20).expect("punch");
        store.punch_hole(PAGE, 20).expect("punch");
        let mut expect = data.clone();
        expect[10..30].fill(0);
        expect[PAGE_SIZE..PAGE_SIZE + 20].fill(0);
        assert_eq!(read(&store, 0, data.len()), expect);
        assert_eq!(store.allocated_bytes(), Some(2 * PAGE));
    }

    #[test]
    fn punch_hole_to_an_unaligned_end_frees_the_last_page() {
        let len = 2 * PAGE_SIZE + 100;
        let store = MemStore::with_data(&pattern(len));
        store.punch_hole(PAGE, PAGE + 100).expect("punch");
        assert_eq!(store.allocated_bytes(), Some(PAGE));
        assert_eq!(
            store.extent(PAGE).expect("extent"),
            run(ExtentKind::Hole, PAGE + 100)
        );
        store.punch_hole(0, len as u64).expect("punch all");
        assert_eq!(store.allocated_bytes(), Some(0));
    }

    #[test]
    fn data_run_is_capped() {
        let pages = MAX_DATA_RUN_PAGES as u64 + 2;
        let store = MemStore::new(pages * PAGE);
        store.allocate(0, pages * PAGE).expect("allocate");
        let first = store.extent(0).expect("extent");
        assert_eq!(
            first,
            run(ExtentKind::Data, MAX_DATA_RUN_PAGES as u64 * PAGE)
        );
        assert_eq!(
            store.extent(first.len).expect("extent"),
            run(ExtentKind::Data, 2 * PAGE)
        );
    }

    fn oor<T>(r: Result<T, StoreError>) -> bool {
        matches!(r, Err(StoreError::OutOfRange { .. }))
    }

    #[test]
    fn out_of_range_is_an_error() {
        let store = MemStore::new(SIZE);
        let mut buf = [0u8; 2];
        assert!(oor(store.extent(SIZE)));
        assert!(oor(store.extent(u64::MAX)));
        assert!(oor(store.read_at(SIZE - 1, &mut buf)));
        assert!(oor(store.write_at(SIZE - 1, &buf)));
        assert!(oor(store.write_at(u64::MAX, &buf)));
        assert!(oor(store.allocate(SIZE, 1)));
        assert!(oor(store.punch_hole(u64::MAX, 2)));
        assert!(store.allocate(SIZE, 0).is_ok());
        assert!(store.punch_hole(SIZE, 0).is_ok());
        assert_eq!(store.allocated_bytes(), Some(0));
        let empty = MemStore::new(0);
        assert!(empty.is_empty());
        assert!(oor(empty.extent(0)));
        assert!(empty.read_at(0, &mut []).is_ok());
    }

    #[test]
    fn concurrent_writers_on_disjoint_pages() {
        let store = std::sync::Arc::new(MemStore::new(SIZE));
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let store = std::sync::Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..8 {
                        let page = u64::from(t) * 8 + i;
                        store.write_at(page * PAGE, &[t; PAGE_SIZE]).expect("write");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("join");
        }
        for t in 0..8u8 {
            assert_eq!(
                read(&store, u64::from(t) * 8 * PAGE, 8 * PAGE_SIZE),
                vec![t; 8 * PAGE_SIZE]
            );
        }
        assert_eq!(
            store.extent(0).expect("extent"),
            run(ExtentKind::Data, SIZE)
        );
    }
}
