//! `NbdStore` against real servers: qemu-nbd (qcow2 and raw images) and nbdkit (memory and
//! file plugins), each started on a Unix socket in a temporary directory and killed by PID
//! on drop. Checked: extents equal `nbdinfo --map`; a sparse read of a hole-only image
//! sends no READ; bytes after flush equal a model (`qemu-img compare`); a punched page is a
//! hole on the server; a killed server gives SIGBUS at the access, EFAULT to the kernel, a
//! flush error, no hang, and a reconnect once it is back; a stopped server (SIGSTOP) hits
//! the timeout; a read-only export refuses a writable open.
//!
//! Without qemu-nbd, qemu-img, nbdkit or nbdinfo the tests skip loudly, except under
//! `CI=true`, where that is a failure.

mod common;

#[cfg(not(feature = "nbd"))]
#[test]
fn nbd_tests_need_the_nbd_feature() {
    assert!(
        !common::in_ci(),
        "tests/nbd.rs was built without the `nbd` feature under CI=true"
    );
    eprintln!("SKIPPED tests/nbd.rs: built without the `nbd` feature");
}

#[cfg(feature = "nbd")]
mod nbd {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::fs::FileExt;
    use std::os::unix::net::UnixStream;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::common::{self, PAGE, XorShift, child_case, peek, say};
    use udax::{Error, ExtentKind, Mapping, NbdConfig, NbdStore, Options, Store, StoreError};

    /// Whether every tool the tests start is installed; skips loudly (fails under CI).
    fn require_tools() -> bool {
        let missing: Vec<&str> = ["qemu-nbd", "qemu-img", "nbdkit", "nbdinfo"]
            .into_iter()
            .filter(|tool| {
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()
                    .map_or(true, |s| !s.success())
            })
            .collect();
        if missing.is_empty() {
            return true;
        }
        let why = format!(
            "{} not installed (apt: qemu-utils nbdkit libnbd-bin)",
            missing.join(", ")
        );
        assert!(
            !common::in_ci(),
            "NBD servers are missing under CI=true: {why}"
        );
        eprintln!(
            "SKIPPED {}: {why}; this test did not run",
            std::thread::current().name().unwrap_or("?")
        );
        false
    }

    /// A server process on a Unix socket; killed (SIGKILL, by PID) and reaped on drop.
    struct Server {
        child: Child,
        socket: PathBuf,
    }

