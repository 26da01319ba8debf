//! The `udax` Python module: `udax.map_file(path, ...)` maps a file through udax and
//! returns a [`PyMapping`], which exports its memory with the buffer protocol, so that
//! `numpy.frombuffer(m, dtype)` and `memoryview(m)` see the mapping itself (zero-copy,
//! writable unless mapped read-only).
//!
//! Soundness: a view holds a reference to the mapping object and counts as an export;
//! `close()` refuses (BusyError) while any export lives, as Python's own `mmap.close()`
//! does, so no view can outlive the memory under it. Dropping the last reference flushes
//! and unmaps (like munmap of a shared mapping: no data is lost); `close()` does the same
//! and raises the flush's error.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use pyo3::create_exception;
use pyo3::exceptions::{PyOSError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use udax::{FileStore, Granularity, Mapping, Options, StoreError, UffdError};

create_exception!(
    udax,
    Error,
    PyOSError,
    "Any udax failure (an OSError: errno, strerror)."
);
create_exception!(udax, NotFound, Error, "The file to map does not exist.");
create_exception!(
    udax,
    InvalidArgument,
    Error,
    "A size, granularity, budget or option that cannot be mapped."
);
create_exception!(udax, ClosedError, Error, "The mapping is closed.");
create_exception!(
    udax,
    BusyError,
    Error,
    "close() while views (memoryview, numpy arrays) of the mapping still exist."
);
create_exception!(
    udax,
    ReadOnlyError,
    Error,
    "A write to a read-only mapping."
);
create_exception!(
    udax,
    UnavailableError,
    Error,
    "userfaultfd is unavailable here (the message says how to enable it)."
);

/// The exception for a udax error.
fn py_error(error: udax::Error) -> PyErr {
    let message = error.to_string();
    let args = |errno: c_int| (errno, message.clone());
    match &error {
        udax::Error::Store(StoreError::NotFound { .. }) => NotFound::new_err(args(libc::ENOENT)),
        udax::Error::Store(StoreError::NotWritable { .. }) => Error::new_err(args(libc::EACCES)),
        udax::Error::Uffd(UffdError::Unavailable { .. } | UffdError::MissingFeatures { .. }) => {
            UnavailableError::new_err(args(libc::ENOSYS))
        }
        udax::Error::ReadOnly => ReadOnlyError::new_err(args(libc::EACCES)),
        udax::Error::EmptyMapping
        | udax::Error::UnalignedLength { .. }
        | udax::Error::StoreTooShort { .. }
        | udax::Error::IncompatibleOptions { .. }
        | udax::Error::BudgetTooSmall { .. }
        | udax::Error::OutOfRange { .. }
        | udax::Error::BadRange { .. } => InvalidArgument::new_err(args(libc::EINVAL)),
        _ => Error::new_err(args(libc::EIO)),
    }
}

/// An InvalidArgument with a message of ours.
fn invalid(message: String) -> PyErr {
    InvalidArgument::new_err((libc::EINVAL, message))
}

/// Bytes from an int or a string such as "4k", "64KiB", "2m", "1g" (binary units).
fn parse_bytes(value: &Bound<'_, PyAny>, what: &str) -> PyResult<u64> {
    if let Ok(n) = value.extract::<u64>() {
        return Ok(n);
    }
    let Ok(text) = value.extract::<String>() else {
        return Err(PyTypeError::new_err(format!(
            "{what} must be an int or a string such as '64k'"
        )));
    };
    parse_size(&text, what)
}

/// Bytes from a string such as "4k", "64KiB", "2m", "1g".
fn parse_size(text: &str, what: &str) -> PyResult<u64> {
    let lower = text.trim().to_ascii_lowercase();
    let digits = lower.bytes().take_while(u8::is_ascii_digit).count();
    let shift = match lower[digits..].trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        _ => {
            return Err(invalid(format!(
                "{what} {text:?}: use a number with k, m or g"
            )));
        }
    };
    lower[..digits]
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| invalid(format!("{what} {text:?} is not a size")))
}

/// The granularity of `bytes`: 4 KiB pages, 2 MiB huge pages, or fault-around between.
fn granularity_of(bytes: u64) -> PyResult<Granularity> {
    match bytes {
        4096 => Ok(Granularity::Page),
        b if b == udax::HUGE_PAGE_SIZE as u64 => Ok(Granularity::Huge),
        b if b % 4096 == 0 && b > 0 && b < udax::HUGE_PAGE_SIZE as u64 => {
            Ok(Granularity::FaultAround(b as usize))
        }
        b => Err(invalid(format!(
            "granularity {b}: use a multiple of 4096 from 4k to 2m"
        ))),
    }
}

