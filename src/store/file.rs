//! [`FileStore`]: a store in a sparse regular file.
//!
//! Owns the file descriptor and the file's length, read once at open. Holes and data come
//! from the file system through `lseek(SEEK_DATA / SEEK_HOLE)`; the last data run and the
//! last hole run found are remembered (`extent_cache`), so faults in one run ask once. It
//! knows nothing of mappings, userfaultfd or entry states.
//!
//! `allocate` writes zeros over the holes of its range, as the kernel's DAX zeroes newly
//! allocated blocks: the space is reserved at once (ENOSPC surfaces there) and the range
//! is plain data. `fallocate` would leave *unwritten* extents, which ext4 and XFS report to
//! SEEK_DATA as holes only after looking for cached pages in each of them: after many
//! scattered allocations every extent query scanned them all (1.3 ms per random write
//! fault at 16,384 pages, against 22 µs for sequential ones).
//!
//! A read the page cache holds is one NOWAIT `preadv2`. On a miss, a read that continues
//! the last one (a sequential fault) is read ahead by the kernel's own read-ahead of the
//! `pread` and by the store's read-ahead thread (`file_ahead`), off the fault path; a
//! random one first asks the kernel to read the 128 KiB around it (`WILLNEED`), as the
//! kernel's own mmap faults read around a miss, so random faults cost one I/O per window,
//! not one per page. Under a budget ([`Store::serve_mapping`]) there is no read-around
//! and the thread keeps the file's page cache small (see `file_ahead`). A random 2 MiB
//! read of a range the cache does not hold, and any 2 MiB aligned write (a writeback run),
//! go around it (O_DIRECT, `file_direct`).
//!
//! `punch_hole` uses `fallocate(PUNCH_HOLE)`; where the file system has none (EOPNOTSUPP:
//! NFSv3, some FUSE and 9p mounts) it writes zeros over the data: reads keep their meaning,
//! but a punch frees nothing.
//!
//! **A file that shrinks underneath.** Another process may truncate the file while it is
//! mapped. As with the kernel's mmap of a file, an access to a page wholly past the new end
//! is an error ([`StoreError::BeyondEnd`]: the fault gets SIGBUS), the page holding the end
//! reads as the file up to it and zeros after, and nothing udax does grows the file back.
//! Detected without a size check on the common paths: a data run cannot reach past the end
//! (SEEK_HOLE stops there) and a read past it comes back short; only where the answer is
//! ambiguous does the store ask the size (one `fstat`): when SEEK_DATA finds no data at or
//! after the offset (a trailing hole, or past the end), after a short read, and before
//! every write (so that neither flush, eviction nor allocation extends the file). A
//! truncation racing a write by the microseconds between that `fstat` and the `pwrite` can
//! still see the file grow back to the end of that write: the kernel closes that window
//! with the inode lock, which a user-space server cannot take.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::store::extent_cache::{ExtentCache, Token};
use crate::store::file_ahead::FileAhead;
use crate::store::file_direct::DirectIo;
use crate::store::{Extent, ExtentKind, Serving, Store, StoreError, check_range};

/// Size of the zero buffer the no-`fallocate` fallbacks write from.
const ZERO_CHUNK: u64 = 64 << 10;

/// The window read into the page cache around a small read (the kernel's default
/// read-ahead for mmap faults).
const READ_AROUND: u64 = 128 << 10;

/// How many times [`Store::extent`] asks again when a hole punch races its two seeks.
const SEEK_RETRIES: u32 = 8;

/// A store in a sparse regular file, opened read-write.
#[derive(Debug)]
pub struct FileStore {
    /// The open file.
    file: File,
    /// The path it was opened at, for errors and reports.
    path: PathBuf,
    /// The file's length in bytes when it was opened: the length mapped.
    /// Invariant 1: udax never resizes the file while the store lives; another process
    /// may shrink it, and then accesses past its new end fail (see the module doc).
    len: u64,
    /// The last data run `extent` found. Invariant 2: nobody else punches holes in the
    /// file while the store lives (ours clear the cache); a run the file shrank under is
    /// found out by the short read it leads to, which clears the cache.
    data_run: ExtentCache,
    /// The last hole run `extent` found. Invariant 3: nobody else writes into the
    /// file's holes while the store lives; ours cut the written range out
    /// (`write_unchecked`). A shrink is found by the size check every use of it makes
    /// (one `fstat`, once per allocation), so an access past a new end still fails.
    hole_run: ExtentCache,
    /// Read-ahead and, under a budget, drop-behind, off the fault path.
    ahead: FileAhead,
    /// Large random reads and large writes around the page cache (`file_direct`).
    direct: DirectIo,
}

