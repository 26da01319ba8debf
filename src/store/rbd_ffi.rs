//! The part of librados and librbd (Ceph's client libraries, `-lrados -lrbd`, Debian's
//! `librbd-dev`) that [`RbdStore`](crate::store::rbd::RbdStore) calls: declarations only,
//! written from `rados/librados.h` and `rbd/librbd.h` of Ceph 16 (every function here
//! exists since Ceph 14), and one owning image type. Nothing above this file sees a raw
//! pointer.
//!
//! I/O goes through `rbd_aio_*` with a completion callback, so that the caller waits with a
//! deadline of its own ([`Op::wait`]): librbd's synchronous calls wait as long as the
//! cluster does. An operation whose deadline passed is abandoned, not cancelled (librbd
//! cannot cancel): its buffer belongs to the operation, not the caller, and is freed by
//! whichever of the waiter and the completion lets go of it last, so a late completion
//! never writes into memory the caller reuses.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// librados' cluster handle (`rados_t`).
type Cluster = *mut c_void;
/// librados' I/O context of one pool (`rados_ioctx_t`).
type IoCtx = *mut c_void;
/// librbd's open image (`rbd_image_t`).
type RawImage = *mut c_void;
/// librbd's completion (`rbd_completion_t`).
type Completion = *mut c_void;
/// `rbd_callback_t`.
type CompletionFn = unsafe extern "C" fn(Completion, *mut c_void);
/// The `rbd_diff_iterate2` callback: (offset, length, exists, user data) -> 0 to go on.
type DiffFn = unsafe extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int;

/// `RBD_WRITE_ZEROES_FLAG_THICK_PROVISION`: the zeroed range is allocated.
pub(crate) const THICK_PROVISION: c_int = 1;

#[link(name = "rados")]
unsafe extern "C" {
    fn rados_create(cluster: *mut Cluster, id: *const c_char) -> c_int;
    fn rados_conf_read_file(cluster: Cluster, path: *const c_char) -> c_int;
    fn rados_conf_set(cluster: Cluster, option: *const c_char, value: *const c_char) -> c_int;
    fn rados_connect(cluster: Cluster) -> c_int;
    fn rados_shutdown(cluster: Cluster);
    fn rados_ioctx_create(cluster: Cluster, pool: *const c_char, ioctx: *mut IoCtx) -> c_int;
    fn rados_ioctx_destroy(ioctx: IoCtx);
}

#[link(name = "rbd")]
unsafe extern "C" {
    fn rbd_open(io: IoCtx, name: *const c_char, image: *mut RawImage, snap: *const c_char)
    -> c_int;
    fn rbd_open_read_only(
        io: IoCtx,
        name: *const c_char,
        image: *mut RawImage,
        snap: *const c_char,
    ) -> c_int;
    fn rbd_close(image: RawImage) -> c_int;
    fn rbd_get_size(image: RawImage, size: *mut u64) -> c_int;
    fn rbd_aio_create_completion(
        arg: *mut c_void,
        callback: CompletionFn,
        completion: *mut Completion,
    ) -> c_int;
    fn rbd_aio_get_return_value(completion: Completion) -> isize;
    fn rbd_aio_release(completion: Completion);
    fn rbd_aio_read2(
        image: RawImage,
        offset: u64,
        len: usize,
        buf: *mut c_char,
        completion: Completion,
        op_flags: c_int,
    ) -> c_int;
    fn rbd_aio_write2(
        image: RawImage,
        offset: u64,
        len: usize,
        buf: *const c_char,
        completion: Completion,
        op_flags: c_int,
    ) -> c_int;
    fn rbd_aio_write_zeroes(
        image: RawImage,
        offset: u64,
        len: usize,
        completion: Completion,
        zero_flags: c_int,
        op_flags: c_int,
    ) -> c_int;
    fn rbd_aio_flush(image: RawImage, completion: Completion) -> c_int;
    fn rbd_diff_iterate2(
        image: RawImage,
        from_snap: *const c_char,
        offset: u64,
        len: u64,
        include_parent: u8,
        whole_object: u8,
        callback: DiffFn,
        arg: *mut c_void,
    ) -> c_int;
}

/// A librados or librbd error: a positive errno and what failed.
pub(crate) type RbdResult<T> = Result<T, (i32, String)>;

/// librados' and librbd's `int` result: a negative errno is an error.
fn check(rc: c_int, what: &str) -> RbdResult<c_int> {
    if rc < 0 {
        let errno = -rc;
        let text = std::io::Error::from_raw_os_error(errno);
        Err((errno, format!("{what}: {text}")))
    } else {
        Ok(rc)
    }
}

