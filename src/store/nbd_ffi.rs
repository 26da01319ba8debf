//! The part of libnbd (the NBD project's reference client, `-lnbd`, Debian's `libnbd-dev`)
//! that [`NbdStore`](crate::store::nbd::NbdStore) calls: declarations only, written from
//! `libnbd.h` of libnbd 1.14 (every function here exists since 1.0), and one owning handle
//! type. Nothing above this file sees a raw pointer.
//!
//! Only the asynchronous calls issue commands (`nbd_aio_*`), so that the caller drives the
//! connection with `nbd_poll` and a timeout of its own: libnbd's synchronous calls wait
//! forever for a server that stopped answering.

use std::ffi::{CStr, CString, c_char, c_int, c_void};

/// libnbd's opaque connection handle.
#[repr(C)]
pub(crate) struct RawHandle {
    _private: [u8; 0],
}

/// `nbd_completion_callback`: all fields null means "no callback" (`NBD_NULL_COMPLETION`).
#[repr(C)]
pub(crate) struct CompletionCallback {
    callback: Option<unsafe extern "C" fn(*mut c_void, *mut c_int) -> c_int>,
    user_data: *mut c_void,
    free: Option<unsafe extern "C" fn(*mut c_void)>,
}

impl CompletionCallback {
    /// No completion callback: the command is retired by `nbd_aio_command_completed`.
    pub(crate) const NONE: CompletionCallback = CompletionCallback {
        callback: None,
        user_data: std::ptr::null_mut(),
        free: None,
    };
}

/// The extent callback's function: (user data, context name, offset, entries as pairs of
/// (length, flags), number of u32 entries, error in/out) -> 0 to go on.
pub(crate) type ExtentFn =
    unsafe extern "C" fn(*mut c_void, *const c_char, u64, *mut u32, usize, *mut c_int) -> c_int;

/// `nbd_extent_callback`.
#[repr(C)]
pub(crate) struct ExtentCallback {
    /// Called once per block-status reply chunk.
    pub(crate) callback: Option<ExtentFn>,
    /// Passed to `callback`.
    pub(crate) user_data: *mut c_void,
    /// Never set: the user data is owned by the caller and outlives the command.
    pub(crate) free: Option<unsafe extern "C" fn(*mut c_void)>,
}

/// `LIBNBD_CMD_FLAG_NO_HOLE`: WRITE_ZEROES must allocate.
pub(crate) const CMD_FLAG_NO_HOLE: u32 = 0x02;
/// `LIBNBD_STATE_ZERO`: the `base:allocation` flag "reads as zeros".
pub(crate) const STATE_ZERO: u32 = 2;
/// `LIBNBD_SIZE_MAXIMUM` for `nbd_get_block_size`.
pub(crate) const SIZE_MAXIMUM: c_int = 2;
/// The metadata context of holes and zeros.
pub(crate) const BASE_ALLOCATION: &CStr = c"base:allocation";

#[link(name = "nbd")]
unsafe extern "C" {
    fn nbd_create() -> *mut RawHandle;
    fn nbd_close(h: *mut RawHandle);
    fn nbd_get_error() -> *const c_char;
    fn nbd_get_errno() -> c_int;
    fn nbd_add_meta_context(h: *mut RawHandle, name: *const c_char) -> c_int;
    fn nbd_aio_connect_uri(h: *mut RawHandle, uri: *const c_char) -> c_int;
    fn nbd_aio_is_connecting(h: *mut RawHandle) -> c_int;
    fn nbd_aio_is_ready(h: *mut RawHandle) -> c_int;
    fn nbd_poll(h: *mut RawHandle, timeout: c_int) -> c_int;
    fn nbd_get_size(h: *mut RawHandle) -> i64;
    fn nbd_get_block_size(h: *mut RawHandle, size_type: c_int) -> i64;
    fn nbd_is_read_only(h: *mut RawHandle) -> c_int;
    fn nbd_can_zero(h: *mut RawHandle) -> c_int;
    fn nbd_can_flush(h: *mut RawHandle) -> c_int;
    fn nbd_can_multi_conn(h: *mut RawHandle) -> c_int;
    fn nbd_can_meta_context(h: *mut RawHandle, name: *const c_char) -> c_int;
    fn nbd_aio_pread(
        h: *mut RawHandle,
        buf: *mut c_void,
        count: usize,
        offset: u64,
        completion: CompletionCallback,
        flags: u32,
    ) -> i64;
    fn nbd_aio_pwrite(
        h: *mut RawHandle,
        buf: *const c_void,
        count: usize,
        offset: u64,
        completion: CompletionCallback,
        flags: u32,
    ) -> i64;
    fn nbd_aio_zero(
        h: *mut RawHandle,
        count: u64,
        offset: u64,
        completion: CompletionCallback,
        flags: u32,
    ) -> i64;
    fn nbd_aio_flush(h: *mut RawHandle, completion: CompletionCallback, flags: u32) -> i64;
    fn nbd_aio_block_status(
        h: *mut RawHandle,
        count: u64,
        offset: u64,
        extent: ExtentCallback,
        completion: CompletionCallback,
        flags: u32,
    ) -> i64;
    fn nbd_aio_command_completed(h: *mut RawHandle, cookie: u64) -> c_int;
}