impl FileStore {
    /// Creates a sparse file of `size` bytes at `path`, all hole, and opens it read-write.
    ///
    /// An existing regular file at `path` is truncated: its contents are lost.
    ///
    /// # Examples
    ///
    /// ```
    /// use udax::{FileStore, Store};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = tempfile::tempdir()?;
    /// let store = FileStore::create(dir.path().join("disk.img"), 1 << 30)?; // 1 GiB
    /// assert_eq!(store.len(), 1 << 30);
    /// assert_eq!(store.allocated_bytes(), Some(0));        // sparse: all hole
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StoreError::NotWritable`] for permission or read-only errors,
    /// [`StoreError::Open`] otherwise, including a missing parent directory and a path
    /// that is not a regular file.
    pub fn create(path: impl AsRef<Path>, size: u64) -> Result<FileStore, StoreError> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| open_error(path, e, true))?;
        regular_len(&file, path)?;
        file.set_len(size).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(FileStore::assemble(file, path.to_path_buf(), size))
    }

    /// Opens the existing regular file at `path` read-write; its length is the store's.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use udax::{FileStore, Mapping, Options, StoreError};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("data.img");
    /// std::fs::write(&path, vec![1u8; 64 << 10])?;          // 64 KiB of data
    /// let mapping = Mapping::new(Arc::new(FileStore::open(&path)?), Options::default())?;
    /// assert_eq!(mapping.len(), 64 << 10);
    /// mapping.close()?;
    /// let missing = FileStore::open(dir.path().join("nothing.img"));
    /// assert!(matches!(missing, Err(StoreError::NotFound { .. })));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if nothing is at `path`; [`StoreError::NotWritable`] for
    /// EACCES, EPERM, EROFS and ETXTBSY; [`StoreError::Open`] otherwise, including a path
    /// that is not a regular file.
    pub fn open(path: impl AsRef<Path>) -> Result<FileStore, StoreError> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| open_error(path, e, false))?;
        let len = regular_len(&file, path)?;
        Ok(FileStore::assemble(file, path.to_path_buf(), len))
    }

    /// A store over an open file descriptor (a caller's `dup`), with the access mode it
    /// was opened with: an `O_RDONLY` descriptor makes a store that can only back a
    /// read-only mapping (its writes fail with EBADF). The path, for reports, is the one
    /// `/proc/self/fd` names.
    ///
    /// A descriptor opened with `O_DIRECT` is reopened without it (through
    /// `/proc/self/fd/N`, same file and access mode) and closed: udax reads single pages
    /// into unaligned buffers and relies on the page cache around a miss, which O_DIRECT
    /// forbids; page-cache reads and writes see the same file, and `flush` still ends in
    /// fsync.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::fd::OwnedFd;
    /// use udax::{FileStore, Store};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("data.img");
    /// std::fs::write(&path, vec![7u8; 8192])?;
    /// let fd = OwnedFd::from(std::fs::File::open(&path)?);  // read-only
    /// let store = FileStore::from_fd(fd)?;
    /// assert_eq!(store.len(), 8192);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StoreError::Open`] if the descriptor is not a regular file or cannot be reopened.
    pub fn from_fd(fd: OwnedFd) -> Result<FileStore, StoreError> {
        let proc_path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let path = std::fs::read_link(&proc_path).unwrap_or_else(|_| proc_path.clone());
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        // SAFETY: F_GETFL on a descriptor we own; no memory is passed.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(open_err(io::Error::last_os_error()));
        }
        let file = if flags & libc::O_DIRECT != 0 {
            let accmode = flags & libc::O_ACCMODE;
            OpenOptions::new()
                .read(accmode != libc::O_WRONLY)
                .write(accmode != libc::O_RDONLY)
                .open(&proc_path)
                .map_err(open_err)?
        } else {
            File::from(fd)
        };
        let len = regular_len(&file, &path)?;
        Ok(FileStore::assemble(file, path, len))
    }

    /// The store over the open `file` of `len` bytes, opened at `path`.
    fn assemble(file: File, path: PathBuf, len: u64) -> FileStore {
        FileStore {
            direct: DirectIo::open(&file),
            file,
            path,
            len,
            data_run: ExtentCache::default(),
            hole_run: ExtentCache::default(),
            ahead: FileAhead::new(len),
        }
    }

    /// The path the store was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file (for advice such as `posix_fadvise`; do not resize it).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Forgets the runs `extent` remembered: for a caller that changed the file behind
    /// the store's back (wrote into its holes, punched or truncated it). The store also
    /// forgets them itself whenever it finds the file shrank.
    pub fn forget_extents(&self) {
        self.data_run.forget();
        self.hole_run.forget();
    }

    /// Writes zeros over the runs of `kind` inside `offset..offset + len`, which lies in
    /// the store and (`size`) in the file as it was just measured: the fallback of
    /// `allocate` (holes) and `punch_hole` (data).
    fn zero_runs(
        &self,
        offset: u64,
        len: u64,
        kind: ExtentKind,
        size: u64,
    ) -> Result<(), StoreError> {
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let extent = self.extent_within(at, Some(size))?;
            // `extent.len >= 1`, so the loop advances.
            let run_end = end.min(at + extent.len);
            if extent.kind == kind {
                self.write_zeros(at, run_end - at)?;
            }
            at = run_end;
        }
        Ok(())
    }

    /// Writes `len` zero bytes at `offset`, which lies in the store.
    /// No allocation (a static buffer): `allocate` may run inside a signal handler.
    fn write_zeros(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        static ZEROS: [u8; ZERO_CHUNK as usize] = [0; ZERO_CHUNK as usize];
        let zeros = &ZEROS[..];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(ZERO_CHUNK) as usize;
            // Unchecked: the hole run this lies in was found, or checked, inside the file's
            // size as the caller just measured it, which is all a check would say.
            self.write_unchecked(at, &zeros[..n])?;
            at += n as u64;
        }
        Ok(())
    }

    /// pwrite(2) of all of `buf` at `offset`, with no size check: callers have checked.
    /// A 2 MiB aligned write goes around the page cache (`file_direct`); only a buffered
    /// one counts toward the drop-behind, which has nothing to drop of a direct one.
    /// The range written is no longer hole: it is cut out of the remembered hole run
    /// (after the write, so that a query racing it either sees the data or has its answer
    /// dropped by the cut; see `extent_cache`). A failed write may have written part of
    /// the range: cut too.
    fn write_unchecked(&self, offset: u64, buf: &[u8]) -> Result<(), StoreError> {
        let written = if self.direct.write(&self.file, offset, buf) {
            Ok(())
        } else {
            self.ahead.note_write(buf.len() as u64);
            self.file.write_all_at(buf, offset)
        };
        self.hole_run.cut(offset, offset + buf.len() as u64);
        written.map_err(|e| StoreError::from_io("write", offset, e))
    }

    /// The file's size now (one `fstat`): less than `len` if another process shrank it.
    /// Allocation-free and signal-safe.
    fn size_now(&self) -> Result<u64, StoreError> {
        sys::size(&self.file).map_err(|e| StoreError::from_io("fstat", 0, e))
    }

    /// Checks that `offset..offset + len` lies within the pages of the file as it is now
    /// (the page holding the end counts, as the kernel's mmap serves it); returns the size.
    fn check_within(&self, offset: u64, len: u64) -> Result<u64, StoreError> {
        let size = self.size_now()?;
        if offset + len > size.next_multiple_of(crate::PAGE_SIZE as u64) {
            // A remembered run may reach past the new end: forget it.
            self.forget_extents();
            return Err(StoreError::BeyondEnd { offset, size });
        }
        Ok(size)
    }

    /// The answer when SEEK_DATA finds no data at or after `offset`, which is ambiguous:
    /// a hole up to the end of the file, or `offset` lies past an end that moved in.
    /// The hole found is remembered (`token`: taken before the query) like one ending at
    /// data: every use of it checks the size.
    fn trailing_hole(&self, offset: u64, token: Token) -> Result<Extent, StoreError> {
        let size = self.size_now()?;
        if offset >= size {
            self.forget_extents();
            return Err(StoreError::BeyondEnd { offset, size });
        }
        let end = size.min(self.len);
        self.hole_run.remember(token, offset, end);
        Ok(hole(end - offset))
    }

    /// A remembered hole run of `len` bytes from `offset`, checked against the file's
    /// size (`size` if the caller just measured it, else one `fstat`): the file may have
    /// shrunk under it since it was found, and an access past the end must fail.
    fn remembered_hole(
        &self,
        offset: u64,
        len: u64,
        size: Option<u64>,
    ) -> Result<Extent, StoreError> {
        let size = match size {
            Some(size) => size,
            None => self.size_now()?,
        };
        if offset >= size {
            self.forget_extents();
            return Err(StoreError::BeyondEnd { offset, size });
        }
        Ok(hole(len.min(size - offset)))
    }

    /// [`Store::extent`], with the file's size if the caller just measured it.
    fn extent_within(&self, offset: u64, size: Option<u64>) -> Result<Extent, StoreError> {
        check_range(offset, 1, self.len)?;
        if let Some(len) = self.data_run.run_at(offset) {
            return Ok(data(len));
        }
        if let Some(len) = self.hole_run.run_at(offset) {
            return self.remembered_hole(offset, len, size);
        }
        // Taken before the seeks: an answer older than a write in between is not kept.
        let (data_token, hole_token) = (self.data_run.token(), self.hole_run.token());
        let err = |e: io::Error| StoreError::from_io("extent query", offset, e);
        // If a punch_hole races the two seeks, either SEEK_HOLE still finds data at
        // `offset` (the run we report was true when it answered) or it returns `offset`
        // itself and we ask again.
        for _ in 0..SEEK_RETRIES {
            let run = match sys::lseek(&self.file, offset, libc::SEEK_DATA).map_err(err)? {
                None => self.trailing_hole(offset, hole_token)?,
                Some(next) if next > offset => {
                    let end = next.min(self.len);
                    self.hole_run.remember(hole_token, offset, end);
                    hole(end - offset)
                }
                Some(_) => match sys::lseek(&self.file, offset, libc::SEEK_HOLE).map_err(err)? {
                    Some(end) if end > offset => {
                        let end = end.min(self.len);
                        self.data_run.remember(data_token, offset, end);
                        data(end - offset)
                    }
                    _ => continue,
                },
            };
            return Ok(run);
        }
        // The extent kept changing between SEEK_DATA and SEEK_HOLE. EAGAIN, not a
        // message: no allocation, since this may run inside a signal handler.
        Err(err(io::Error::from_raw_os_error(libc::EAGAIN)))
    }

    /// A read that came back short: the file shrank. Within the page holding the new end,
    /// the bytes before it are read and the rest are zeros; past it, [`StoreError::BeyondEnd`].
    fn read_short(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let size = self.check_within(offset, buf.len() as u64)?;
        let (head, tail) =
            buf.split_at_mut(size.saturating_sub(offset).min(buf.len() as u64) as usize);
        self.file
            .read_exact_at(head, offset)
            .map_err(|e| StoreError::from_io("read", offset, e))?;
        tail.fill(0);
        Ok(())
    }
}