/// A file mapped by udax; exports its bytes with the buffer protocol.
#[pyclass(module = "udax", name = "Mapping", frozen)]
struct PyMapping {
    /// The mapping; `None` once closed.
    mapping: Mutex<Option<Mapping>>,
    /// Live buffer exports (memoryviews, numpy arrays). Changed under `mapping`'s lock,
    /// so that `close` and a new export cannot cross.
    exports: AtomicUsize,
    /// The first byte, and the length (fixed for the mapping's life).
    address: usize,
    len: usize,
    read_only: bool,
    path: String,
}

impl PyMapping {
    /// The mapping, locked (a panic elsewhere leaves it usable).
    fn lock(&self) -> MutexGuard<'_, Option<Mapping>> {
        self.mapping.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the open mapping without the GIL (faults and writeback never need it).
    fn with_open<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Mapping) -> Result<T, udax::Error> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            let guard = self.lock();
            let mapping = guard.as_ref().ok_or(Closed)?;
            f(mapping).map_err(Failed)
        })
        .map_err(PyErr::from)
    }
}

/// Why a call on a mapping failed, carried out of a GIL-free section.
enum CallError {
    Closed,
    Failed(udax::Error),
}
use CallError::{Closed, Failed};

impl From<CallError> for PyErr {
    fn from(error: CallError) -> PyErr {
        match error {
            Closed => ClosedError::new_err((libc::EBADF, "the mapping is closed")),
            Failed(e) => py_error(e),
        }
    }
}