/// The last libnbd error of this thread: its errno (EIO when libnbd gives none) and text.
pub(crate) fn last_error() -> (i32, String) {
    // SAFETY: both calls read thread-local state and may be called at any time; the string
    // is valid until the next libnbd call on this thread, and is copied out at once.
    let (errno, text) = unsafe { (nbd_get_errno(), nbd_get_error()) };
    let text = if text.is_null() {
        String::from("unknown libnbd error")
    } else {
        // SAFETY: non-null: a NUL-terminated string owned by libnbd (see above).
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    };
    (if errno > 0 { errno } else { libc::EIO }, text)
}

/// One libnbd handle, closed on drop. Not shared between threads at once (libnbd handles
/// are thread-safe, but a connection serves one caller at a time by the pool's design).
#[derive(Debug)]
pub(crate) struct Handle(*mut RawHandle);

// SAFETY: a libnbd handle may be used from any thread (libnbd locks each handle); ours is
// only ever used by the one thread that holds it.
unsafe impl Send for Handle {}

/// What a handle call reports: Ok, or libnbd's error of this thread.
pub(crate) type NbdResult<T> = Result<T, (i32, String)>;

/// libnbd's `int` result: `-1` is an error, anything else the value.
fn check(rc: c_int) -> NbdResult<c_int> {
    if rc < 0 { Err(last_error()) } else { Ok(rc) }
}

/// libnbd's cookie result: a command id, or `-1` for a command that was not issued.
fn cookie(rc: i64) -> NbdResult<u64> {
    if rc < 0 {
        Err(last_error())
    } else {
        Ok(rc as u64)
    }
}

impl Handle {
    /// A new handle that will ask for the `base:allocation` context.
    pub(crate) fn new() -> NbdResult<Handle> {
        // SAFETY: nbd_create has no preconditions; null is its error.
        let raw = unsafe { nbd_create() };
        if raw.is_null() {
            return Err(last_error());
        }
        let handle = Handle(raw);
        // SAFETY: a live handle and a NUL-terminated name.
        check(unsafe { nbd_add_meta_context(handle.0, BASE_ALLOCATION.as_ptr()) })?;
        Ok(handle)
    }

    /// Starts connecting to `uri` (the NBD URI format); [`Handle::is_connecting`] then
    /// tells when the handshake ends.
    pub(crate) fn start_connect(&self, uri: &CString) -> NbdResult<()> {
        // SAFETY: a live handle and a NUL-terminated URI (copied by libnbd).
        check(unsafe { nbd_aio_connect_uri(self.0, uri.as_ptr()) }).map(drop)
    }

    /// Whether the connection is still between connect and ready.
    pub(crate) fn is_connecting(&self) -> bool {
        // SAFETY: a live handle.
        unsafe { nbd_aio_is_connecting(self.0) == 1 }
    }

    /// Whether the handshake is done and commands may be issued.
    pub(crate) fn is_ready(&self) -> bool {
        // SAFETY: a live handle.
        unsafe { nbd_aio_is_ready(self.0) == 1 }
    }

    /// Waits up to `timeout_ms` for the socket and runs libnbd's state machine once:
    /// true if it moved, false on timeout.
    pub(crate) fn poll(&self, timeout_ms: c_int) -> NbdResult<bool> {
        // SAFETY: a live handle.
        check(unsafe { nbd_poll(self.0, timeout_ms) }).map(|n| n == 1)
    }

    /// The export's size in bytes.
    pub(crate) fn size(&self) -> NbdResult<u64> {
        // SAFETY: a live, connected handle.
        let size = unsafe { nbd_get_size(self.0) };
        if size < 0 {
            Err(last_error())
        } else {
            Ok(size as u64)
        }
    }

    /// The largest request the server takes, if it says (0 when it does not).
    pub(crate) fn max_request(&self) -> u64 {
        // SAFETY: a live, connected handle.
        let max = unsafe { nbd_get_block_size(self.0, SIZE_MAXIMUM) };
        max.max(0) as u64
    }