impl Store for FileStore {
    fn len(&self) -> u64 {
        self.len
    }

    fn extent(&self, offset: u64) -> Result<Extent, StoreError> {
        self.extent_within(offset, None)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        check_range(offset, buf.len() as u64, self.len)?;
        let sequential = self.ahead.note_read(offset, buf.len() as u64);
        // A sequential read is read ahead into the cache, unless its caller reads ahead.
        let cached_ahead = sequential && !self.ahead.caller_reads_ahead(buf.len() as u64);
        if self.direct.read(&self.file, offset, buf, cached_ahead) {
            return Ok(());
        }
        if buf.len() < READ_AROUND as usize {
            // Cached: done in one call. Not cached (EAGAIN, or short): a sequential read
            // is read ahead by the kernel and by `ahead`, off this path; a random one reads
            // the window around it in one I/O first (as the kernel's mmap reads around a
            // random miss), except under a budget, whose cache is kept small. Advice only:
            // a failure changes nothing but speed.
            if sys::pread_nowait(&self.file, buf, offset) == Some(buf.len()) {
                return Ok(());
            }
            if !sequential && self.ahead.kernel_reads_ahead() {
                let start = offset.saturating_sub(READ_AROUND / 2) & !(crate::PAGE_SIZE as u64 - 1);
                let _ = sys::fadvise(&self.file, start, READ_AROUND, libc::POSIX_FADV_WILLNEED);
            }
        }
        match self.file.read_exact_at(buf, offset) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => self.read_short(offset, buf),
            other => other.map_err(|e| StoreError::from_io("read", offset, e)),
        }
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), StoreError> {
        check_range(offset, buf.len() as u64, self.len)?;
        let size = self.check_within(offset, buf.len() as u64)?;
        // In the page holding the end of a shrunk file, only the bytes before the end are
        // written (as the kernel writes back that page): the file must not grow.
        let kept = size.saturating_sub(offset).min(buf.len() as u64) as usize;
        self.write_unchecked(offset, &buf[..kept])
    }

    fn allocate(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_range(offset, len, self.len)?;
        if len == 0 {
            return Ok(());
        }
        // One size check for the whole range: allocating must never grow a file that
        // shrank, and the remembered hole runs are checked against it.
        let size = self.check_within(offset, len)?;
        // Zeros over the holes only: data in the range keeps its bytes.
        self.zero_runs(offset, len, ExtentKind::Hole, size)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        check_range(offset, len, self.len)?;
        if len == 0 {
            return Ok(());
        }
        self.data_run.forget();
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match sys::fallocate(&self.file, mode, offset, len) {
            Ok(()) => Ok(()),
            Err(e) if sys::is_unsupported(&e) => {
                let size = self.size_now()?;
                self.zero_runs(offset, len, ExtentKind::Data, size)
            }
            Err(e) => Err(StoreError::from_io("punch hole", offset, e)),
        }
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.file
            .sync_data()
            .map_err(|e| StoreError::from_io("sync", 0, e))
    }

    fn allocated_bytes(&self) -> Option<u64> {
        self.file.metadata().ok().map(|m| m.blocks() * 512)
    }

    fn current_len(&self) -> Result<u64, StoreError> {
        self.size_now()
    }

    /// Starts the read-ahead thread; under a budget, bounds the file's page cache; for a
    /// mapping that reads its 2 MiB runs ahead itself, asks no window ahead of those and
    /// reads them around the cache (see `file_ahead`, `file_direct`).
    fn serve_mapping(&self, serving: Serving) {
        self.ahead.start(&self.file);
        if let Some(budget) = serving.budget {
            self.ahead.bound(&self.file, budget);
        }
        if serving.reads_ahead {
            self.ahead.leave_huge_runs();
        }
    }

    /// `extent`, `read_at`, `write_at` and `allocate` are plain syscalls (lseek, pread,
    /// pwrite, fallocate) with no allocation and no lock; their read-ahead bookkeeping is
    /// atomics and a futex wake.
    fn is_signal_safe(&self) -> bool {
        true
    }
}

