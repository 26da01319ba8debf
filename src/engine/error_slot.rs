//! The first fault-time error since the last flush, kept lock-free so that a fault served
//! in a signal handler can record it; the next flush returns it.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Error;
use crate::store::StoreError;
use crate::sys::uffd::UffdError;

/// The first fault-time error since the last flush, kept without locks or allocation so
/// that a fault served inside a signal handler can record it.
///
/// Holds the error's kind, operation and errno packed in one word, its offset in a
/// second and the store's new size (for a store that shrank) in a third; `take` rebuilds
/// an [`Error`] from them. Recording keeps the first error: later
/// ones until the next `take` are counted (sigbus_delivered) but not kept.
pub(crate) struct ErrorSlot {
    /// 0: empty. Else bit 63 set, kind in bits 40..48, op in 32..40, errno in 0..32.
    word: AtomicU64,
    offset: AtomicU64,
    /// The store's size, for [`Kind::BeyondEnd`] and [`Kind::Truncated`].
    size: AtomicU64,
}

const PRESENT: u64 = 1 << 63;

/// Operation names an error may carry (store ops and ioctls). Unknown ones map to "other".
const OPS: [&str; 18] = [
    "other",
    "read",
    "write",
    "allocate",
    "punch hole",
    "sync",
    "extent query",
    "UFFDIO_COPY",
    "UFFDIO_ZEROPAGE",
    "UFFDIO_WRITEPROTECT",
    "UFFDIO_WAKE",
    "UFFDIO_POISON",
    "UFFDIO_MOVE",
    "PAGEMAP_SCAN",
    "read(userfaultfd)",
    "madvise",
    "pagemap",
    "fstat",
];

#[derive(Clone, Copy)]
#[repr(u8)]
enum Kind {
    StoreIo = 1,
    NoSpace = 2,
    OutOfRange = 3,
    UffdIoctl = 4,
    UffdExists = 5,
    UffdAgain = 6,
    Other = 7,
    BeyondEnd = 8,
    Truncated = 9,
}

fn op_index(op: &str) -> u64 {
    OPS.iter().position(|&known| known == op).unwrap_or(0) as u64
}

/// The store size an error names (a store that shrank), else 0.
fn size_of(error: &Error) -> u64 {
    match error {
        Error::Truncated { size, .. }
        | Error::Store(StoreError::BeyondEnd { size, .. })
        | Error::FaultFailed {
            source: StoreError::BeyondEnd { size, .. },
            ..
        } => *size,
        _ => 0,
    }
}

fn errno_of(error: &std::io::Error) -> u64 {
    error.raw_os_error().unwrap_or(libc::EIO) as u32 as u64
}

impl ErrorSlot {
    pub(crate) fn new() -> ErrorSlot {
        ErrorSlot {
            word: AtomicU64::new(0),
            offset: AtomicU64::new(0),
            size: AtomicU64::new(0),
        }
    }

    /// Keeps `error` (about the page at `offset`) unless an earlier one is waiting.
    pub(crate) fn record(&self, offset: u64, error: &Error) {
        let (kind, op, errno) = match error {
            Error::Store(store) | Error::FaultFailed { source: store, .. } => match store {
                StoreError::Io { op, source, .. } => {
                    (Kind::StoreIo, op_index(op), errno_of(source))
                }
                StoreError::NoSpace { .. } => (Kind::NoSpace, 0, libc::ENOSPC as u64),
                StoreError::BeyondEnd { .. } => (Kind::BeyondEnd, 0, 0),
                _ => (Kind::OutOfRange, 0, 0),
            },
            Error::Uffd(UffdError::Ioctl { op, source }) => {
                (Kind::UffdIoctl, op_index(op), errno_of(source))
            }
            Error::Uffd(UffdError::Exists { op }) => (Kind::UffdExists, op_index(op), 0),
            Error::Uffd(UffdError::Again { op, .. }) => (Kind::UffdAgain, op_index(op), 0),
            Error::Truncated { pages, .. } => (Kind::Truncated, 0, (*pages).min(u32::MAX.into())),
            _ => (Kind::Other, 0, 0),
        };
        let word = PRESENT | (kind as u64) << 40 | op << 32 | errno;
        // The offset is written first; a racing `take` that sees the word may read an
        // older offset only if two records race, and then either is a true failure.
        if self.word.load(Ordering::Acquire) == 0 {
            self.offset.store(offset, Ordering::Release);
            self.size.store(size_of(error), Ordering::Release);
            let _ = self
                .word
                .compare_exchange(0, word, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Takes the waiting error, if any.
    pub(crate) fn take(&self) -> Option<Error> {
        let word = self.word.swap(0, Ordering::AcqRel);
        if word & PRESENT == 0 {
            return None;
        }
        let offset = self.offset.load(Ordering::Acquire);
        let size = self.size.load(Ordering::Acquire);
        let op = OPS[((word >> 32) & 0xff) as usize % OPS.len()];
        let errno = (word & 0xffff_ffff) as i32;
        let io = || std::io::Error::from_raw_os_error(errno);
        let store = |source| Error::FaultFailed { offset, source };
        Some(match (word >> 40) & 0xff {
            1 => store(StoreError::Io {
                op,
                offset,
                source: io(),
            }),
            2 => store(StoreError::NoSpace { offset }),
            3 => store(StoreError::OutOfRange {
                offset,
                len: crate::PAGE_SIZE as u64,
                store_len: 0,
            }),
            4 => Error::Uffd(UffdError::Ioctl { op, source: io() }),
            5 => Error::Uffd(UffdError::Exists { op }),
            6 => Error::Uffd(UffdError::Again { op, done: 0 }),
            8 => store(StoreError::BeyondEnd { offset, size }),
            9 => Error::Truncated {
                size,
                pages: u64::from(errno as u32),
            },
            _ => Error::Os {
                op: "fault",
                source: std::io::Error::from_raw_os_error(libc::EIO),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_error_and_rebuilds_it() {
        let slot = ErrorSlot::new();
        assert!(slot.take().is_none());
        let first = Error::Store(StoreError::Io {
            op: "read",
            offset: 8192,
            source: std::io::Error::from_raw_os_error(libc::EIO),
        });
        slot.record(8192, &first);
        slot.record(4096, &Error::Store(StoreError::NoSpace { offset: 4096 }));
        match slot.take() {
            Some(Error::FaultFailed {
                offset: 8192,
                source:
                    StoreError::Io {
                        op: "read", source, ..
                    },
            }) => assert_eq!(source.raw_os_error(), Some(libc::EIO)),
            other => panic!("unexpected {other:?}"),
        }
        assert!(slot.take().is_none());
        slot.record(4096, &Error::Store(StoreError::NoSpace { offset: 4096 }));
        assert!(matches!(
            slot.take(),
            Some(Error::FaultFailed {
                offset: 4096,
                source: StoreError::NoSpace { .. }
            })
        ));
    }
}
