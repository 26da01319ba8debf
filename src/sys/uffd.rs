//! userfaultfd: open (with its API handshake) or adopt an fd, probe features, register
//! ranges, and the range ioctls: copy, zeropage, writeprotect, wake, poison, move. Events
//! are read and decoded here; every ioctl result is decoded once, here, into [`UffdError`]
//! (negative results become errors before anything is cast).
//!
//! Why our own layer and not the `userfaultfd` crate: that crate (0.9) lacks
//! UFFDIO_COPY_MODE_WP, WP_ASYNC, MOVE, POISON and PAGEMAP_SCAN, and its -sys crate runs
//! bindgen against the installed (older) UAPI headers, which needs libclang at build time.
//!
//! # Safety of the range ioctls
//! `register`, `copy`, `zeropage`, `writeprotect`, `poison` and `move_pages` change what
//! the pages of a range map, in the mm the uffd belongs to (this process's, or another's).
//! Their callers promise that the range is theirs to change: it lies in a range registered
//! with this uffd, in memory whose contents no Rust reference relies on (udax's regions,
//! whose bytes are only reached through raw pointers and atomics). `wake` and
//! `read_events` cannot change memory and are safe.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use crate::sys::uffd_abi as abi;

pub(crate) use abi::UffdMsg;

/// Errors of userfaultfd operations.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// No way to get a userfaultfd worked.
    #[error(
        "userfaultfd is unavailable (syscall: {syscall}; /dev/userfaultfd: {device}): \
         run as root, or set the sysctl vm.unprivileged_userfaultfd=1, \
         or give this user read-write access to /dev/userfaultfd"
    )]
    Unavailable {
        /// What the userfaultfd(2) syscall said.
        syscall: io::Error,
        /// What opening /dev/userfaultfd said.
        device: io::Error,
    },
    /// Only a user-mode-only userfaultfd could be had (UFFD_USER_MODE_ONLY: the sysctl
    /// vm.unprivileged_userfaultfd is 0 and /dev/userfaultfd is not open to this user).
    /// Such an fd never sees faults taken inside the kernel, so `read(2)` into or
    /// `write(2)` from a page not yet present would fail with EFAULT: refused unless the
    /// caller opted in.
    #[error(
        "only a user-mode-only userfaultfd is available (syscall: {syscall}; \
         /dev/userfaultfd: {device}), with which system calls such as read(2) and write(2) \
         on pages not yet present fail with EFAULT: run as root, or set the sysctl \
         vm.unprivileged_userfaultfd=1, or give this user read-write access to \
         /dev/userfaultfd; or accept it with Options::user_mode_only(true) \
         (Mapping::serves_kernel_access then says false), or choose Resolution::InThread \
         and call Mapping::prefault before handing pages to a system call"
    )]
    UserModeOnly {
        /// What the userfaultfd(2) syscall said without UFFD_USER_MODE_ONLY.
        syscall: io::Error,
        /// What opening /dev/userfaultfd said.
        device: io::Error,
    },
    /// /proc/self/pagemap cannot be opened (udax reads page tables through it).
    #[error("cannot open /proc/self/pagemap ({source}){why}")]
    Pagemap {
        /// The OS error.
        #[source]
        source: io::Error,
        /// Why, and the way out, when known.
        why: &'static str,
    },
    /// The running kernel lacks userfaultfd features udax needs.
    #[error(
        "the kernel lacks userfaultfd features {names} (need Linux 6.6 or later for all of them)"
    )]
    MissingFeatures {
        /// The missing `UFFD_FEATURE_*` bits.
        missing: u64,
        /// Their names.
        names: String,
    },
    /// An fd handed to udax as a userfaultfd is something else.
    #[error("fd {fd} is not a userfaultfd ({what}): pass the fd userfaultfd(2) returned")]
    NotUserfaultfd {
        /// The fd.
        fd: i32,
        /// What it is instead.
        what: String,
    },
    /// EEXIST: the page is already present (someone else resolved the fault).
    #[error("{op}: page already present")]
    Exists {
        /// The ioctl.
        op: &'static str,
    },
    /// EAGAIN: the ioctl stopped early (a present page, or the mm is changing); `done`
    /// bytes were handled.
    #[error("{op}: stopped after {done} bytes, retry")]
    Again {
        /// The ioctl.
        op: &'static str,
        /// Bytes handled before it stopped.
        done: u64,
    },
    /// Any other failure of an ioctl.
    #[error("{op} failed: {source}")]
    Ioctl {
        /// The ioctl.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Userfaultfd features udax can use.
pub(crate) mod features {
    pub(crate) use crate::sys::uffd_abi::{
        UFFD_FEATURE_MOVE as MOVE, UFFD_FEATURE_PAGEFAULT_FLAG_WP as WP,
        UFFD_FEATURE_POISON as POISON, UFFD_FEATURE_SIGBUS as SIGBUS,
        UFFD_FEATURE_WP_ASYNC as WP_ASYNC,
    };
}

const FEATURE_NAMES: [(u64, &str); 6] = [
    (abi::UFFD_FEATURE_PAGEFAULT_FLAG_WP, "PAGEFAULT_FLAG_WP"),
    (abi::UFFD_FEATURE_SIGBUS, "SIGBUS"),
    (abi::UFFD_FEATURE_WP_UNPOPULATED, "WP_UNPOPULATED"),
    (abi::UFFD_FEATURE_POISON, "POISON"),
    (abi::UFFD_FEATURE_WP_ASYNC, "WP_ASYNC"),
    (abi::UFFD_FEATURE_MOVE, "MOVE"),
];

/// Returns `Err(MissingFeatures)` unless every bit of `needed` is in `available`.
fn check_features(available: u64, needed: u64) -> Result<(), UffdError> {
    let missing = needed & !available;
    if missing == 0 {
        return Ok(());
    }
    let names: Vec<String> = FEATURE_NAMES
        .iter()
        .filter(|(bit, _)| missing & bit != 0)
        .map(|(_, name)| (*name).to_string())
        .collect();
    let names = if names.is_empty() {
        format!("{missing:#x}")
    } else {
        names.join(", ")
    };
    Err(UffdError::MissingFeatures { missing, names })
}

/// What a page fault event says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fault {
    /// The faulting address (page-aligned by the kernel unless EXACT_ADDRESS).
    pub(crate) address: usize,
    /// The access was a write.
    pub(crate) write: bool,
    /// The page was present but write-protected (a WP fault).
    pub(crate) write_protect: bool,
}