/// A hole run of `len` bytes.
fn hole(len: u64) -> Extent {
    Extent {
        kind: ExtentKind::Hole,
        len,
    }
}

/// A data run of `len` bytes.
fn data(len: u64) -> Extent {
    Extent {
        kind: ExtentKind::Data,
        len,
    }
}

/// Turns an error of opening `path` into a [`StoreError`]; `creating` tells whether the
/// file was to be created (then ENOENT means a missing directory, not a missing file).
fn open_error(path: &Path, source: io::Error, creating: bool) -> StoreError {
    let path = path.to_path_buf();
    match source.raw_os_error() {
        Some(libc::ENOENT) if creating => {
            let source = io::Error::new(
                io::ErrorKind::NotFound,
                "its directory does not exist: create the parent directory first",
            );
            StoreError::Open { path, source }
        }
        Some(libc::ENOENT) => StoreError::NotFound { path },
        Some(libc::EACCES | libc::EPERM | libc::EROFS | libc::ETXTBSY) => {
            StoreError::NotWritable { path, source }
        }
        _ => StoreError::Open { path, source },
    }
}

/// The length of `file`, opened at `path`, or an error if it is not a regular file.
fn regular_len(file: &File, path: &Path) -> Result<u64, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let meta = file.metadata().map_err(open_err)?;
    if !meta.is_file() {
        return Err(open_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a store must be a regular file)",
        )));
    }
    Ok(meta.len())
}

