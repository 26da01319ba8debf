//! The file the benchmark maps: a temporary sparse file, or the user's `--store`.
//!
//! Both engines map the same file, one after the other. Before each run the file is put in
//! the state the workload starts from ([`Start`]): holes are punched with
//! `fallocate(PUNCH_HOLE)`, a written store is filled with non-zero data (or, for `sort`,
//! the run's pseudo-random words) by `pwrite` in 1 MiB chunks and `fdatasync`; then the
//! file's page cache is dropped with
//! `posix_fadvise(DONTNEED)` so every run starts cold. A fill is skipped when the file is
//! known to be fully written already (every page written and synced by the previous run).
//!
//! A `--store` file that existed before is only modified by workloads that write: the
//! read-only workloads run on it as it is. A temporary store is removed on drop, on error
//! paths, and on SIGINT/SIGTERM.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, Ordering};

use crate::error::CliError;
use crate::size::format_bytes;
use crate::workload::{Start, Workload, random_words};

/// Who the file belongs to, which decides what the benchmark may do to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ownership {
    /// Made by us under the temporary directory, removed on drop.
    Temporary,
    /// Made by us at the `--store` path (it did not exist), kept.
    Created,
    /// The user's existing file: read-only workloads leave it as it is.
    Given,
}

/// What the first `size` bytes of the file are known to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contents {
    Unknown,
    Holes,
    Written,
}

/// The store file of a benchmark.
pub struct BenchStore {
    path: PathBuf,
    file: File,
    size: u64,
    ownership: Ownership,
    contents: Contents,
}

impl BenchStore {
    /// Creates a fresh sparse file of `size` bytes under `dir` (the temporary directory).
    pub fn temporary(dir: &Path, size: u64) -> Result<BenchStore, CliError> {
        check_dir(
            dir,
            "temporary directory",
            "set TMPDIR to an existing directory",
        )?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = dir.join(format!("udax-bench-{}-{stamp}.img", std::process::id()));
        let file = create_new(&path, size)?;
        remove_on_signal(&path);
        Ok(BenchStore {
            path,
            file,
            size,
            ownership: Ownership::Temporary,
            contents: Contents::Holes,
        })
    }