#[pymethods]
impl PyMapping {
    /// Writes back every dirty page, then makes the file durable (fsync).
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        self.with_open(py, Mapping::flush)
    }

    /// Makes `[offset, offset + length)` present, as reads (or writes) would.
    #[pyo3(signature = (offset=0, length=None, write=false))]
    fn prefault(
        &self,
        py: Python<'_>,
        offset: usize,
        length: Option<usize>,
        write: bool,
    ) -> PyResult<()> {
        let length = length.unwrap_or(self.len.saturating_sub(offset));
        self.with_open(py, |m| m.prefault(offset, length, write))
    }

    /// The counters (faults, pages written back, evictions, resident pages...) as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.with_open(py, |m| Ok(m.stats()))?;
        let dict = PyDict::new(py);
        for (name, value) in stats.fields() {
            dict.set_item(name, value)?;
        }
        Ok(dict)
    }

    /// Flushes and unmaps; raises the flush's error. BusyError while views exist (delete
    /// the numpy arrays and memoryviews first); closing twice does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let taken = py.detach(|| {
            let mut guard = self.lock();
            if self.exports.load(Ordering::Relaxed) > 0 {
                return Err(self.exports.load(Ordering::Relaxed));
            }
            Ok(guard.take())
        });
        match taken {
            Err(views) => Err(BusyError::new_err((
                libc::EBUSY,
                format!("{views} view(s) of the mapping still exist: delete them before close()"),
            ))),
            Ok(None) => Ok(()),
            Ok(Some(mapping)) => py.detach(|| mapping.close()).map_err(py_error),
        }
    }

    /// Whether close() has run.
    #[getter]
    fn closed(&self) -> bool {
        self.lock().is_none()
    }

    /// Whether the mapping is read-only.
    #[getter]
    fn read_only(&self) -> bool {
        self.read_only
    }

    /// The mapped file's path.
    #[getter]
    fn path(&self) -> String {
        self.path.clone()
    }

    /// The address of the first byte (for ctypes and friends).
    #[getter]
    fn address(&self) -> usize {
        self.address
    }

    fn __len__(&self) -> usize {
        self.len
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _kind: Option<Bound<'_, PyAny>>,
        _value: Option<Bound<'_, PyAny>>,
        _traceback: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let state = if self.closed() { "closed" } else { "open" };
        format!("<udax.Mapping {} {} bytes, {state}>", self.path, self.len)
    }

    /// The buffer protocol: the mapping's bytes, one-dimensional, format "B".
    ///
    /// # Safety
    /// Called by CPython with a valid `view` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let this = slf.get();
        let guard = this.lock();
        if guard.is_none() {
            return Err(Closed.into());
        }
        // SAFETY: `view` is CPython's to fill; the memory stays mapped while the export
        // lives, since close() refuses while `exports` is nonzero and the view holds a
        // reference to `slf` (FillInfo takes one). FillInfo raises BufferError for a
        // writable request of a read-only mapping.
        let filled = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                this.address as *mut c_void,
                this.len as pyo3::ffi::Py_ssize_t,
                c_int::from(this.read_only),
                flags,
            )
        };
        if filled != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        this.exports.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Ends an export.
    ///
    /// # Safety
    /// Called by CPython once per successful `__getbuffer__`.
    unsafe fn __releasebuffer__(&self, _view: *mut pyo3::ffi::Py_buffer) {
        let _guard = self.lock();
        self.exports.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Maps the file at `path`.
///
/// - `size`: bytes to map from the start (a multiple of 4096; default the whole file);
///   with `create=True`, the size of the new sparse file (required).
/// - `budget`: resident bytes at most (int or "64m"; default no limit, at least 64k):
///   past it pages are evicted (dirty ones written back first).
/// - `granularity`: bytes a read fault brings in: "4k", "64k" (fault-around), "2m" (huge
///   pages), or an int; default the library's: 2 MiB without a budget, under one a
///   sequential read reads 256 KiB and a random one 4 KiB (2 MiB under a small budget
///   thrashes).
/// - `read_only`: map PROT_READ (the buffer is read-only; the file may be read-only).
/// - `create`: create (or truncate) the file, all hole.
/// - `threads`: handler threads (default one per CPU, at most 4).
/// - `read_ahead`: read ahead of sequential read faults (default True; never under a
///   budget): the rest of the 2 MiB range and the two past it come in before the run
///   faults there. False: each fault reads only what its granularity says.
#[pyfunction]
#[pyo3(signature = (path, size=None, budget=None, granularity=None, read_only=false, create=false, threads=None, read_ahead=true))]
#[allow(clippy::too_many_arguments)]
fn map_file(
    py: Python<'_>,
    path: std::path::PathBuf,
    size: Option<Bound<'_, PyAny>>,
    budget: Option<Bound<'_, PyAny>>,
    granularity: Option<Bound<'_, PyAny>>,
    read_only: bool,
    create: bool,
    threads: Option<usize>,
    read_ahead: bool,
) -> PyResult<PyMapping> {
    let size = size.map(|s| parse_bytes(&s, "size")).transpose()?;
    let mut options = Options::default()
        .read_only(read_only)
        .read_ahead(read_ahead);
    if let Some(granularity) = granularity {
        options = options.granularity(granularity_of(parse_bytes(&granularity, "granularity")?)?);
    }
    if let Some(size) = size {
        options = options.len(size);
    }
    if let Some(budget) = budget {
        options = options.budget(parse_bytes(&budget, "budget")?);
    }
    if let Some(threads) = threads {
        options = options.handler_threads(threads);
    }
    let shown = path.display().to_string();
    let mapping = py
        .detach(|| -> Result<Mapping, udax::Error> {
            let store = match (create, read_only) {
                (true, _) => FileStore::create(&path, size.unwrap_or(0))?,
                (false, true) => {
                    let file = std::fs::File::open(&path).map_err(|e| match e.kind() {
                        std::io::ErrorKind::NotFound => StoreError::NotFound { path: path.clone() },
                        _ => StoreError::Open {
                            path: path.clone(),
                            source: e,
                        },
                    })?;
                    FileStore::from_fd(file.into())?
                }
                (false, false) => FileStore::open(&path)?,
            };
            Mapping::new(Arc::new(store), options)
        })
        .map_err(py_error)?;
    Ok(PyMapping {
        address: mapping.as_ptr() as usize,
        len: mapping.len(),
        read_only,
        path: shown,
        exports: AtomicUsize::new(0),
        mapping: Mutex::new(Some(mapping)),
    })
}

/// The module.
#[pymodule]
#[pyo3(name = "udax")]
fn udax_python(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(map_file, m)?)?;
    m.add_class::<PyMapping>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    for (name, class) in [
        ("Error", py.get_type::<Error>()),
        ("NotFound", py.get_type::<NotFound>()),
        ("InvalidArgument", py.get_type::<InvalidArgument>()),
        ("ClosedError", py.get_type::<ClosedError>()),
        ("BusyError", py.get_type::<BusyError>()),
        ("ReadOnlyError", py.get_type::<ReadOnlyError>()),
        ("UnavailableError", py.get_type::<UnavailableError>()),
    ] {
        m.add(name, class)?;
    }
    Ok(())
}