/// A C string of `text`, or EINVAL naming `what` if it holds a NUL byte.
pub(crate) fn c_string(text: &str, what: &str) -> RbdResult<CString> {
    CString::new(text).map_err(|_| (libc::EINVAL, format!("{what} holds a NUL byte")))
}

/// An open image with its pool context and cluster connection, closed (in that order) on
/// drop. librbd's image handle is thread-safe: every store call uses it at once.
#[derive(Debug)]
pub(crate) struct Image {
    cluster: Cluster,
    ioctx: IoCtx,
    image: RawImage,
}

// SAFETY: librados and librbd handles may be used from any thread at once (both libraries
// lock internally; librbd's image handle serves concurrent aio by design).
unsafe impl Send for Image {}
// SAFETY: as above.
unsafe impl Sync for Image {}

/// What [`Image::open`] needs.
pub(crate) struct OpenArgs<'a> {
    /// The ceph.conf to read, or librados' default search (CEPH_CONF, /etc/ceph/ceph.conf).
    pub(crate) conf: Option<&'a CStr>,
    /// The pool and image names.
    pub(crate) pool: &'a CStr,
    /// The image's name in the pool.
    pub(crate) image: &'a CStr,
    /// Open without write access.
    pub(crate) read_only: bool,
    /// librados' own timeouts (`client_mount_timeout`, `rados_mon_op_timeout`,
    /// `rados_osd_op_timeout`): they bound the synchronous open and the operations an
    /// abandoned request leaves behind.
    pub(crate) timeout: Duration,
}

impl Image {
    /// Connects to the cluster and opens the image.
    pub(crate) fn open(args: &OpenArgs<'_>) -> RbdResult<Image> {
        let mut cluster: Cluster = std::ptr::null_mut();
        // SAFETY: `cluster` is an out-pointer; a null id means the default client.admin.
        let rc = unsafe { rados_create(&mut cluster, std::ptr::null()) };
        check(rc, "rados_create")?;
        // From here `image` owns the cluster handle: an error below shuts it down.
        let mut image = Image {
            cluster,
            ioctx: std::ptr::null_mut(),
            image: std::ptr::null_mut(),
        };
        let conf = args.conf.map_or(std::ptr::null(), CStr::as_ptr);
        // SAFETY: a live, unconnected handle; a NUL-terminated path or null (the default).
        let rc = unsafe { rados_conf_read_file(image.cluster, conf) };
        check(rc, "reading the Ceph config")?;
        let seconds = c_string(&args.timeout.as_secs().max(1).to_string(), "timeout")?;
        for option in [
            c"client_mount_timeout",
            c"rados_mon_op_timeout",
            c"rados_osd_op_timeout",
        ] {
            // SAFETY: a live, unconnected handle and NUL-terminated strings (copied).
            let rc = unsafe { rados_conf_set(image.cluster, option.as_ptr(), seconds.as_ptr()) };
            check(rc, "setting a librados timeout")?;
        }
        // librbd's own cache off: the mapping is the cache, and a write that returned must
        // be at the OSD. With the writeback cache on, a write returns once cached and a
        // failed flush drops the cached data, while the engine has already counted those
        // pages clean: a lost write after an OSD restart (tests/rbd.rs, the killed OSD).
        // SAFETY: a live, unconnected handle and NUL-terminated strings (copied).
        let rc = unsafe { rados_conf_set(image.cluster, c"rbd_cache".as_ptr(), c"false".as_ptr()) };
        check(rc, "turning librbd's cache off")?;
        // SAFETY: a live, configured handle; the connect is bounded by client_mount_timeout.
        let rc = unsafe { rados_connect(image.cluster) };
        check(rc, "connecting to the monitors")?;
        // SAFETY: a connected handle, a NUL-terminated pool name and an out-pointer.
        let rc = unsafe { rados_ioctx_create(image.cluster, args.pool.as_ptr(), &mut image.ioctx) };
        check(rc, "opening the pool")?;
        let open = if args.read_only {
            rbd_open_read_only
        } else {
            rbd_open
        };
        // SAFETY: a live pool context, a NUL-terminated name, an out-pointer and no snapshot.
        let rc = unsafe {
            open(
                image.ioctx,
                args.image.as_ptr(),
                &mut image.image,
                std::ptr::null(),
            )
        };
        check(rc, "opening the image")?;
        Ok(image)
    }