    /// Uses the file at `path`, creating it (sparse, `size` bytes) if it does not exist.
    pub fn given(path: &Path, size: u64) -> Result<BenchStore, CliError> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        check_dir(
            dir,
            "store directory",
            "create it or pass a --store path in an existing directory",
        )?;
        let existing = match std::fs::metadata(path) {
            Ok(meta) => Some(meta),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(CliError::bad(
                    format!("cannot stat store {}: {e}", path.display()),
                    "check the path and its permissions",
                ));
            }
        };
        let Some(meta) = existing else {
            let file = create_new(path, size)?;
            return Ok(BenchStore {
                path: path.to_path_buf(),
                file,
                size,
                ownership: Ownership::Created,
                contents: Contents::Holes,
            });
        };
        if !meta.is_file() {
            return Err(CliError::bad(
                format!("store {} is not a regular file", path.display()),
                "pass the path of a regular file (or of one to create)",
            ));
        }
        if meta.len() < size {
            return Err(CliError::bad(
                format!(
                    "store {} holds {} ({} bytes), less than --size {} ({size} bytes)",
                    path.display(),
                    format_bytes(meta.len()),
                    meta.len(),
                    format_bytes(size)
                ),
                format!(
                    "pass --size {} or less, or grow the file (truncate -s {size} {})",
                    meta.len() / 4096 * 4096,
                    path.display()
                ),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| {
                CliError::bad(
                    format!("cannot open store {} for writing: {e}", path.display()),
                    "fix its permissions or pass another --store",
                )
            })?;
        Ok(BenchStore {
            path: path.to_path_buf(),
            file,
            size,
            ownership: Ownership::Given,
            contents: Contents::Unknown,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file (read-write).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Bytes of disk the file has allocated (`st_blocks * 512`).
    pub fn allocated_bytes(&self) -> Result<u64, CliError> {
        let meta = self
            .file
            .metadata()
            .map_err(|e| CliError::failed(format!("stat {}", self.path.display()), e))?;
        Ok(meta.blocks() * 512)
    }

    /// Puts the file in the state `workload` starts from (`seed` picks the random words of
    /// [`Start::RandomWords`]), then drops its page cache. A user's existing file is left as
    /// it is for workloads that do not write.
    pub fn prepare(&mut self, workload: Workload, seed: u64) -> Result<(), CliError> {
        let may_change = self.ownership != Ownership::Given || workload.writes();
        if may_change {
            match workload.start() {
                Start::Holes if self.contents != Contents::Holes => self.punch()?,
                Start::Written if self.contents != Contents::Written => self.fill()?,
                Start::RandomWords => self.fill_random(seed)?,
                _ => {}
            }
        }
        self.drop_cache()?;
        // Until `settle` looks again, a run may change anything.
        self.contents = Contents::Unknown;
        Ok(())
    }

    /// After a run (mapping flushed and closed): learns what the file now holds, so the
    /// next `prepare` can skip a fill that is not needed.
    pub fn settle(&mut self) {
        self.contents = self.probe();
    }

    /// All holes or all data over `0..size`, from SEEK_DATA/SEEK_HOLE.
    fn probe(&self) -> Contents {
        let fd = self.file.as_raw_fd();
        // SAFETY: lseek on our open fd has no memory effects; errors are checked.
        let data = unsafe { libc::lseek(fd, 0, libc::SEEK_DATA) };
        if data < 0 || data as u64 >= self.size {
            return if data < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::ENXIO) {
                Contents::Unknown
            } else {
                Contents::Holes
            };
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, 0, libc::SEEK_HOLE) };
        if data == 0 && hole >= 0 && hole as u64 >= self.size {
            Contents::Written
        } else {
            Contents::Unknown
        }
    }

    /// Turns `0..size` into holes.
    fn punch(&mut self) -> Result<(), CliError> {
        let size = libc::off_t::try_from(self.size).unwrap_or(libc::off_t::MAX);
        // SAFETY: fallocate on our open fd has no memory effects; the result is checked.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                size,
            )
        };
        if rc != 0 {
            let error = io::Error::last_os_error();
            let whole = self
                .file
                .metadata()
                .map(|m| m.len() == self.size)
                .unwrap_or(false);
            if error.raw_os_error() != Some(libc::EOPNOTSUPP) || !whole {
                return Err(CliError::failed(
                    format!("punching holes in {}", self.path.display()),
                    error,
                ));
            }
            // No hole punching on this file system: truncate to nothing and back.
            self.file
                .set_len(0)
                .and_then(|()| self.file.set_len(self.size))
                .map_err(|e| CliError::failed(format!("truncating {}", self.path.display()), e))?;
        }
        self.contents = Contents::Holes;
        Ok(())
    }

    /// Writes non-zero data over `0..size` in 1 MiB chunks, then `fdatasync`.
    fn fill(&mut self) -> Result<(), CliError> {
        self.write_chunks(|chunk| chunk.fill(0xA5))
    }

    /// Writes the words of `random_words(seed)` over `0..size` in 1 MiB chunks, then
    /// `fdatasync`.
    fn fill_random(&mut self, seed: u64) -> Result<(), CliError> {
        let mut words = random_words(seed);
        self.write_chunks(|chunk| {
            for word in chunk.chunks_exact_mut(8) {
                let value = words.next().expect("random_words never ends");
                word.copy_from_slice(&value.to_ne_bytes());
            }
        })
    }

    /// Writes `0..size` in 1 MiB chunks, each made by `make`, then `fdatasync`.
    fn write_chunks(&mut self, mut make: impl FnMut(&mut [u8])) -> Result<(), CliError> {
        const CHUNK: u64 = 1 << 20;
        let mut chunk = vec![0u8; CHUNK as usize];
        let mut offset = 0;
        while offset < self.size {
            let len = CHUNK.min(self.size - offset) as usize;
            make(&mut chunk[..len]);
            self.file
                .write_all_at(&chunk[..len], offset)
                .map_err(|e| CliError::failed(format!("filling {}", self.path.display()), e))?;
            offset += len as u64;
        }
        self.file
            .sync_data()
            .map_err(|e| CliError::failed(format!("fdatasync of {}", self.path.display()), e))?;
        self.contents = Contents::Written;
        Ok(())
    }

    /// Writes back and drops the file's cached pages, so the next run starts cold.
    fn drop_cache(&self) -> Result<(), CliError> {
        self.file
            .sync_data()
            .map_err(|e| CliError::failed(format!("fdatasync of {}", self.path.display()), e))?;
        let size = libc::off_t::try_from(self.size).unwrap_or(libc::off_t::MAX);
        // SAFETY: posix_fadvise on our open fd has no memory effects; it returns the error.
        let rc = unsafe {
            libc::posix_fadvise(self.file.as_raw_fd(), 0, size, libc::POSIX_FADV_DONTNEED)
        };
        if rc != 0 {
            return Err(CliError::failed(
                format!("posix_fadvise(DONTNEED) of {}", self.path.display()),
                io::Error::from_raw_os_error(rc),
            ));
        }
        Ok(())
    }
}