    /// What the server offers: (read-only, WRITE_ZEROES, FLUSH, multi-conn,
    /// `base:allocation`). A flag the server does not answer counts as not offered.
    pub(crate) fn features(&self) -> Features {
        let yes = |rc: c_int| rc == 1;
        // SAFETY: a live, connected handle; the context name is NUL-terminated.
        unsafe {
            Features {
                read_only: yes(nbd_is_read_only(self.0)),
                zero: yes(nbd_can_zero(self.0)),
                flush: yes(nbd_can_flush(self.0)),
                multi_conn: yes(nbd_can_multi_conn(self.0)),
                block_status: yes(nbd_can_meta_context(self.0, BASE_ALLOCATION.as_ptr())),
            }
        }
    }

    /// Issues READ of `len` bytes at `offset` into `buf`.
    ///
    /// # Safety
    /// `buf..buf+len` must stay valid for writes until the command completes or the handle
    /// is dropped, whichever comes first.
    pub(crate) unsafe fn issue_read(
        &self,
        buf: *mut u8,
        len: usize,
        offset: u64,
    ) -> NbdResult<u64> {
        // SAFETY: a live handle; the caller keeps the buffer valid (see above).
        cookie(unsafe {
            nbd_aio_pread(self.0, buf.cast(), len, offset, CompletionCallback::NONE, 0)
        })
    }

    /// Issues WRITE of `len` bytes from `buf` at `offset`.
    ///
    /// # Safety
    /// `buf..buf+len` must stay valid for reads until the command completes or the handle
    /// is dropped.
    pub(crate) unsafe fn issue_write(
        &self,
        buf: *const u8,
        len: usize,
        offset: u64,
    ) -> NbdResult<u64> {
        // SAFETY: a live handle; the caller keeps the buffer valid (see above).
        cookie(unsafe {
            nbd_aio_pwrite(self.0, buf.cast(), len, offset, CompletionCallback::NONE, 0)
        })
    }

    /// Issues WRITE_ZEROES over `len` bytes at `offset`, with `flags` (NO_HOLE or 0).
    pub(crate) fn issue_zero(&self, len: u64, offset: u64, flags: u32) -> NbdResult<u64> {
        // SAFETY: a live handle; no buffer.
        cookie(unsafe { nbd_aio_zero(self.0, len, offset, CompletionCallback::NONE, flags) })
    }

    /// Issues FLUSH.
    pub(crate) fn issue_flush(&self) -> NbdResult<u64> {
        // SAFETY: a live handle; no buffer.
        cookie(unsafe { nbd_aio_flush(self.0, CompletionCallback::NONE, 0) })
    }

    /// Issues BLOCK_STATUS over `len` bytes at `offset`; `callback` is called with
    /// `user_data` for each reply chunk.
    ///
    /// # Safety
    /// `user_data` must be what `callback` expects and stay valid until the command
    /// completes or the handle is dropped.
    pub(crate) unsafe fn issue_block_status(
        &self,
        len: u64,
        offset: u64,
        callback: ExtentFn,
        user_data: *mut c_void,
    ) -> NbdResult<u64> {
        let extent = ExtentCallback {
            callback: Some(callback),
            user_data,
            free: None,
        };
        // SAFETY: a live handle; the caller keeps user_data valid (see above).
        cookie(unsafe {
            nbd_aio_block_status(self.0, len, offset, extent, CompletionCallback::NONE, 0)
        })
    }

    /// Whether command `cookie` is done (Ok(true), retired), still in flight (Ok(false)),
    /// or failed (Err, retired).
    pub(crate) fn is_completed(&self, cookie: u64) -> NbdResult<bool> {
        // SAFETY: a live handle; an unknown cookie is an error, not undefined behaviour.
        check(unsafe { nbd_aio_command_completed(self.0, cookie) }).map(|n| n == 1)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle is live and used by nobody else (we own it); after this no
        // command of it touches any buffer again, which the issue_* contracts rely on.
        unsafe { nbd_close(self.0) };
    }
}

/// What a server offers on a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Features {
    /// The export refuses writes.
    pub(crate) read_only: bool,
    /// WRITE_ZEROES.
    pub(crate) zero: bool,
    /// FLUSH.
    pub(crate) flush: bool,
    /// A FLUSH on one connection covers writes completed on every connection.
    pub(crate) multi_conn: bool,
    /// BLOCK_STATUS with `base:allocation`.
    pub(crate) block_status: bool,
}