impl Fault {
    /// Decodes a message; `None` for events other than page faults.
    pub(crate) fn from_msg(msg: &UffdMsg) -> Option<Fault> {
        (msg.event == abi::UFFD_EVENT_PAGEFAULT).then_some(Fault {
            address: msg.address as usize,
            write: msg.flags & abi::UFFD_PAGEFAULT_FLAG_WRITE != 0,
            write_protect: msg.flags & abi::UFFD_PAGEFAULT_FLAG_WP != 0,
        })
    }
}

/// The range a `UFFD_EVENT_REMOVE` message reports (`start..end`, the remover's
/// addresses: `MADV_DONTNEED` and the like dropped those pages); `None` for other messages.
pub(crate) fn removed_range(msg: &UffdMsg) -> Option<(usize, usize)> {
    (msg.event == abi::UFFD_EVENT_REMOVE).then_some((msg.flags as usize, msg.address as usize))
}

/// An open userfaultfd with its API handshake done.
#[derive(Debug)]
pub(crate) struct Uffd {
    fd: OwnedFd,
    /// Opened with UFFD_USER_MODE_ONLY (false for an adopted fd: its creator knows).
    user_mode_only: bool,
    /// The fd blocks (no O_NONBLOCK): [`Uffd::wait_events`] sleeps in read(2), and
    /// [`Uffd::read_events`] asks each read not to wait (RWF_NOWAIT). Otherwise the fd is
    /// non-blocking and waiting is poll(2)'s.
    blocking: bool,
}

