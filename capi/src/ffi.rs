//! The FFI boundary: errors as errno values, the calling thread's last error message,
//! and the guard that keeps panics from unwinding into C.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};

use udax_core::{Error, StoreError, UffdError};

/// A failure on its way to C: an errno value and a message for `udax_strerror`.
#[derive(Debug)]
pub struct Failure {
    /// The (positive) errno value.
    pub errno: c_int,
    /// What went wrong and how to fix it, one line.
    pub message: String,
}

impl Failure {
    /// A failure with an errno and a message of its own.
    pub fn new(errno: c_int, message: impl Into<String>) -> Failure {
        Failure {
            errno,
            message: message.into(),
        }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure::new(errno_of(&error), error.to_string())
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        Failure::new(store_errno(&error), error.to_string())
    }
}

/// The errno value that says what `error` says.
pub fn errno_of(error: &Error) -> c_int {
    match error {
        Error::Store(e) => store_errno(e),
        Error::Uffd(e) => uffd_errno(e),
        Error::FaultFailed { .. } => libc::EIO,
        Error::Os { source, .. } | Error::ResourceLimit { source, .. } => io_errno(source),
        Error::ReadOnly => libc::EACCES,
        Error::Truncated { .. } => libc::ENXIO,
        Error::WritebackLost { source, .. } | Error::HandlerFailed { source } => io_errno(source),
        Error::ForeignProcess { .. } => libc::EPERM,
        _ => libc::EINVAL,
    }
}

/// The errno value of a store error.
fn store_errno(error: &StoreError) -> c_int {
    match error {
        StoreError::NotFound { .. } => libc::ENOENT,
        StoreError::NoSpace { .. } => libc::ENOSPC,
        StoreError::OutOfRange { .. } => libc::EINVAL,
        StoreError::BeyondEnd { .. } => libc::ENXIO,
        StoreError::Connect { .. } => libc::ECONNREFUSED,
        StoreError::ReadOnly { .. } => libc::EROFS,
        StoreError::NotWritable { source, .. }
        | StoreError::Open { source, .. }
        | StoreError::Io { source, .. } => io_errno(source),
    }
}

/// The errno value of a userfaultfd error.
fn uffd_errno(error: &UffdError) -> c_int {
    match error {
        UffdError::Unavailable { syscall, .. } | UffdError::UserModeOnly { syscall, .. } => {
            syscall.raw_os_error().unwrap_or(libc::ENOSYS)
        }
        UffdError::MissingFeatures { .. } => libc::ENOTSUP,
        UffdError::Exists { .. } => libc::EEXIST,
        UffdError::Again { .. } => libc::EAGAIN,
        UffdError::Ioctl { source, .. } => io_errno(source),
        _ => libc::EINVAL,
    }
}

/// The errno of an I/O error: its own, or one that says what its kind says (udax makes
/// a few errors of its own, such as "not a regular file", InvalidInput: EINVAL).
pub fn io_errno(error: &std::io::Error) -> c_int {
    use std::io::ErrorKind;
    error.raw_os_error().unwrap_or(match error.kind() {
        ErrorKind::InvalidInput => libc::EINVAL,
        ErrorKind::NotFound => libc::ENOENT,
        ErrorKind::PermissionDenied => libc::EACCES,
        _ => libc::EIO,
    })
}

thread_local! {
    /// The last failure on this thread: its errno and message, for `udax_strerror`.
    static LAST: RefCell<Option<(c_int, CString)>> = const { RefCell::new(None) };
}

/// Records `failure` as this thread's last and sets errno.
fn record(failure: Failure) -> c_int {
    let message = CString::new(failure.message.replace('\0', " ")).unwrap_or_default();
    LAST.with(|last| *last.borrow_mut() = Some((failure.errno, message)));
    set_errno(failure.errno);
    failure.errno
}

/// Sets the calling thread's errno.
pub fn set_errno(value: c_int) {
    // SAFETY: __errno_location returns the calling thread's errno, always valid.
    unsafe { *libc::__errno_location() = value };
}

/// Runs `body` for C: its value, or `failed` with errno set and the message recorded if
/// it fails or panics (a panic must not unwind into C).
pub fn guard<T>(failed: T, body: impl FnOnce() -> Result<T, Failure>) -> T {
    run(body).unwrap_or(failed)
}

/// [`guard`] for the functions of `udax.h`: 0, or the negative errno of the failure.
pub fn guard_status(body: impl FnOnce() -> Result<(), Failure>) -> c_int {
    match run(body) {
        Ok(()) => 0,
        Err(errno) => -errno,
    }
}

/// Runs `body`, catching a panic; a failure is recorded and its errno returned.
fn run<T>(body: impl FnOnce() -> Result<T, Failure>) -> Result<T, c_int> {
    let failure = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => return Ok(value),
        Ok(Err(failure)) => failure,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Failure::new(
                libc::EIO,
                format!("udax internal error (please report it): {what}"),
            )
        }
    };
    Err(record(failure))
}

/// The message for `err` (a negative or positive errno): this thread's last failure if
/// it had that errno, else the system's text for it. Valid until this thread's next call.
pub fn message_for(err: c_int) -> *const c_char {
    let errno = err.checked_abs().unwrap_or(libc::EINVAL);
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        let fresh = !matches!(&*last, Some((e, _)) if *e == errno);
        if fresh {
            // SAFETY: strerror returns a valid C string, copied at once.
            let text = unsafe { CStr::from_ptr(libc::strerror(errno)) }.to_owned();
            *last = Some((errno, text));
        }
        last.as_ref().map_or(std::ptr::null(), |(_, m)| m.as_ptr())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_errno_they_mean() {
        let dir = std::env::temp_dir();
        let fd = std::os::fd::OwnedFd::from(std::fs::File::open(&dir).expect("open dir"));
        let not_regular = udax_core::FileStore::from_fd(fd).expect_err("a directory");
        assert_eq!(Failure::from(not_regular).errno, libc::EINVAL);
        let missing = udax_core::FileStore::open(dir.join("udax-no-such-file"));
        assert_eq!(
            Failure::from(missing.expect_err("missing")).errno,
            libc::ENOENT
        );
        assert_eq!(Failure::from(Error::ReadOnly).errno, libc::EACCES);
    }
}