    /// The image's size in bytes.
    pub(crate) fn size(&self) -> RbdResult<u64> {
        let mut size = 0;
        // SAFETY: an open image and an out-pointer.
        let rc = unsafe { rbd_get_size(self.image, &mut size) };
        check(rc, "rbd_get_size")?;
        Ok(size)
    }

    /// Issues a read of `len` bytes at `offset` into a buffer the operation owns.
    pub(crate) fn issue_read(&self, offset: u64, len: usize) -> RbdResult<Op> {
        let op = Op::new(vec![0; len])?;
        let buf = op.shared.buffer.cast::<c_char>();
        // SAFETY: an open image; `buf` holds `len` bytes owned by the operation until its
        // completion has run (see `Op`), and the completion is fresh.
        let rc = unsafe { rbd_aio_read2(self.image, offset, len, buf, op.completion, 0) };
        op.issued(rc)
    }

    /// Issues a write of a copy of `bytes` at `offset`.
    pub(crate) fn issue_write(&self, offset: u64, bytes: &[u8]) -> RbdResult<Op> {
        let op = Op::new(bytes.to_vec())?;
        let buf = op.shared.buffer.cast::<c_char>().cast_const();
        // SAFETY: as in issue_read: the copy lives until the completion has run.
        let rc = unsafe { rbd_aio_write2(self.image, offset, bytes.len(), buf, op.completion, 0) };
        op.issued(rc)
    }

    /// Issues a write of zeros over `len` bytes at `offset`; `zero_flags` is
    /// [`THICK_PROVISION`] (allocate) or 0 (the range may be deallocated).
    pub(crate) fn issue_zero(&self, offset: u64, len: usize, zero_flags: c_int) -> RbdResult<Op> {
        let op = Op::new(Vec::new())?;
        // SAFETY: an open image and a fresh completion; no buffer.
        let rc =
            unsafe { rbd_aio_write_zeroes(self.image, offset, len, op.completion, zero_flags, 0) };
        op.issued(rc)
    }

    /// Issues a flush of every completed write (librbd's cache included).
    pub(crate) fn issue_flush(&self) -> RbdResult<Op> {
        let op = Op::new(Vec::new())?;
        // SAFETY: an open image and a fresh completion.
        let rc = unsafe { rbd_aio_flush(self.image, op.completion) };
        op.issued(rc)
    }

    /// The allocated extents of `offset..offset + len` (exact, not whole objects), as
    /// (offset, length) in order. Synchronous: [`RbdStore`](crate::store::rbd::RbdStore)
    /// runs it on a thread of its own to bound the wait.
    pub(crate) fn allocated(&self, offset: u64, len: u64) -> RbdResult<Vec<(u64, u64)>> {
        let mut extents: Vec<(u64, u64)> = Vec::new();
        let arg = (&raw mut extents).cast::<c_void>();
        // SAFETY: an open image; `arg` is the Vec `collect_extent` expects and outlives
        // the call (synchronous: librbd calls the callback before returning).
        let rc = unsafe {
            rbd_diff_iterate2(
                self.image,
                std::ptr::null(),
                offset,
                len,
                1,
                0,
                collect_extent,
                arg,
            )
        };
        check(rc, "rbd_diff_iterate2")?;
        Ok(extents)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: each handle is live or null and owned by us; the image goes before its
        // pool context and that before the cluster. rbd_close waits for the operations in
        // flight (abandoned ones included), which rados_osd_op_timeout bounds.
        unsafe {
            if !self.image.is_null() {
                rbd_close(self.image);
            }
            if !self.ioctx.is_null() {
                rados_ioctx_destroy(self.ioctx);
            }
            rados_shutdown(self.cluster);
        }
    }
}

/// The `rbd_diff_iterate2` callback: appends an allocated extent to the Vec at `arg`
/// (merging it into the previous one when they touch).
///
/// # Safety
/// `arg` is a live `Vec<(u64, u64)>` used by nobody else during the call.
unsafe extern "C" fn collect_extent(
    offset: u64,
    len: usize,
    exists: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: per this function's contract (Image::allocated's).
    let extents = unsafe { &mut *arg.cast::<Vec<(u64, u64)>>() };
    let len = len as u64;
    if exists == 0 || len == 0 {
        return 0;
    }
    match extents.last_mut() {
        Some(last) if last.0 + last.1 == offset => last.1 += len,
        _ => extents.push((offset, len)),
    }
    0
}