/// Turns an ioctl's -1 into the errno, keeping the signed result until checked.
pub(super) fn check(op: &'static str, ret: libc::c_int) -> Result<(), UffdError> {
    if ret >= 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    Err(match err.raw_os_error() {
        Some(libc::EEXIST) => UffdError::Exists { op },
        Some(libc::EAGAIN) => UffdError::Again { op, done: 0 },
        _ => UffdError::Ioctl { op, source: err },
    })
}

/// Decodes the byte count field of COPY/ZEROPAGE/MOVE/POISON after a failed call.
fn partial(err: UffdError, field: i64) -> UffdError {
    match err {
        UffdError::Again { op, .. } if field > 0 => UffdError::Again {
            op,
            done: field as u64,
        },
        other => other,
    }
}

/// Opens a raw userfaultfd: the syscall, then /dev/userfaultfd, then the syscall in
/// user-mode-only mode (where kernel-side accesses to the range get EFAULT), which is
/// taken only when `user_mode_only` allows it and refused with
/// [`UffdError::UserModeOnly`] otherwise. Returns the fd and whether it is user-mode-only.
fn open_raw(user_mode_only: bool, blocking: bool) -> Result<(OwnedFd, bool), UffdError> {
    let flags = libc::O_CLOEXEC | if blocking { 0 } else { libc::O_NONBLOCK };
    let syscall_err = match open_syscall(flags) {
        Ok(fd) => return Ok((fd, false)),
        Err(e) => e,
    };
    let device_err = match open_device(flags) {
        Ok(fd) => return Ok((fd, false)),
        Err(e) => e,
    };
    match open_syscall(flags | abi::UFFD_USER_MODE_ONLY) {
        Ok(fd) if user_mode_only => Ok((fd, true)),
        // Dropped here: it works, but the caller did not accept what it cannot serve.
        Ok(_) => Err(UffdError::UserModeOnly {
            syscall: syscall_err,
            device: device_err,
        }),
        Err(_) => Err(UffdError::Unavailable {
            syscall: syscall_err,
            device: device_err,
        }),
    }
}

