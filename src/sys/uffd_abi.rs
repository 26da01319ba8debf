//! The userfaultfd and PAGEMAP_SCAN UAPI: ioctl numbers, flags and `#[repr(C)]` structs.
//!
//! Defined here from the kernel's include/uapi/linux/userfaultfd.h and fs.h (6.18) because
//! the installed headers (6.1) and the `libc` crate lack WP_ASYNC, MOVE, POISON and
//! PAGEMAP_SCAN. Only what udax uses is here; nothing outside `sys` sees a raw number.

#![allow(missing_docs)]

const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
const fn iowr(ty: u64, nr: u64, size: usize) -> u64 {
    ioc(IOC_READ | IOC_WRITE, ty, nr, size)
}
const fn ior(ty: u64, nr: u64, size: usize) -> u64 {
    ioc(IOC_READ, ty, nr, size)
}

pub const UFFD_API: u64 = 0xAA;
const UFFDIO: u64 = 0xAA;

/// `userfaultfd(2)` flag: handle only faults raised by user-mode accesses.
pub const UFFD_USER_MODE_ONLY: libc::c_int = 1;
/// `/dev/userfaultfd` ioctl returning a new userfaultfd: `_IO(0xAA, 0x00)`.
pub const USERFAULTFD_IOC_NEW: u64 = ioc(0, UFFDIO, 0x00, 0);

pub const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
pub const UFFD_FEATURE_SIGBUS: u64 = 1 << 7;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_POISON: u64 = 1 << 14;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
pub const UFFD_FEATURE_MOVE: u64 = 1 << 16;

pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;

pub const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1 << 0;
pub const UFFDIO_COPY_MODE_WP: u64 = 1 << 1;
pub const UFFDIO_ZEROPAGE_MODE_DONTWAKE: u64 = 1 << 0;
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
pub const UFFDIO_WRITEPROTECT_MODE_DONTWAKE: u64 = 1 << 1;
pub const UFFDIO_MOVE_MODE_DONTWAKE: u64 = 1 << 0;

pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// `arg.remove.start` and `.end` are the `flags` and `address` fields of [`UffdMsg`].
pub const UFFD_EVENT_REMOVE: u8 = 0x15;
pub const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
pub const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;

/// Bits of `uffdio_register.ioctls`: which range ioctls the registered range supports.
pub const _UFFDIO_COPY: u64 = 0x03;
pub const _UFFDIO_ZEROPAGE: u64 = 0x04;

#[repr(C)]
#[derive(Default)]
pub struct UffdioApi {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

#[repr(C)]
#[derive(Default)]
pub struct UffdioRegister {
    pub range: UffdioRange,
    pub mode: u64,
    pub ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
pub struct UffdioCopy {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub mode: u64,
    /// Bytes copied, or a negated errno.
    pub copy: i64,
}

#[repr(C)]
#[derive(Default)]
pub struct UffdioZeropage {
    pub range: UffdioRange,
    pub mode: u64,
    /// Bytes zeroed, or a negated errno.
    pub zeropage: i64,
}

#[repr(C)]
#[derive(Default)]
pub struct UffdioWriteprotect {
    pub range: UffdioRange,
    pub mode: u64,
}

#[repr(C)]
#[derive(Default)]
pub struct UffdioMove {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub mode: u64,
    /// Bytes moved, or a negated errno.
    pub moved: i64,
}

#[repr(C)]
#[derive(Default)]
pub struct UffdioPoison {
    pub range: UffdioRange,
    pub mode: u64,
    /// Bytes poisoned, or a negated errno.
    pub updated: i64,
}

/// `struct uffd_msg` specialised to the page-fault event (the only one we enable).
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct UffdMsg {
    pub event: u8,
    pub reserved1: u8,
    pub reserved2: u16,
    pub reserved3: u32,
    /// `arg.pagefault.flags`
    pub flags: u64,
    /// `arg.pagefault.address`
    pub address: u64,
    /// `arg.pagefault.feat.ptid` and padding of the union.
    pub ptid: u64,
}

pub const UFFDIO_API: u64 = iowr(UFFDIO, 0x3F, size_of::<UffdioApi>());
pub const UFFDIO_REGISTER: u64 = iowr(UFFDIO, 0x00, size_of::<UffdioRegister>());
pub const UFFDIO_WAKE: u64 = ior(UFFDIO, 0x02, size_of::<UffdioRange>());
pub const UFFDIO_COPY: u64 = iowr(UFFDIO, 0x03, size_of::<UffdioCopy>());
pub const UFFDIO_ZEROPAGE: u64 = iowr(UFFDIO, 0x04, size_of::<UffdioZeropage>());
pub const UFFDIO_MOVE: u64 = iowr(UFFDIO, 0x05, size_of::<UffdioMove>());
pub const UFFDIO_WRITEPROTECT: u64 = iowr(UFFDIO, 0x06, size_of::<UffdioWriteprotect>());
pub const UFFDIO_POISON: u64 = iowr(UFFDIO, 0x08, size_of::<UffdioPoison>());

// PAGEMAP_SCAN (fs.h), an ioctl on /proc/self/pagemap.
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
pub const PAGE_IS_HUGE: u64 = 1 << 6;
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

#[repr(C)]
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

#[repr(C)]
#[derive(Default)]
pub struct PmScanArg {
    pub size: u64,
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    pub walk_end: u64,
    pub vec: u64,
    pub vec_len: u64,
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

pub const PAGEMAP_SCAN: u64 = iowr(b'f' as u64, 16, size_of::<PmScanArg>());

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers the kernel headers give (checked against a 6.18 build of userfaultfd.h).
    #[test]
    fn ioctl_numbers_match_the_uapi() {
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_WAKE, 0x8010_aa02);
        assert_eq!(UFFDIO_COPY, 0xc028_aa03);
        assert_eq!(UFFDIO_ZEROPAGE, 0xc020_aa04);
        assert_eq!(UFFDIO_MOVE, 0xc028_aa05);
        assert_eq!(UFFDIO_WRITEPROTECT, 0xc018_aa06);
        assert_eq!(UFFDIO_POISON, 0xc020_aa08);
        assert_eq!(USERFAULTFD_IOC_NEW, 0xaa00);
        assert_eq!(PAGEMAP_SCAN, 0xc060_6610);
        assert_eq!(size_of::<UffdMsg>(), 32);
    }
}