/// What an operation shares with its completion callback.
struct Shared {
    /// librbd's return value once the callback ran.
    result: Mutex<Option<isize>>,
    done: Condvar,
    /// The operation's buffer (read into or written from), `len` bytes from
    /// `Box<[u8]>::into_raw`; freed when the last of waiter and callback drops `Shared`.
    buffer: *mut u8,
    len: usize,
}

// SAFETY: `buffer` is only touched by librbd between issue and completion, and by the
// waiter after the completion (ordered by the `result` mutex); the rest is Sync.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Drop for Shared {
    fn drop(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.buffer, self.len);
        // SAFETY: made by Box::into_raw in Op::new and freed only here, once.
        drop(unsafe { Box::from_raw(slice) });
    }
}

/// One asynchronous librbd operation, waited for with a deadline.
pub(crate) struct Op {
    shared: Arc<Shared>,
    /// Released by the callback (as qemu's rbd driver does), never by the waiter.
    completion: Completion,
}

impl Op {
    /// A completion whose callback holds one reference to the shared state.
    fn new(buffer: Vec<u8>) -> RbdResult<Op> {
        let buffer = buffer.into_boxed_slice();
        let len = buffer.len();
        let shared = Arc::new(Shared {
            result: Mutex::new(None),
            done: Condvar::new(),
            buffer: Box::into_raw(buffer).cast::<u8>(),
            len,
        });
        let arg = Arc::into_raw(Arc::clone(&shared))
            .cast_mut()
            .cast::<c_void>();
        let mut completion: Completion = std::ptr::null_mut();
        // SAFETY: `arg` is what `completed` expects; `completion` is an out-pointer.
        let rc = unsafe { rbd_aio_create_completion(arg, completed, &mut completion) };
        if let Err(e) = check(rc, "rbd_aio_create_completion") {
            // SAFETY: the callback will never run: take its reference back.
            drop(unsafe { Arc::from_raw(arg.cast::<Shared>()) });
            return Err(e);
        }
        Ok(Op { shared, completion })
    }

    /// The operation once librbd took it (`rc` of the `rbd_aio_*` call).
    fn issued(self, rc: c_int) -> RbdResult<Op> {
        if let Err(e) = check(rc, "issuing an rbd request") {
            // SAFETY: librbd refused the operation, so the callback will never run: take
            // back its reference and release the completion here.
            unsafe {
                drop(Arc::from_raw(Arc::as_ptr(&self.shared)));
                rbd_aio_release(self.completion);
            }
            return Err(e);
        }
        Ok(self)
    }

    /// Waits for the operation until `deadline`: its return value (negative errno as an
    /// error), or ETIMEDOUT, after which the operation is abandoned (see the file's top).
    pub(crate) fn wait(&self, deadline: Instant) -> RbdResult<usize> {
        let mut result = lock(&self.shared.result);
        loop {
            if let Some(rc) = *result {
                return if rc < 0 {
                    let errno = i32::try_from(-rc).unwrap_or(libc::EIO);
                    Err((errno, std::io::Error::from_raw_os_error(errno).to_string()))
                } else {
                    Ok(rc as usize)
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err((
                    libc::ETIMEDOUT,
                    "the Ceph cluster did not answer in time".into(),
                ));
            }
            result = self
                .shared
                .done
                .wait_timeout(result, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The bytes a completed read brought (call only after [`Op::wait`] returned Ok).
    pub(crate) fn bytes(&self) -> &[u8] {
        assert!(
            lock(&self.shared.result).is_some(),
            "Op::bytes before completion"
        );
        // SAFETY: the completion ran (checked above, under the mutex that orders it), so
        // librbd no longer writes the buffer; it lives as long as `self.shared`.
        unsafe { std::slice::from_raw_parts(self.shared.buffer, self.shared.len) }
    }
}

/// Locks a mutex whose data stays valid across a panic.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// librbd's completion callback: records the return value, releases the completion, wakes
/// the waiter and drops the callback's reference (which may free the buffer, if the
/// waiter gave up).
///
/// # Safety
/// `arg` is the `Arc<Shared>` reference `Op::new` gave to this completion, passed once.
unsafe extern "C" fn completed(completion: Completion, arg: *mut c_void) {
    // SAFETY: per this function's contract; the completion is live until released here.
    let (shared, rc) = unsafe {
        let shared = Arc::from_raw(arg.cast_const().cast::<Shared>());
        let rc = rbd_aio_get_return_value(completion);
        rbd_aio_release(completion);
        (shared, rc)
    };
    *lock(&shared.result) = Some(rc);
    shared.done.notify_all();
}