/// The two system calls `FileStore` makes through libc, their results decoded here once.
mod sys {
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;

    /// `offset` as an `off_t`, or an InvalidInput error if it does not fit.
    fn off_t(offset: u64) -> io::Result<libc::off_t> {
        libc::off_t::try_from(offset).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "offset does not fit in off_t")
        })
    }

    /// `lseek(fd, offset, whence)` for SEEK_DATA or SEEK_HOLE. `Ok(None)` for ENXIO: no
    /// data (SEEK_DATA) at or after `offset`, or `offset` is at or past the end of file.
    pub(super) fn lseek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
        let offset = off_t(offset)?;
        // SAFETY: lseek takes no pointers; the fd belongs to `file`, which is borrowed for
        // the whole call, so it stays open. Moving the file position is harmless: every
        // read and write of the store is positional (pread/pwrite).
        let ret = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(None),
                _ => Err(e),
            };
        }
        // `ret >= 0` was checked above, so the cast keeps its value.
        Ok(Some(ret as u64))
    }

    /// `fallocate(fd, mode, offset, len)`, retried on EINTR.
    pub(super) fn fallocate(
        file: &File,
        mode: libc::c_int,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        let (offset, len) = (off_t(offset)?, off_t(len)?);
        loop {
            // SAFETY: fallocate takes no pointers; the fd belongs to `file`, which is
            // borrowed for the whole call, so it stays open.
            let ret = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) };
            if ret == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// The file's size, from fstat(2) (no allocation: callable in a signal handler).
    pub(super) fn size(file: &File) -> io::Result<u64> {
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat fills one `struct stat`, which `stat` has room for; the fd belongs
        // to `file`, borrowed for the whole call.
        let ret = unsafe { libc::fstat(file.as_raw_fd(), stat.as_mut_ptr()) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fstat returned 0, so it filled the struct.
        let stat = unsafe { stat.assume_init() };
        // A regular file's size is never negative.
        Ok(u64::try_from(stat.st_size).unwrap_or(0))
    }

    /// Whether `e` says the file system does not support the fallocate mode.
    /// preadv2(2) with RWF_NOWAIT: reads only what is in the page cache. `None` if nothing
    /// could be read without waiting (or on any error: the caller then reads normally).
    pub(super) fn pread_nowait(file: &File, buf: &mut [u8], offset: u64) -> Option<usize> {
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: one iovec describing `buf`, writable for its length, for the call's duration.
        let ret = unsafe {
            libc::preadv2(
                file.as_raw_fd(),
                &iov,
                1,
                offset as libc::off_t,
                libc::RWF_NOWAIT,
            )
        };
        usize::try_from(ret).ok()
    }

    /// posix_fadvise(2); it returns the error number instead of setting errno.
    pub(super) fn fadvise(
        file: &File,
        offset: u64,
        len: u64,
        advice: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: posix_fadvise takes an open fd and integers; it touches no memory of ours.
        let ret = unsafe {
            libc::posix_fadvise(
                file.as_raw_fd(),
                offset as libc::off_t,
                len as libc::off_t,
                advice,
            )
        };
        match ret {
            0 => Ok(()),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }

    pub(super) fn is_unsupported(e: &io::Error) -> bool {
        e.raw_os_error() == Some(libc::EOPNOTSUPP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const SIZE: u64 = 8 * MIB;

    /// A fresh sparse store of `SIZE` bytes in a temporary directory.
    fn sparse() -> (tempfile::TempDir, FileStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::create(dir.path().join("store.img"), SIZE).expect("create");
        (dir, store)
    }

    #[test]
    fn create_makes_one_hole() {
        let (_dir, store) = sparse();
        assert_eq!(store.len(), SIZE);
        assert_eq!(store.file().metadata().expect("stat").len(), SIZE);
        assert_eq!(store.extent(0).expect("extent"), hole(SIZE));
        assert_eq!(store.extent(1000).expect("extent"), hole(SIZE - 1000));
        assert_eq!(store.allocated_bytes(), Some(0));
    }

    #[test]
    fn create_truncates_an_existing_file() {
        let (dir, store) = sparse();
        store.write_at(0, b"old").expect("write");
        let store = FileStore::create(dir.path().join("store.img"), 4096).expect("create");
        assert_eq!(store.extent(0).expect("extent"), hole(4096));
    }

    #[test]
    fn open_reads_the_length() {
        let (_dir, created) = sparse();
        created.write_at(5, b"abc").expect("write");
        let store = FileStore::open(created.path()).expect("open");
        assert_eq!(store.len(), SIZE);
        assert_eq!(store.path(), created.path());
        let mut buf = [0u8; 3];
        store.read_at(5, &mut buf).expect("read");
        assert_eq!(&buf, b"abc");
    }

    #[test]
    fn open_missing_is_not_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing.img");
        match FileStore::open(&path) {
            Err(StoreError::NotFound { path: p }) => assert_eq!(p, path),
            other => panic!("expected NotFound, got {other:?}"),
        }
    }

    #[test]
    fn open_directory_is_open_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            FileStore::open(dir.path()),
            Err(StoreError::Open { .. })
        ));
        assert!(matches!(
            FileStore::create(dir.path(), 4096),
            Err(StoreError::Open { .. })
        ));
    }

    #[test]
    fn open_device_is_invalid_input() {
        match FileStore::open("/dev/null") {
            Err(StoreError::Open { source, .. }) => {
                assert_eq!(source.kind(), io::ErrorKind::InvalidInput)
            }
            other => panic!("expected Open(InvalidInput), got {other:?}"),
        }
    }

    #[test]
    fn create_in_missing_directory_is_open_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("no/such/dir/store.img");
        match FileStore::create(&path, 4096) {
            Err(e @ StoreError::Open { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
                assert!(msg.contains("directory does not exist"), "{msg}");
            }
            other => panic!("expected Open, got {other:?}"),
        }
    }

    #[test]
    fn write_makes_hole_data_hole() {
        let (_dir, store) = sparse();
        let at = MIB + 100;
        store.write_at(at, b"hello").expect("write");

        let head = store.extent(0).expect("extent");
        assert_eq!(head.kind, ExtentKind::Hole);
        assert!(
            head.len > 0 && head.len <= at && head.len % 4096 == 0,
            "{head:?}"
        );

        let mid = store.extent(head.len).expect("extent");
        assert_eq!(mid.kind, ExtentKind::Data);
        assert!(mid.len >= 4096 && mid.len % 4096 == 0, "{mid:?}");
        let data_end = head.len + mid.len;
        assert!(data_end >= at + 5, "{mid:?}");
        assert_eq!(store.extent(at).expect("extent"), data(data_end - at));

        if data_end < SIZE {
            let tail = store.extent(data_end).expect("extent");
            assert_eq!(tail, hole(SIZE - data_end));
        }

        let mut buf = [0xffu8; 7];
        store.read_at(at - 1, &mut buf).expect("read");
        assert_eq!(&buf, b"\0hello\0");
        store.sync().expect("sync");
    }

    #[test]
    fn allocate_then_punch_hole() {
        let (_dir, store) = sparse();
        store.allocate(MIB, MIB).expect("allocate");
        assert!(store.allocated_bytes().expect("blocks") >= MIB);
        let mut buf = vec![0xffu8; MIB as usize];
        store.read_at(MIB, &mut buf).expect("read");
        assert!(buf.iter().all(|&b| b == 0));
        // Unwritten extents may be reported as holes (see the module doc); written, data.
        store.write_at(MIB, b"x").expect("write");
        assert_eq!(store.extent(MIB).expect("extent").kind, ExtentKind::Data);
        assert_eq!(store.file().metadata().expect("stat").len(), SIZE);

        store.punch_hole(MIB, MIB).expect("punch");
        assert_eq!(store.allocated_bytes(), Some(0));
        assert_eq!(store.extent(0).expect("extent"), hole(SIZE));
        store.read_at(MIB, &mut buf).expect("read");
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(store.file().metadata().expect("stat").len(), SIZE);
    }

    #[test]
    fn zero_runs_fallback_keeps_meaning() {
        let (_dir, store) = sparse();
        store.write_at(4096, b"keep").expect("write");
        store
            .zero_runs(0, 3 * 4096, ExtentKind::Hole, SIZE)
            .expect("zero holes");
        assert_eq!(store.extent(0).expect("extent").kind, ExtentKind::Data);
        assert!(store.extent(0).expect("extent").len >= 3 * 4096);
        let mut buf = [0u8; 4];
        store.read_at(4096, &mut buf).expect("read");
        assert_eq!(&buf, b"keep");

        store
            .zero_runs(0, 3 * 4096, ExtentKind::Data, SIZE)
            .expect("zero data");
        store.read_at(4096, &mut buf).expect("read");
        assert_eq!(buf, [0; 4]);
    }

    /// A sparse store with data in page 10 only: pages 0..10 are a hole that ends at
    /// data, which `extent(0)` remembers.
    fn hole_then_data() -> (tempfile::TempDir, FileStore) {
        let (dir, store) = sparse();
        store.write_at(10 * 4096, b"d").expect("write");
        assert_eq!(store.extent(0).expect("extent"), hole(10 * 4096));
        (dir, store)
    }

    #[test]
    fn a_remembered_hole_run_is_cut_by_allocation_and_writes() {
        let (_dir, store) = hole_then_data();
        store.allocate(4096, 4096).expect("allocate");
        assert_eq!(store.extent(4096).expect("extent").kind, ExtentKind::Data);
        assert_eq!(store.extent(2 * 4096).expect("extent"), hole(8 * 4096));
        store.write_at(5 * 4096, b"w").expect("write");
        assert_eq!(
            store.extent(5 * 4096).expect("extent").kind,
            ExtentKind::Data
        );
        let mut byte = [0u8; 1];
        store.read_at(5 * 4096, &mut byte).expect("read");
        assert_eq!(&byte, b"w");
    }

    #[test]
    fn a_remembered_hole_run_past_a_new_end_is_beyond_end_and_never_grown_back() {
        let (_dir, store) = hole_then_data();
        let other = OpenOptions::new()
            .write(true)
            .open(store.path())
            .expect("open");
        other.set_len(2 * 4096).expect("shrink");
        assert!(matches!(
            store.extent(5 * 4096),
            Err(StoreError::BeyondEnd { .. })
        ));
        assert!(matches!(
            store.allocate(6 * 4096, 4096),
            Err(StoreError::BeyondEnd { .. })
        ));
        assert_eq!(store.file().metadata().expect("stat").len(), 2 * 4096);
        // Extended back: the pages are holes again, and allocation works.
        other.set_len(SIZE).expect("extend");
        assert_eq!(
            store.extent(5 * 4096).expect("extent").kind,
            ExtentKind::Hole
        );
        store.allocate(6 * 4096, 4096).expect("allocate");
        assert_eq!(
            store.extent(6 * 4096).expect("extent").kind,
            ExtentKind::Data
        );
        assert_eq!(store.file().metadata().expect("stat").len(), SIZE);
    }

    fn oor<T>(r: Result<T, StoreError>) -> bool {
        matches!(r, Err(StoreError::OutOfRange { .. }))
    }

    #[test]
    fn out_of_range_is_an_error() {
        let (_dir, store) = sparse();
        let mut buf = [0u8; 2];
        assert!(oor(store.extent(SIZE)));
        assert!(oor(store.extent(u64::MAX)));
        assert!(oor(store.read_at(SIZE - 1, &mut buf)));
        assert!(oor(store.write_at(SIZE - 1, &buf)));
        assert!(oor(store.write_at(u64::MAX, &buf)));
        assert!(oor(store.allocate(SIZE, 1)));
        assert!(oor(store.punch_hole(u64::MAX, 2)));
        assert!(store.allocate(SIZE, 0).is_ok());
        assert!(store.punch_hole(0, 0).is_ok());
    }

    /// A random 2 MiB read of a range the page cache does not hold goes around the cache
    /// (`file_direct`): the right bytes, and no page of the range cached after it. Then a
    /// page of it written and not synced (cached, dirty) is read back as written.
    #[test]
    fn a_random_2_mib_read_of_an_uncached_range_leaves_the_page_cache_empty() {
        use crate::store::file_direct::cache_stat;
        let (_dir, store) = sparse();
        let huge = crate::HUGE_PAGE_SIZE;
        let at = 4 * MIB;
        let bytes: Vec<u8> = (0..huge).map(|i| (i / 4096 * 7 + i % 251) as u8).collect();
        store.write_at(at, &bytes).expect("write");
        store.sync().expect("sync");
        sys::fadvise(&store.file, 0, SIZE, libc::POSIX_FADV_DONTNEED).expect("drop");
        let cached = || {
            cache_stat(&store.file, at, huge as u64)
                .expect("cachestat")
                .cached
        };
        if !store.direct.available() || cached() != 0 {
            eprintln!("skipped: no O_DIRECT here, or the page cache cannot be dropped");
            return;
        }
        let mut heap = Vec::new();
        let buf = aligned(&mut heap, |_| 0);
        store.read_at(at, buf).expect("read");
        assert!(buf == &bytes[..], "the direct read read other bytes");
        assert_eq!(cached(), 0, "the read filled the page cache");
        store
            .write_at(at + 8192, &[0xee; 4096])
            .expect("write a page");
        store.read_at(at, buf).expect("read again");
        assert!(
            buf[8192..12288].iter().all(|&b| b == 0xee),
            "the unsynced write is lost"
        );
        assert!(buf[..8192] == bytes[..8192] && buf[12288..] == bytes[12288..]);
    }

    /// A run of 2 MiB reads in order goes through the page cache (read ahead into it),
    /// unless the store's mapping reads ahead itself (`Serving::reads_ahead`): then every
    /// read of the run goes around the cache, which holds none of the file after it, and
    /// no window is asked ahead. Without the rule the run fills the cache (fails at the
    /// second read, which continues the first).
    #[test]
    fn a_run_of_2_mib_reads_its_caller_reads_ahead_goes_around_the_cache() {
        use crate::store::file_direct::cache_stat;
        let huge = crate::HUGE_PAGE_SIZE as u64;
        for reads_ahead in [false, true] {
            let (_dir, store) = sparse();
            let byte = |at: u64| (at / 4096 * 7 + at % 251) as u8;
            let bytes: Vec<u8> = (0..SIZE).map(byte).collect();
            store.write_at(0, &bytes).expect("write");
            store.sync().expect("sync");
            sys::fadvise(&store.file, 0, SIZE, libc::POSIX_FADV_DONTNEED).expect("drop");
            let cached = || cache_stat(&store.file, 0, SIZE).expect("cachestat").cached;
            if !store.direct.available() || cached() != 0 {
                eprintln!("skipped: no O_DIRECT here, or the page cache cannot be dropped");
                return;
            }
            store.serve_mapping(Serving {
                budget: None,
                reads_ahead,
            });
            let mut heap = Vec::new();
            let buf = aligned(&mut heap, |_| 0);
            for at in (0..SIZE).step_by(huge as usize) {
                store.read_at(at, buf).expect("read");
                assert!(
                    buf == &bytes[at as usize..(at + huge) as usize],
                    "bytes at {at}"
                );
            }
            if reads_ahead {
                assert_eq!(
                    cached(),
                    0,
                    "a run its caller reads ahead filled the page cache"
                );
            } else {
                assert!(
                    cached() > 0,
                    "a run nobody else reads ahead went around the cache"
                );
            }
        }
    }

    /// A page-aligned 2 MiB buffer, filled by `byte` (index a page-aligned offset).
    fn aligned(heap: &mut Vec<u8>, byte: impl Fn(usize) -> u8) -> &mut [u8] {
        let (page, huge) = (crate::PAGE_SIZE, crate::HUGE_PAGE_SIZE);
        *heap = vec![0u8; huge + page];
        let skew = (page - heap.as_ptr() as usize % page) % page;
        let buf = &mut heap[skew..skew + huge];
        buf.iter_mut().enumerate().for_each(|(i, b)| *b = byte(i));
        buf
    }

    /// A 2 MiB aligned write (a writeback run) goes around the page cache (`file_direct`):
    /// the range has no cached page after it, even where a dirty cached page of an earlier
    /// buffered write was, and every read after it, cached or not, and the file after a
    /// reopen, hold the new bytes.
    #[test]
    fn a_2_mib_aligned_write_leaves_no_page_of_it_cached() {
        use crate::store::file_direct::cache_stat;
        let (dir, store) = sparse();
        let huge = crate::HUGE_PAGE_SIZE;
        let at = 4 * MIB;
        let cached = || {
            cache_stat(&store.file, at, huge as u64)
                .expect("cachestat")
                .cached
        };
        // Where the file system is the page cache (tmpfs), nothing goes around it.
        store.write_at(at, &[0x11; 4096]).expect("write a page");
        store.sync().expect("sync");
        sys::fadvise(&store.file, 0, SIZE, libc::POSIX_FADV_DONTNEED).expect("drop");
        if !store.direct.writes_available() || cached() != 0 {
            eprintln!("skipped: no O_DIRECT here, or the page cache cannot be dropped");
            return;
        }
        store
            .write_at(at + 8192, &[0x11; 4096])
            .expect("write a page");
        assert_eq!(cached(), 1, "the buffered page write is cached");
        let mut heap = Vec::new();
        let new = |i: usize| (i / 4096 * 13 + i % 241) as u8;
        let buf = aligned(&mut heap, new);
        store.write_at(at, buf).expect("write 2 MiB");
        assert_eq!(cached(), 0, "the write filled the page cache");
        let mut page = [0u8; 4096];
        for (n, chunk) in buf.chunks(4096).enumerate() {
            store
                .read_at(at + (n * 4096) as u64, &mut page)
                .expect("read");
            assert!(page == chunk, "page {n} reads other bytes");
        }
        store.sync().expect("sync");
        drop(store);
        let bytes = std::fs::read(dir.path().join("store.img")).expect("read the file");
        let at = at as usize;
        assert!(bytes[at..at + huge] == *buf, "the file holds other bytes");
    }

    /// A 2 MiB aligned write over a range whose pages are dirty in the cache (4 KiB write
    /// faults allocated each by writing zeros there) stays buffered: it overwrites them in
    /// the cache, where a direct write would first write all of them back, writing the
    /// range twice. The bytes are the new ones either way.
    #[test]
    fn a_2_mib_write_over_dirty_cached_pages_overwrites_them_in_the_cache() {
        use crate::store::file_direct::cache_stat;
        let (dir, store) = sparse();
        let huge = crate::HUGE_PAGE_SIZE as u64;
        let at = 2 * MIB;
        if !store.direct.writes_available() {
            eprintln!("skipped: no O_DIRECT here");
            return;
        }
        store.allocate(at, huge).expect("allocate");
        let stat = || cache_stat(&store.file, at, huge).expect("cachestat");
        assert_eq!(stat().unwritten, 512, "the zeros are dirty in the cache");
        let mut heap = Vec::new();
        let buf = aligned(&mut heap, |i| (i % 199) as u8);
        store.write_at(at, buf).expect("write 2 MiB");
        assert_eq!(stat().cached, 512, "the write went around the cache");
        store.sync().expect("sync");
        drop(store);
        let bytes = std::fs::read(dir.path().join("store.img")).expect("read the file");
        let at = at as usize;
        assert!(
            bytes[at..at + huge as usize] == *buf,
            "the file holds other bytes"
        );
    }

    /// A store over a read-only descriptor writes nothing, direct or not: its O_DIRECT
    /// descriptor is opened read-only too, though the file's permissions allow writing.
    #[test]
    fn a_store_over_a_read_only_descriptor_does_not_write_directly() {
        let (dir, store) = sparse();
        drop(store);
        let path = dir.path().join("store.img");
        let file = File::open(&path).expect("open read-only");
        let store = FileStore::from_fd(file.into()).expect("from_fd");
        let mut heap = Vec::new();
        let buf = aligned(&mut heap, |_| 0x5a);
        assert!(
            store.write_at(4 * MIB, buf).is_err(),
            "a read-only store wrote"
        );
        let bytes = std::fs::read(&path).expect("read the file");
        assert!(bytes.iter().all(|&b| b == 0), "the file changed");
    }
}