impl Drop for BenchStore {
    fn drop(&mut self) {
        if self.ownership == Ownership::Temporary {
            // Nothing useful to do if removal fails while unwinding or exiting.
            let _ = std::fs::remove_file(&self.path);
            forget_signal_path();
        }
    }
}

/// Fails with a bad-input error unless `dir` is an existing directory.
fn check_dir(dir: &Path, what: &str, fix: &str) -> Result<(), CliError> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(CliError::bad(
            format!("{what} {} is not a directory", dir.display()),
            fix,
        )),
        Err(_) => Err(CliError::bad(
            format!("{what} {} does not exist", dir.display()),
            fix,
        )),
    }
}

/// Creates `path` (which must not exist) as a sparse file of `size` bytes.
fn create_new(path: &Path, size: u64) -> Result<File, CliError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            CliError::bad(
                format!("cannot create store {}: {e}", path.display()),
                "check the directory's permissions or pass another --store",
            )
        })?;
    if let Err(e) = file.set_len(size) {
        let _ = std::fs::remove_file(path);
        return Err(CliError::bad(
            format!("cannot size store {} to {size} bytes: {e}", path.display()),
            "pass a smaller --size or a store on another file system",
        ));
    }
    Ok(file)
}

/// The temporary store to unlink if the process is interrupted (a leaked CString, or null).
static SIGNAL_PATH: AtomicPtr<libc::c_char> = AtomicPtr::new(std::ptr::null_mut());

/// Removes the temporary store and exits, on SIGINT or SIGTERM.
extern "C" fn remove_and_exit(signal: libc::c_int) {
    let path = SIGNAL_PATH.load(Ordering::SeqCst);
    if !path.is_null() {
        // SAFETY: a non-null SIGNAL_PATH is a NUL-terminated string leaked by
        // remove_on_signal and never freed; unlink and _exit are
        // async-signal-safe.
        unsafe { libc::unlink(path) };
    }
    // SAFETY: _exit is async-signal-safe and ends the process without unwinding.
    unsafe { libc::_exit(128 + signal) };
}

/// Arranges for `path` to be removed if the process gets SIGINT or SIGTERM.
fn remove_on_signal(path: &Path) {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // The string is leaked on purpose: the handler may be reading an old one at any time,
    // so none is ever freed (one short path per store).
    SIGNAL_PATH.store(c_path.into_raw(), Ordering::SeqCst);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler
        // only calls async-signal-safe functions.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = remove_and_exit as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// Forgets the path registered by `remove_on_signal` (the file is gone).
fn forget_signal_path() {
    SIGNAL_PATH.store(std::ptr::null_mut(), Ordering::SeqCst);
}