    impl Server {
        /// Starts `program args...` and waits (at most 10 s) until its socket accepts.
        fn start(program: &str, args: &[&str], socket: &Path) -> Server {
            let _ = std::fs::remove_file(socket);
            let child = Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                // Quiet: the readiness probe's connect-and-close makes servers complain.
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {program}: {e}"));
            let mut server = Server {
                child,
                socket: socket.to_path_buf(),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while UnixStream::connect(socket).is_err() {
                if let Ok(Some(status)) = server.child.try_wait() {
                    panic!("{program} {args:?} exited at start: {status}");
                }
                assert!(
                    Instant::now() < deadline,
                    "{program} did not listen in 10 s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            server
        }

        /// qemu-nbd serving `image` (format `qcow2` or `raw`) writable, to 16 clients,
        /// punching holes on TRIM and WRITE_ZEROES; `extra` adds flags (e.g. `-r`).
        fn qemu(format: &str, image: &Path, extra: &[&str]) -> Server {
            let socket = image.with_extension("sock");
            let socket_arg = socket.to_str().expect("utf-8 path");
            let mut args = vec!["-f", format, "-t", "-e", "16", "--discard=unmap"];
            args.extend_from_slice(&["--cache=writeback", "-k", socket_arg, "-x", "exp"]);
            args.extend_from_slice(extra);
            args.push(image.to_str().expect("utf-8 path"));
            Server::start("qemu-nbd", &args, &socket)
        }

        /// nbdkit with `plugin_args` (e.g. `["memory", "8M"]`), in the foreground.
        fn nbdkit(dir: &Path, plugin_args: &[&str]) -> Server {
            let socket = dir.join("nbdkit.sock");
            let mut args = vec![
                "-f",
                "--exit-with-parent",
                "-U",
                socket.to_str().expect("utf-8"),
            ];
            args.extend_from_slice(plugin_args);
            Server::start("nbdkit", &args, &socket)
        }

        fn uri(&self) -> String {
            format!("nbd+unix:///exp?socket={}", self.socket.display())
        }

        fn signal(&self, signal: libc::c_int) {
            // SAFETY: kill(2) on our own child's PID, which it still is (not yet reaped).
            let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
            assert_eq!(rc, 0, "kill({}, {signal})", self.child.id());
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Waits (at most 10 s) until nothing listens on `socket` any more.
    fn wait_until_gone(socket: &Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(socket).is_ok() {
            assert!(
                Instant::now() < deadline,
                "the server still listens after 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Pages that hold data in [`write_raw`]'s image: a run at the start, one scattered
    /// run, a run across a 2 MiB boundary, and the last page.
    const DATA_PAGES: [(usize, usize); 4] = [(0, 3), (300, 17), (500, 30), (2047, 1)];
    /// Pages of the images (8 MiB).
    const PAGES: usize = 2048;

    /// The byte written at `offset` of a data page.
    fn pattern(offset: usize) -> u8 {
        (offset / PAGE % 251) as u8 + 1
    }

    /// Writes a sparse raw image of [`PAGES`] pages with data at [`DATA_PAGES`].
    fn write_raw(path: &Path) {
        let file = std::fs::File::create(path).expect("creating the raw image");
        file.set_len((PAGES * PAGE) as u64)
            .expect("sizing the raw image");
        for (first, count) in DATA_PAGES {
            for page in first..first + count {
                let bytes = vec![pattern(page * PAGE); PAGE];
                file.write_all_at(&bytes, (page * PAGE) as u64)
                    .expect("writing data");
            }
        }
    }

    /// A temporary directory holding `image.raw` from [`write_raw`].
    fn raw_image() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = dir.path().join("image.raw");
        write_raw(&raw);
        (dir, raw)
    }

    /// A store on `server` whose requests time out after `timeout`.
    fn open_with_timeout(uri: &str, timeout: Duration) -> NbdStore {
        let config = NbdConfig {
            timeout,
            ..NbdConfig::default()
        };
        NbdStore::open_with(uri, &config).expect("NbdStore::open_with")
    }

    /// `qemu-img OP args...`, which must succeed.
    fn qemu_img(args: &[&str]) {
        let out = Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img");
        assert!(
            out.status.success(),
            "qemu-img {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The raw image of [`write_raw`] converted to qcow2 (holes stay unallocated).
    fn write_qcow2(dir: &Path) -> PathBuf {
        let raw = dir.join("seed.raw");
        write_raw(&raw);
        let qcow2 = dir.join("image.qcow2");
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            qcow2.to_str().unwrap(),
        ]);
        qcow2
    }

    /// The layout as (offset, length, is_hole), adjacent runs of one kind merged.
    type Layout = Vec<(u64, u64, bool)>;

    fn merge(layout: &mut Layout, offset: u64, length: u64, hole: bool) {
        match layout.last_mut() {
            Some(last) if last.2 == hole && last.0 + last.1 == offset => last.1 += length,
            _ => layout.push((offset, length, hole)),
        }
    }

    /// `nbdinfo --map`: a run is a hole when it reads as zeros (type bit 2).
    fn nbdinfo_map(uri: &str) -> Layout {
        let out = Command::new("nbdinfo")
            .args(["--map", uri])
            .output()
            .expect("nbdinfo");
        assert!(
            out.status.success(),
            "nbdinfo --map: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut layout = Layout::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [offset, length, kind, ..] = fields[..] else {
                continue;
            };
            let parse = |s: &str| s.parse::<u64>().expect("a number in nbdinfo --map");
            merge(
                &mut layout,
                parse(offset),
                parse(length),
                parse(kind) & 2 != 0,
            );
        }
        layout
    }

    /// The store's own layout, walking `extent` from 0 to the end.
    fn store_map(store: &dyn Store) -> Layout {
        let mut layout = Layout::new();
        let mut offset = 0;
        while offset < store.len() {
            let extent = store.extent(offset).expect("extent");
            merge(
                &mut layout,
                offset,
                extent.len,
                extent.kind == ExtentKind::Hole,
            );
            offset += extent.len;
        }
        layout
    }

    fn open(uri: &str) -> NbdStore {
        NbdStore::open(uri).unwrap_or_else(|e| panic!("NbdStore::open({uri}): {e}"))
    }

    fn map(store: &Arc<NbdStore>) -> Mapping {
        let store: Arc<dyn Store> = store.clone();
        Mapping::new(store, Options::default()).expect("Mapping::new over NBD")
    }

    /// Checks `store_map` against `nbdinfo --map` on `server`, and that the walk took one
    /// BLOCK_STATUS per 64 MiB window at most (one here).
    fn assert_extents_match(server: &Server, what: &str) {
        let store = open(&server.uri());
        let ours = store_map(&store);
        assert_eq!(
            ours,
            nbdinfo_map(&server.uri()),
            "{what}: extents against nbdinfo --map"
        );
        assert!(
            ours.iter().any(|r| r.2) && ours.iter().any(|r| !r.2),
            "{what}: {ours:?}"
        );
        assert_eq!(
            store.stats().block_status,
            1,
            "{what}: one window answers the walk"
        );
    }

    #[test]
    fn extents_equal_nbdinfo_map_on_qemu_nbd_and_nbdkit() {
        if !require_tools() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let qcow2 = write_qcow2(dir.path());
        assert_extents_match(&Server::qemu("qcow2", &qcow2, &[]), "qemu-nbd qcow2");
        let raw = dir.path().join("image.raw");
        write_raw(&raw);
        assert_extents_match(&Server::qemu("raw", &raw, &[]), "qemu-nbd raw");
        let file = Server::nbdkit(dir.path(), &["file", raw.to_str().unwrap()]);
        assert_extents_match(&file, "nbdkit file");
        drop(file);
        let memory = Server::nbdkit(dir.path(), &["memory", "8M"]);
        let store = open(&memory.uri());
        for (first, count) in DATA_PAGES {
            let bytes = vec![7u8; count * PAGE];
            store
                .write_at((first * PAGE) as u64, &bytes)
                .expect("write_at");
        }
        assert_extents_match(&memory, "nbdkit memory");
    }

    #[test]
    fn a_sparse_read_of_a_hole_only_image_sends_no_read() {
        if !require_tools() || !common::require_uffd() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("holes.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            image.to_str().unwrap(),
            "64M",
        ]);
        let server = Server::qemu("qcow2", &image, &[]);
        let store = Arc::new(open(&server.uri()));
        let mapping = map(&store);
        let mut byte = [1u8];
        for page in 0..mapping.len() / PAGE {
            mapping.read_at(page * PAGE, &mut byte).expect("read_at");
            assert_eq!(byte, [0]);
        }
        let (stats, nbd) = (mapping.stats(), store.stats());
        // The default granularity: one huge zero fault per 2 MiB.
        let ranges = mapping.len() / udax::HUGE_PAGE_SIZE;
        assert_eq!(
            (stats.zero_faults as usize, stats.huge_faults as usize),
            (ranges, ranges),
            "{stats:?}"
        );
        assert_eq!(
            (nbd.reads, nbd.bytes_read),
            (0, 0),
            "no READ for holes: {nbd:?}"
        );
        assert_eq!(nbd.block_status, 1, "one 64 MiB window: {nbd:?}");
        mapping.close().expect("close");
    }

    #[test]
    fn bytes_after_flush_equal_the_model_per_qemu_img_compare() {
        if !require_tools() || !common::require_uffd() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let qcow2 = write_qcow2(dir.path());
        let model = dir.path().join("seed.raw"); // the same bytes, as raw
        let model_file = std::fs::OpenOptions::new()
            .write(true)
            .open(&model)
            .expect("model");
        let server = Server::qemu("qcow2", &qcow2, &[]);
        let store = Arc::new(open(&server.uri()));
        let mapping = map(&store);
        let mut rng = XorShift::new(13);
        for round in 0..3u8 {
            for _ in 0..200 {
                let offset = rng.below((PAGES * PAGE - 64) as u64) as usize;
                let bytes = [round
                    .wrapping_mul(31)
                    .wrapping_add(rng.below(200) as u8 + 1); 64];
                mapping.write_at(offset, &bytes).expect("write_at");
                model_file
                    .write_all_at(&bytes, offset as u64)
                    .expect("model write");
            }
            mapping.flush().expect("flush over NBD");
        }
        let nbd = store.stats();
        assert!(nbd.writes > 0 && nbd.flushes >= 3, "{nbd:?}");
        mapping.close().expect("close");
        drop(store);
        drop(server);
        qemu_img(&[
            "compare",
            "-q",
            "-f",
            "raw",
            "-F",
            "qcow2",
            model.to_str().unwrap(),
            qcow2.to_str().unwrap(),
        ]);
    }

    /// The range punched: 64 KiB (a qcow2 cluster, two nbdkit memory pages).
    const PUNCH: usize = 64 << 10;

    #[test]
    fn a_punched_range_is_a_hole_on_the_server() {
        if !require_tools() {
            return;
        }
        let (dir, raw) = raw_image();
        let servers = [
            Server::qemu("raw", &raw, &[]),
            Server::nbdkit(dir.path(), &["memory", "8M"]),
        ];
        for server in &servers {
            let store = open(&server.uri());
            // 64 KiB: nbdkit's memory plugin frees whole 32 KiB pages only.
            let (at, len) = (PUNCH as u64, PUNCH as u64);
            store.write_at(0, &vec![9u8; 3 * PUNCH]).expect("write_at");
            assert_eq!(store.extent(at).expect("extent").kind, ExtentKind::Data);
            store.punch_hole(at, len).expect("punch_hole");
            store.sync().expect("sync");
            let hole = (at, len, true);
            assert!(
                nbdinfo_map(&server.uri()).contains(&hole),
                "{}: {:?}",
                server.uri(),
                nbdinfo_map(&server.uri())
            );
            let extent = store.extent(at).expect("extent after the punch");
            assert_eq!((extent.kind, extent.len), (ExtentKind::Hole, len));
            let mut page = vec![1u8; PUNCH];
            store.read_at(at, &mut page).expect("read_at");
            assert!(
                page.iter().all(|&b| b == 0),
                "a punched page reads as zeros"
            );
        }
    }

    #[test]
    fn a_read_only_export_refuses_a_writable_open() {
        if !require_tools() {
            return;
        }
        let (_dir, raw) = raw_image();
        let server = Server::qemu("raw", &raw, &["-r"]);
        match NbdStore::open(&server.uri()) {
            Err(StoreError::ReadOnly { uri }) => assert_eq!(uri, server.uri()),
            other => panic!("a writable open of a read-only export gave {other:?}"),
        }
        let config = NbdConfig {
            read_only: true,
            ..NbdConfig::default()
        };
        let store = NbdStore::open_with(&server.uri(), &config).expect("a read-only open");
        assert_eq!(store.len(), (PAGES * PAGE) as u64);
    }

    /// write(2) of `len` bytes at `ptr` into a pipe: the kernel reads the mapping.
    fn kernel_read(ptr: *const u8, len: usize) -> Result<usize, i32> {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills two fds, owned right after.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both fds are fresh and ours.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: the kernel reads `ptr..ptr+len` (inside the live mapping) and fails with
        // EFAULT rather than touching anything else.
        let rc = unsafe { libc::write(write_end.as_raw_fd(), ptr.cast(), len) };
        drop(read_end);
        if rc < 0 {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        } else {
            Ok(rc as usize)
        }
    }

    /// The child side of the SIGBUS test: maps the export named by UDAX_NBD_URI, reads
    /// page 0, kills the server (UDAX_NBD_PID), waits until it no longer listens, then
    /// loads from data page 301, which must raise SIGBUS.
    fn killed_server_child() {
        common::no_core_dumps();
        let uri = std::env::var("UDAX_NBD_URI").expect("UDAX_NBD_URI");
        let pid: libc::pid_t = std::env::var("UDAX_NBD_PID")
            .expect("UDAX_NBD_PID")
            .parse()
            .expect("a pid");
        let socket = std::env::var("UDAX_NBD_SOCKET").expect("UDAX_NBD_SOCKET");
        let store = Arc::new(open_with_timeout(&uri, Duration::from_secs(5)));
        let mapping = map(&store);
        // SAFETY: page 0 is inside the mapping; the server is up.
        assert_eq!(unsafe { peek(mapping.as_ptr(), 0) }, pattern(0));
        // SAFETY: kill(2) of the server the parent started for this child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        wait_until_gone(Path::new(&socket));
        // Page 301 holds data (a hole would be served from the cached layout, rightly).
        say("TOUCHING: load from data page 301 with the server killed");
        // SAFETY: inside the mapping; the access is meant to raise SIGBUS.
        let value = unsafe { peek(mapping.as_ptr(), 301 * PAGE) };
        say(&format!("SURVIVED with value {value:#x}"));
    }

    #[test]
    fn a_killed_server_gives_sigbus_at_the_access() {
        if child_case().as_deref() == Some("killed-server") {
            killed_server_child();
            return;
        }
        if !require_tools() || !common::require_uffd() {
            return;
        }
        let (_dir, raw) = raw_image();
        let server = Server::qemu("raw", &raw, &[]);
        let pid = server.child.id().to_string();
        let socket = server.socket.display().to_string();
        let env = [
            ("UDAX_NBD_URI", server.uri()),
            ("UDAX_NBD_PID", pid),
            ("UDAX_NBD_SOCKET", socket),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let output = common::run_child_with_env(
            "nbd::a_killed_server_gives_sigbus_at_the_access",
            "killed-server",
            &env,
        );
        common::assert_died_of_sigbus(&output, "TOUCHING");
    }

    #[test]
    fn a_killed_server_is_efault_and_a_flush_error_then_a_reconnect() {
        if !require_tools() || !common::require_uffd() {
            return;
        }
        let (_dir, raw) = raw_image();
        let server = Server::qemu("raw", &raw, &[]);
        let store = Arc::new(open_with_timeout(&server.uri(), Duration::from_secs(5)));
        let mapping = map(&store);
        mapping.write_at(PAGE, b"kept").expect("write_at page 1");
        mapping.flush().expect("flush with the server up");
        mapping
            .write_at(2 * PAGE, b"late")
            .expect("write_at page 2, left dirty");
        server.signal(libc::SIGKILL);
        wait_until_gone(&server.socket);
        drop(server);
        let page = 301; // data, not resident: its fault needs the server
        // SAFETY: `page` lies inside the mapping.
        let ptr = unsafe { mapping.as_ptr().add(page * PAGE) };
        assert_eq!(
            kernel_read(ptr, PAGE),
            Err(libc::EFAULT),
            "a kernel read of a page the dead server holds"
        );
        assert!(
            matches!(mapping.flush(), Err(Error::Store(StoreError::Io { .. }))),
            "flush of a dirty page with the server gone"
        );
        // The server comes back on the same socket: the next access reconnects.
        let server = Server::qemu("raw", &raw, &[]);
        let connects = store.stats().connects;
        let mut bytes = [0u8; 4];
        mapping
            .read_at(500 * PAGE, &mut bytes)
            .expect("a read after the server is back");
        assert_eq!(bytes, [pattern(500 * PAGE); 4]);
        assert!(store.stats().connects > connects, "{:?}", store.stats());
        match mapping.flush() {
            Err(Error::FaultFailed {
                offset,
                source: StoreError::Io { .. },
            }) => {
                assert_eq!(
                    offset,
                    (page * PAGE) as u64,
                    "the failed fault, reported once"
                )
            }
            other => panic!("the first flush with the server back gave {other:?}"),
        }
        mapping.flush().expect("the fault error is reported once");
        mapping.close().expect("close");
        let mut on_disk = [0u8; 4];
        let file = std::fs::File::open(&raw).expect("image");
        file.read_exact_at(&mut on_disk, PAGE as u64)
            .expect("read page 1");
        assert_eq!(&on_disk, b"kept");
        file.read_exact_at(&mut on_disk, 2 * PAGE as u64)
            .expect("read page 2");
        assert_eq!(
            &on_disk, b"late",
            "kept dirty across the failed flush, written by the next"
        );
        drop(server);
    }

    #[test]
    fn a_stopped_server_hits_the_timeout_and_the_store_reconnects() {
        if !require_tools() {
            return;
        }
        let (_dir, raw) = raw_image();
        let server = Server::qemu("raw", &raw, &[]);
        let store = open_with_timeout(&server.uri(), Duration::from_millis(300));
        let mut page = vec![0u8; PAGE];
        store
            .read_at(0, &mut page)
            .expect("read with the server running");
        server.signal(libc::SIGSTOP);
        let read = store.read_at(300 * PAGE as u64, &mut page);
        let write = store.write_at(PAGE as u64, &page);
        server.signal(libc::SIGCONT);
        for (what, result) in [("read", read), ("write", write)] {
            match result {
                Err(StoreError::Io { source, .. }) => {
                    assert_eq!(
                        source.raw_os_error(),
                        Some(libc::ETIMEDOUT),
                        "{what}: {source}"
                    )
                }
                other => panic!("{what} to a stopped server gave {other:?}"),
            }
        }
        assert_eq!(store.stats().timeouts, 2, "{:?}", store.stats());
        store
            .read_at(500 * PAGE as u64, &mut page)
            .expect("a read once the server runs again");
        assert_eq!(page[0], pattern(500 * PAGE));
        assert!(store.stats().connects >= 2, "{:?}", store.stats());
    }

    #[test]
    fn without_multi_conn_writes_and_flushes_share_one_connection() {
        if !require_tools() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("requests.log");
        let log_arg = format!("logfile={}", log.display());
        let server = Server::nbdkit(
            dir.path(),
            &[
                "--filter=log",
                "--filter=multi-conn",
                "memory",
                "8M",
                "multi-conn-mode=disable",
                &log_arg,
            ],
        );
        let store = open(&server.uri());
        std::thread::scope(|scope| {
            for thread in 0..4u64 {
                let store = &store;
                scope.spawn(move || {
                    let mut page = vec![0u8; PAGE];
                    for i in 0..16 {
                        let offset = (thread * 64 + i) * PAGE as u64;
                        store
                            .write_at(offset, &[thread as u8 + 1; PAGE])
                            .expect("write_at");
                        store
                            .read_at(offset + 32 * PAGE as u64, &mut page)
                            .expect("read_at");
                    }
                });
            }
        });
        store.sync().expect("sync");
        drop(store);
        drop(server);
        let text = std::fs::read_to_string(&log).expect("the request log");
        let connection_of = |line: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix("connection="))
                .map(str::to_string)
        };
        let lanes = |commands: &[&str]| -> std::collections::BTreeSet<String> {
            text.lines()
                .filter(|l| commands.iter().any(|c| l.contains(&format!(" {c} id="))))
                .filter_map(connection_of)
                .collect()
        };
        let writers = lanes(&["Write", "Zero", "Flush"]);
        assert_eq!(
            writers.len(),
            1,
            "writes and flushes on connections {writers:?}"
        );
        assert!(
            lanes(&["Flush"]) == writers,
            "the flush went where the writes went"
        );
    }

    #[test]
    fn without_write_zeroes_or_holes_everything_is_data_and_punch_writes_zeros() {
        if !require_tools() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let filters = ["--filter=nozero", "--filter=noextents", "memory", "8M"];
        let server = Server::nbdkit(dir.path(), &filters);
        let store = open(&server.uri());
        let extent = store.extent(0).expect("extent");
        assert_eq!((extent.kind, extent.len), (ExtentKind::Data, store.len()));
        store.write_at(0, &[5u8; 2 * PAGE]).expect("write_at");
        store
            .allocate(4 * PAGE as u64, PAGE as u64)
            .expect("allocate without WRITE_ZEROES");
        store
            .punch_hole(0, PAGE as u64)
            .expect("punch_hole without WRITE_ZEROES");
        let mut bytes = vec![1u8; 2 * PAGE];
        store.read_at(0, &mut bytes).expect("read_at");
        assert!(
            bytes[..PAGE].iter().all(|&b| b == 0),
            "the punched page reads as zeros"
        );
        assert!(
            bytes[PAGE..].iter().all(|&b| b == 5),
            "its neighbour is kept"
        );
        let stats = store.stats();
        assert_eq!(stats.zeroes, 0, "{stats:?}");
    }

    #[test]
    fn the_first_access_after_a_server_restart_succeeds() {
        if !require_tools() {
            return;
        }
        let (_dir, raw) = raw_image();
        let server = Server::qemu("raw", &raw, &[]);
        let store = open(&server.uri());
        let mut page = vec![0u8; PAGE];
        store
            .read_at(0, &mut page)
            .expect("read with the server up");
        drop(server); // killed and reaped: the pooled connection is dead
        let _server = Server::qemu("raw", &raw, &[]);
        store
            .read_at(300 * PAGE as u64, &mut page)
            .expect("the first read after the restart");
        assert_eq!(page[0], pattern(300 * PAGE));
        let stats = store.stats();
        assert_eq!((stats.connects, stats.failures), (2, 0), "{stats:?}");
    }

    #[test]
    fn sequential_faults_read_ahead_in_few_large_reads() {
        if !require_tools() || !common::require_uffd() {
            return;
        }
        let (_dir, raw) = raw_image();
        let server = Server::qemu("raw", &raw, &[]);
        let store = Arc::new(open(&server.uri()));
        let mapping = map(&store);
        let (first, count) = DATA_PAGES[2];
        let mut byte = [0u8];
        for page in first..first + count {
            mapping.read_at(page * PAGE, &mut byte).expect("read_at");
            assert_eq!(byte[0], pattern(page * PAGE), "page {page}");
        }
        let nbd = store.stats();
        assert_eq!(mapping.stats().read_faults as usize, count);
        assert!(
            nbd.reads <= 3 && nbd.read_ahead_hits as usize >= count - 3,
            "{nbd:?}"
        );
        mapping.close().expect("close");
    }
}