/// userfaultfd(2) with `flags`.
fn open_syscall(flags: libc::c_int) -> Result<OwnedFd, io::Error> {
    // SAFETY: userfaultfd(2) takes only an int flags argument and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

fn open_device(flags: libc::c_int) -> Result<OwnedFd, io::Error> {
    let device = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd")?;
    // SAFETY: USERFAULTFD_IOC_NEW takes the new fd's flags as its integer argument.
    let fd = unsafe { libc::ioctl(device.as_raw_fd(), abi::USERFAULTFD_IOC_NEW, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Every feature the running kernel offers (probed once, on a throwaway fd, because a
/// second UFFDIO_API on one fd fails with EINVAL).
pub(crate) fn available_features() -> Result<u64, UffdError> {
    static AVAILABLE: OnceLock<u64> = OnceLock::new();
    if let Some(features) = AVAILABLE.get() {
        return Ok(*features);
    }
    // Features do not depend on the mode: any fd will do for the probe.
    let (fd, _) = open_raw(true, false)?;
    let features = api(&fd, 0)?;
    Ok(*AVAILABLE.get_or_init(|| features))
}

fn api(fd: &OwnedFd, features: u64) -> Result<u64, UffdError> {
    let mut arg = abi::UffdioApi {
        api: abi::UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes a `struct uffdio_api`, which `arg` is.
    check("UFFDIO_API", unsafe {
        libc::ioctl(fd.as_raw_fd(), abi::UFFDIO_API, &mut arg)
    })?;
    Ok(arg.features)
}

impl Uffd {
    /// Opens a userfaultfd with exactly `features` enabled; a user-mode-only one (which
    /// never sees kernel-side faults) only if `user_mode_only` accepts it. A `blocking`
    /// one if the kernel can also read it without waiting (RWF_NOWAIT on a uffd: 6.9 and
    /// later); else, as without `blocking`, a non-blocking one (see [`Uffd::blocks`]).
    pub(crate) fn open(
        features: u64,
        user_mode_only: bool,
        blocking: bool,
    ) -> Result<Uffd, UffdError> {
        check_features(available_features()?, features)?;
        let (fd, user_mode_only) = open_raw(user_mode_only, blocking)?;
        api(&fd, features)?;
        let mut uffd = Uffd {
            fd,
            user_mode_only,
            blocking,
        };
        // Nothing is registered yet, so a read that may not wait finds nothing: EAGAIN.
        // Any other answer (EOPNOTSUPP: a uffd without read_iter) means it cannot be asked.
        if blocking && !matches!(uffd.read_events(&mut [UffdMsg::default()]), Ok(0)) {
            set_nonblocking(uffd.fd.as_raw_fd())?;
            uffd.blocking = false;
        }
        Ok(uffd)
    }

    /// Whether the fd blocks: [`Uffd::wait_events`] may be used to wait for messages.
    pub(crate) fn blocks(&self) -> bool {
        self.blocking
    }

    /// Whether the fd is user-mode-only: faults taken inside the kernel (a system call
    /// reading or writing the range) are not reported, and fail with EFAULT.
    pub(crate) fn is_user_mode_only(&self) -> bool {
        self.user_mode_only
    }

    /// Takes a userfaultfd another process opened (and did the API handshake on), as a
    /// VMM hands one over a Unix socket. Checks that it is one, and makes it non-blocking
    /// (handler threads poll before they read).
    pub(crate) fn adopt(fd: OwnedFd) -> Result<Uffd, UffdError> {
        let raw = fd.as_raw_fd();
        let link = std::fs::read_link(format!("/proc/self/fd/{raw}"));
        let what = link.map_or_else(|e| e.to_string(), |p| p.display().to_string());
        if what != "anon_inode:[userfaultfd]" {
            return Err(UffdError::NotUserfaultfd { fd: raw, what });
        }
        set_nonblocking(raw)?;
        Ok(Uffd {
            fd,
            user_mode_only: false,
            blocking: false,
        })
    }

    fn ioctl<T>(&self, op: &'static str, request: u64, arg: &mut T) -> Result<(), UffdError> {
        // SAFETY: every caller passes the `#[repr(C)]` struct that `request` reads and
        // writes (see uffd_abi.rs); what the ioctl does to memory is the caller's to vouch for.
        check(op, unsafe {
            libc::ioctl(self.fd.as_raw_fd(), request, arg as *mut T)
        })
    }

    /// Registers `start..start+len` for missing faults, and write-protect faults if `wp`.
    ///
    /// # Safety
    /// The caller owns the range (see the module doc): from now on its accesses fault to
    /// this uffd, and someone must serve them.
    pub(crate) unsafe fn register(
        &self,
        start: usize,
        len: usize,
        wp: bool,
    ) -> Result<(), UffdError> {
        let mut mode = abi::UFFDIO_REGISTER_MODE_MISSING;
        if wp {
            mode |= abi::UFFDIO_REGISTER_MODE_WP;
        }
        let mut arg = abi::UffdioRegister {
            range: range(start, len),
            mode,
            ioctls: 0,
        };
        self.ioctl("UFFDIO_REGISTER", abi::UFFDIO_REGISTER, &mut arg)?;
        let needed = (1 << abi::_UFFDIO_COPY) | (1 << abi::_UFFDIO_ZEROPAGE);
        if arg.ioctls & needed != needed {
            return Err(UffdError::Ioctl {
                op: "UFFDIO_REGISTER",
                source: io::Error::other("range does not support UFFDIO_COPY and ZEROPAGE"),
            });
        }
        Ok(())
    }

    /// Installs a copy of `src` at `dst` (missing pages only). With `write_protect` the
    /// pages are installed write-protected atomically (UFFDIO_COPY_MODE_WP); without, they
    /// are writable and dirty.
    ///
    /// # Safety
    /// The caller owns `dst..dst + src.len()` (see the module doc).
    pub(crate) unsafe fn copy(
        &self,
        dst: usize,
        src: &[u8],
        write_protect: bool,
        wake: bool,
    ) -> Result<(), UffdError> {
        let mut mode = 0;
        if write_protect {
            mode |= abi::UFFDIO_COPY_MODE_WP;
        }
        if !wake {
            mode |= abi::UFFDIO_COPY_MODE_DONTWAKE;
        }
        let mut arg = abi::UffdioCopy {
            dst: dst as u64,
            src: src.as_ptr() as u64,
            len: src.len() as u64,
            mode,
            copy: 0,
        };
        self.ioctl("UFFDIO_COPY", abi::UFFDIO_COPY, &mut arg)
            .map_err(|e| partial(e, arg.copy))
    }

    /// Maps the shared zero page over `dst..dst+len` (missing pages only; never writable).
    ///
    /// # Safety
    /// The caller owns the range (see the module doc).
    pub(crate) unsafe fn zeropage(
        &self,
        dst: usize,
        len: usize,
        wake: bool,
    ) -> Result<(), UffdError> {
        let mode = if wake {
            0
        } else {
            abi::UFFDIO_ZEROPAGE_MODE_DONTWAKE
        };
        let mut arg = abi::UffdioZeropage {
            range: range(dst, len),
            mode,
            zeropage: 0,
        };
        self.ioctl("UFFDIO_ZEROPAGE", abi::UFFDIO_ZEROPAGE, &mut arg)
            .map_err(|e| partial(e, arg.zeropage))
    }

    /// Write-protects (`protect`) or unprotects a range. Protecting never wakes (the
    /// kernel rejects DONTWAKE with WP); unprotecting wakes waiters when `wake`.
    ///
    /// # Safety
    /// The caller owns the range (see the module doc): a write to a protected page waits
    /// for the uffd's server.
    pub(crate) unsafe fn writeprotect(
        &self,
        start: usize,
        len: usize,
        protect: bool,
        wake: bool,
    ) -> Result<(), UffdError> {
        let mode = match (protect, wake) {
            (true, _) => abi::UFFDIO_WRITEPROTECT_MODE_WP,
            (false, true) => 0,
            (false, false) => abi::UFFDIO_WRITEPROTECT_MODE_DONTWAKE,
        };
        let mut arg = abi::UffdioWriteprotect {
            range: range(start, len),
            mode,
        };
        self.ioctl("UFFDIO_WRITEPROTECT", abi::UFFDIO_WRITEPROTECT, &mut arg)
    }

    /// Wakes threads waiting on faults in a range (each retries its access, and faults
    /// again if its page is still missing: waking changes no memory).
    pub(crate) fn wake(&self, start: usize, len: usize) -> Result<(), UffdError> {
        let mut arg = range(start, len);
        self.ioctl("UFFDIO_WAKE", abi::UFFDIO_WAKE, &mut arg)
    }

    /// Marks missing pages as poisoned: accesses there get SIGBUS (or EFAULT from the
    /// kernel) until the range is zapped.
    ///
    /// # Safety
    /// The caller owns the range (see the module doc).
    pub(crate) unsafe fn poison(&self, start: usize, len: usize) -> Result<(), UffdError> {
        let mut arg = abi::UffdioPoison {
            range: range(start, len),
            mode: 0,
            updated: 0,
        };
        self.ioctl("UFFDIO_POISON", abi::UFFDIO_POISON, &mut arg)
            .map_err(|e| partial(e, arg.updated))
    }

    /// Moves the pages at `src` to the missing range at `dst`, without copying. A 2 MiB
    /// aligned move of a huge page into a range without a page table maps it as one huge
    /// page. The moved pages are writable. Wakes waiters of the range when `wake`.
    ///
    /// # Safety
    /// The caller owns `dst..dst+len` (see the module doc), and `src..src+len` is
    /// anonymous memory of the same mm that it owns and no longer references: after the
    /// call it is unmapped (reads as missing).
    pub(crate) unsafe fn move_pages(
        &self,
        dst: usize,
        src: usize,
        len: usize,
        wake: bool,
    ) -> Result<(), UffdError> {
        let mut arg = abi::UffdioMove {
            dst: dst as u64,
            src: src as u64,
            len: len as u64,
            mode: if wake {
                0
            } else {
                abi::UFFDIO_MOVE_MODE_DONTWAKE
            },
            moved: 0,
        };
        self.ioctl("UFFDIO_MOVE", abi::UFFDIO_MOVE, &mut arg)
            .map_err(|e| partial(e, arg.moved))
    }

    /// Reads pending event messages without blocking; returns how many were filled.
    pub(crate) fn read_events(&self, out: &mut [UffdMsg]) -> Result<usize, UffdError> {
        self.read_messages(out, false)
    }

    /// Reads event messages, sleeping in read(2) until there is one; returns how many
    /// were filled (0 if a signal interrupted the wait). A non-blocking fd does not wait.
    pub(crate) fn wait_events(&self, out: &mut [UffdMsg]) -> Result<usize, UffdError> {
        self.read_messages(out, true)
    }

    /// One read(2) of messages into `out`, which waits only if `wait` and the fd blocks.
    fn read_messages(&self, out: &mut [UffdMsg], wait: bool) -> Result<usize, UffdError> {
        let iov = libc::iovec {
            iov_base: out.as_mut_ptr().cast(),
            iov_len: size_of_val(out),
        };
        let flags = if self.blocking && !wait {
            libc::RWF_NOWAIT
        } else {
            0
        };
        // SAFETY: `iov` describes `out`, a writable buffer of plain-old-data messages;
        // offset -1 reads at the fd's position, as read(2) does.
        let n = unsafe { libc::preadv2(self.fd.as_raw_fd(), &iov, 1, -1, flags) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => Ok(0),
                _ => Err(UffdError::Ioctl {
                    op: "read(userfaultfd)",
                    source: err,
                }),
            };
        }
        Ok(n as usize / size_of::<UffdMsg>())
    }
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Makes `raw` non-blocking (O_NONBLOCK), keeping its other status flags.
fn set_nonblocking(raw: libc::c_int) -> Result<(), UffdError> {
    // SAFETY: F_GETFL/F_SETFL on an fd we own change only its status flags.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        let source = io::Error::last_os_error();
        return Err(UffdError::Ioctl {
            op: "fcntl(O_NONBLOCK)",
            source,
        });
    }
    Ok(())
}

fn range(start: usize, len: usize) -> abi::UffdioRange {
    abi::UffdioRange {
        start: start as u64,
        len: len as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_features_are_named() {
        let err = check_features(features::WP, features::WP | features::POISON).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("POISON"), "{text}");
        assert!(!text.contains("PAGEFAULT_FLAG_WP"), "{text}");
        assert!(check_features(features::WP | features::POISON, features::WP).is_ok());
    }

    #[test]
    fn unavailable_names_the_fixes() {
        let err = UffdError::Unavailable {
            syscall: io::Error::from_raw_os_error(libc::EPERM),
            device: io::Error::from_raw_os_error(libc::EACCES),
        };
        let text = err.to_string();
        assert!(text.contains("vm.unprivileged_userfaultfd"), "{text}");
        assert!(text.contains("/dev/userfaultfd"), "{text}");
    }

    #[test]
    fn adopting_something_else_is_refused() {
        let file = std::fs::File::open("/proc/self/status").expect("open a plain file");
        match Uffd::adopt(OwnedFd::from(file)) {
            Err(UffdError::NotUserfaultfd { what, .. }) => {
                assert!(what.contains("/proc/"), "{what}")
            }
            other => panic!("expected NotUserfaultfd, got {other:?}"),
        }
    }
}
