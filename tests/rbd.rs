//! `RbdStore` against a real one-node Ceph cluster (`scripts/ceph-one-node.sh`: a monitor,
//! a manager and one memstore OSD on loopback), named by `UDAX_CEPH_CONF` (its ceph.conf;
//! the OSD's PID file is `run/osd.0.pid` beside it). Each test makes its own image.
//! Checked: extents equal `rbd diff`; a sparse read of an empty image sends no read;
//! bytes after flush equal `rbd export`; a stopped OSD (SIGSTOP) gives SIGBUS at the
//! access within the timeout, EFAULT to the kernel, a flush error and no hang, and once
//! the OSD runs again (SIGCONT) a new access works; the same with the OSD killed (SIGKILL)
//! and started again, on a cluster whose OSD keeps its objects on disk
//! (`UDAX_CEPH_OBJECTSTORE=bluestore`, what CI starts; memstore would lose them).
//!
//! ```sh
//! scripts/ceph-one-node.sh start /tmp/ceph
//! UDAX_CEPH_CONF=/tmp/ceph/ceph.conf cargo test --release -p udax --features rbd --test rbd
//! scripts/ceph-one-node.sh stop /tmp/ceph
//! ```
//!
//! Without `UDAX_CEPH_CONF` (or without the `rbd` feature) the tests skip loudly, except
//! under `CI=true`, where that is a failure.

mod common;

#[cfg(not(feature = "rbd"))]
#[test]
fn rbd_tests_need_the_rbd_feature() {
    assert!(
        !common::in_ci() || std::env::var_os("UDAX_CEPH_CONF").is_none(),
        "tests/rbd.rs was built without the `rbd` feature while CI started a cluster"
    );
    eprintln!("SKIPPED tests/rbd.rs: built without the `rbd` feature (cargo test --features rbd)");
}

#[cfg(feature = "rbd")]
mod rbd {
    use std::path::PathBuf;
    use std::process::{Command, Output};
    use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
    use std::time::{Duration, Instant};

    use super::common::{self, PAGE, XorShift, child_case, kernel_read, peek, say};
    use udax::{Error, ExtentKind, Mapping, Options, RbdConfig, RbdStore, Store, StoreError};

    /// Tests that stop the OSD hold this for writing; the others for reading, so that no
    /// test sees the cluster stopped under it.
    static CLUSTER: RwLock<()> = RwLock::new(());

    /// The images of the tests (16 MiB: four 4 MiB objects).
    const SIZE: u64 = 16 << 20;

    /// The cluster's ceph.conf, or None after a loud skip (a failure under CI=true).
    fn ceph_conf() -> Option<PathBuf> {
        match std::env::var_os("UDAX_CEPH_CONF") {
            Some(conf) => Some(PathBuf::from(conf)),
            None => {
                assert!(
                    !common::in_ci(),
                    "UDAX_CEPH_CONF is not set under CI=true: .ci/run starts the cluster"
                );
                eprintln!(
                    "SKIPPED {}: UDAX_CEPH_CONF not set (scripts/ceph-one-node.sh start DIR); \
                     this test did not run",
                    std::thread::current().name().unwrap_or("?")
                );
                None
            }
        }
    }

    /// An image made for one test, removed on drop.
    struct TestImage {
        conf: PathBuf,
        name: String,
    }

    impl TestImage {
        /// `rbd create` of an image of `size` bytes named after `test` and this process.
        fn create(conf: PathBuf, test: &str, size: u64) -> TestImage {
            let name = format!("udax-{test}-{}", std::process::id());
            let image = TestImage { conf, name };
            let _ = image.rbd_output(&["rm", "--no-progress", &image.name]);
            image.rbd(&["create", "--size", &format!("{}K", size >> 10), &image.name]);
            image
        }

        fn uri(&self) -> String {
            format!("rbd:rbd/{}?conf={}", self.name, self.conf.display())
        }

        fn rbd_output(&self, args: &[&str]) -> Output {
            Command::new("timeout")
                .arg("120")
                .arg("rbd")
                .arg("-c")
                .arg(&self.conf)
                .args(args)
                .output()
                .expect("running rbd")
        }

        /// `rbd ARGS...`, which must succeed; its stdout.
        fn rbd(&self, args: &[&str]) -> String {
            let out = self.rbd_output(args);
            assert!(
                out.status.success(),
                "rbd {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }

        /// `rbd diff`: the allocated runs as (offset, length), adjacent ones merged.
        fn rbd_diff(&self) -> Vec<(u64, u64)> {
            let out = self.rbd(&["diff", "--format", "plain", &self.name]);
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for line in out.lines().skip(1) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let [offset, length, "data"] = fields[..] else {
                    continue;
                };
                let (offset, length) = (offset.parse().unwrap(), length.parse().unwrap());
                match runs.last_mut() {
                    Some(last) if last.0 + last.1 == offset => last.1 += length,
                    _ => runs.push((offset, length)),
                }
            }
            runs
        }

        /// `rbd export` to a file: the image's bytes.
        fn export(&self) -> Vec<u8> {
            let dir = tempfile::tempdir().expect("tempdir");
            let file = dir.path().join("export.raw");
            self.rbd(&[
                "export",
                "--no-progress",
                &self.name,
                file.to_str().unwrap(),
            ]);
            std::fs::read(&file).expect("reading the export")
        }

        fn open(&self, timeout: Duration) -> RbdStore {
            let config = RbdConfig {
                timeout,
                ..RbdConfig::default()
            };
            RbdStore::open_with(&self.uri(), &config)
                .unwrap_or_else(|e| panic!("RbdStore::open_with({}): {e}", self.uri()))
        }
    }

    impl Drop for TestImage {
        fn drop(&mut self) {
            let _ = self.rbd_output(&["rm", "--no-progress", &self.name]);
        }
    }

    fn shared() -> RwLockReadGuard<'static, ()> {
        CLUSTER.read().unwrap_or_else(|e| e.into_inner())
    }

    fn exclusive() -> RwLockWriteGuard<'static, ()> {
        CLUSTER.write().unwrap_or_else(|e| e.into_inner())
    }

    /// One page a fault (the default is 2 MiB), no read-ahead: these tests lose the OSD
    /// under a page that is not resident yet, and a 2 MiB fault, or a read-ahead of a run
    /// of faults, would have read its neighbours in.
    fn map(store: &Arc<RbdStore>) -> Mapping {
        let store: Arc<dyn Store> = store.clone();
        let options = Options::default()
            .granularity(udax::Granularity::Page)
            .read_ahead(false);
        Mapping::new(store, options).expect("Mapping::new over RBD")
    }

    /// The byte written at `offset` of a data page.
    fn pattern(offset: u64) -> u8 {
        (offset / PAGE as u64 % 251) as u8 + 1
    }

    /// Pages that get data: a run at the start, one inside an object, one across an
    /// object boundary (4 MiB = page 1024), and the last page.
    const DATA_PAGES: [(u64, u64); 4] = [(0, 3), (300, 17), (1020, 10), (4095, 1)];

    /// Writes [`DATA_PAGES`] through a store and flushes.
    fn write_data(store: &RbdStore) {
        for (first, count) in DATA_PAGES {
            let offset = first * PAGE as u64;
            let bytes: Vec<u8> = (0..count * PAGE as u64)
                .map(|i| pattern(offset + i))
                .collect();
            store.write_at(offset, &bytes).expect("write_at");
        }
        store.sync().expect("sync");
    }

    /// The store's allocated runs, walking `extent` from 0 to the end.
    fn store_data(store: &dyn Store) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut offset = 0;
        while offset < store.len() {
            let extent = store.extent(offset).expect("extent");
            if extent.kind == ExtentKind::Data {
                match runs.last_mut() {
                    Some(last) if last.0 + last.1 == offset => last.1 += extent.len,
                    _ => runs.push((offset, extent.len)),
                }
            }
            offset += extent.len;
        }
        runs
    }

    #[test]
    fn extents_equal_rbd_diff() {
        let Some(conf) = ceph_conf() else { return };
        let _cluster = shared();
        let image = TestImage::create(conf, "extents", SIZE);
        write_data(&image.open(Duration::from_secs(30)));
        let store = image.open(Duration::from_secs(30));
        let ours = store_data(&store);
        let theirs = image.rbd_diff();
        assert_eq!(ours, theirs, "extents against rbd diff");
        // Per object: from its start to the end of its last write (librbd lists whole
        // object extents without snapshots), so three objects of four hold data.
        assert!(ours.len() >= 2, "{ours:?}");
        assert_eq!(
            store.stats().extent_queries,
            1,
            "one window answers the walk"
        );
    }

    #[test]
    fn a_sparse_read_of_an_empty_image_sends_no_read() {
        let Some(conf) = ceph_conf() else { return };
        if !common::require_uffd() {
            return;
        }
        let _cluster = shared();
        let image = TestImage::create(conf, "sparse", SIZE);
        let store = Arc::new(image.open(Duration::from_secs(30)));
        let mapping = map(&store);
        let mut byte = [1u8];
        for page in 0..mapping.len() / PAGE {
            mapping.read_at(page * PAGE, &mut byte).expect("read_at");
            assert_eq!(byte, [0]);
        }
        let (stats, rbd) = (mapping.stats(), store.stats());
        assert_eq!(
            stats.zero_faults as usize,
            mapping.len() / PAGE,
            "{stats:?}"
        );
        assert_eq!(
            (rbd.reads, rbd.bytes_read),
            (0, 0),
            "no read for holes: {rbd:?}"
        );
        assert_eq!(rbd.extent_queries, 1, "one window: {rbd:?}");
        mapping.close().expect("close");
    }

    #[test]
    fn bytes_after_flush_equal_rbd_export() {
        let Some(conf) = ceph_conf() else { return };
        if !common::require_uffd() {
            return;
        }
        let _cluster = shared();
        let image = TestImage::create(conf, "export", SIZE);
        write_data(&image.open(Duration::from_secs(30)));
        let mut model = vec![0u8; SIZE as usize];
        for (first, count) in DATA_PAGES {
            for offset in first * PAGE as u64..(first + count) * PAGE as u64 {
                model[offset as usize] = pattern(offset);
            }
        }
        let store = Arc::new(image.open(Duration::from_secs(30)));
        let mapping = map(&store);
        let mut rng = XorShift::new(15);
        for round in 0..3u8 {
            for _ in 0..200 {
                let offset = rng.below(SIZE - 64) as usize;
                let bytes = [round
                    .wrapping_mul(31)
                    .wrapping_add(rng.below(200) as u8 + 1); 64];
                mapping.write_at(offset, &bytes).expect("write_at");
                model[offset..offset + 64].copy_from_slice(&bytes);
            }
            mapping.flush().expect("flush over RBD");
        }
        let rbd = store.stats();
        assert!(rbd.writes > 0 && rbd.flushes >= 3, "{rbd:?}");
        mapping.close().expect("close");
        drop(store);
        common::assert_bytes_eq(&image.export(), &model, "rbd export after flush");
    }

    /// The PID of the cluster's OSD (from its PID file beside the conf).
    fn osd_pid(conf: &std::path::Path) -> libc::pid_t {
        let file = conf.parent().expect("conf in a dir").join("run/osd.0.pid");
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .trim()
            .parse()
            .expect("a PID")
    }

    fn signal(pid: libc::pid_t, signal: libc::c_int) {
        // SAFETY: kill(2) of the cluster's OSD, whose PID file the script wrote.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// Resumes the OSD when dropped, so that a failing assertion leaves it running.
    struct Resume(libc::pid_t);

    impl Drop for Resume {
        fn drop(&mut self) {
            // SAFETY: as in `signal`.
            unsafe { libc::kill(self.0, libc::SIGCONT) };
        }
    }

    /// The requests' timeout in the OSD tests.
    const TIMEOUT: Duration = Duration::from_secs(3);

    /// The child side of the SIGBUS test: maps the image named by UDAX_RBD_URI, reads
    /// page 0, stops the OSD (UDAX_RBD_OSD), then loads from data page 301, which must
    /// raise SIGBUS once the request times out.
    fn stopped_osd_child() {
        common::no_core_dumps();
        let uri = std::env::var("UDAX_RBD_URI").expect("UDAX_RBD_URI");
        let osd: libc::pid_t = std::env::var("UDAX_RBD_OSD")
            .expect("UDAX_RBD_OSD")
            .parse()
            .expect("a pid");
        let config = RbdConfig {
            timeout: TIMEOUT,
            ..RbdConfig::default()
        };
        let store = Arc::new(RbdStore::open_with(&uri, &config).expect("open"));
        let mapping = map(&store);
        // SAFETY: page 0 is inside the mapping; the OSD runs.
        assert_eq!(unsafe { peek(mapping.as_ptr(), 0) }, pattern(0));
        signal(osd, libc::SIGSTOP);
        say("TOUCHING: load from data page 301 with the OSD stopped");
        // SAFETY: inside the mapping; the access is meant to raise SIGBUS.
        let value = unsafe { peek(mapping.as_ptr(), 301 * PAGE) };
        say(&format!("SURVIVED with value {value:#x}"));
    }

    #[test]
    fn a_stopped_osd_gives_sigbus_at_the_access_within_the_timeout() {
        if child_case().as_deref() == Some("stopped-osd") {
            stopped_osd_child();
            return;
        }
        let Some(conf) = ceph_conf() else { return };
        if !common::require_uffd() {
            return;
        }
        let _cluster = exclusive();
        let image = TestImage::create(conf.clone(), "sigbus", SIZE);
        write_data(&image.open(Duration::from_secs(30)));
        let osd = osd_pid(&conf);
        let _resume = Resume(osd);
        let env = [
            ("UDAX_RBD_URI", image.uri()),
            ("UDAX_RBD_OSD", osd.to_string()),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let started = Instant::now();
        let output = common::run_child_with_env(
            "rbd::a_stopped_osd_gives_sigbus_at_the_access_within_the_timeout",
            "stopped-osd",
            &env,
        );
        let took = started.elapsed();
        signal(osd, libc::SIGCONT);
        common::assert_died_of_sigbus(&output, "TOUCHING");
        eprintln!("stopped OSD: the child (open, map, stop, fault, SIGBUS) took {took:?}");
    }

    #[test]
    fn a_stopped_osd_is_efault_and_a_flush_error_then_works_again() {
        osd_loss_then_back(Loss::Stop);
    }

    #[test]
    fn a_killed_osd_is_efault_and_a_flush_error_then_works_after_a_restart() {
        osd_loss_then_back(Loss::Kill);
    }

    /// How the OSD goes away.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Loss {
        /// SIGSTOP, then SIGCONT.
        Stop,
        /// SIGKILL, then a new `ceph-osd` (needs an OSD that keeps its objects on disk).
        Kill,
    }

    /// Whether the cluster's OSD keeps its objects on disk (bluestore), so that a killed
    /// one comes back with them; memstore loses them. Skips loudly (fails under CI=true).
    fn osd_survives_a_kill(conf: &std::path::Path) -> bool {
        let text = std::fs::read_to_string(conf).expect("reading the ceph.conf");
        if text
            .lines()
            .any(|l| l.trim() == "osd objectstore = bluestore")
        {
            return true;
        }
        assert!(
            !common::in_ci(),
            "the CI cluster must keep its objects on disk (UDAX_CEPH_OBJECTSTORE=bluestore)"
        );
        eprintln!(
            "SKIPPED {}: the OSD keeps its objects in memory and would lose them when killed \
             (start the cluster with UDAX_CEPH_OBJECTSTORE=bluestore); this test did not run",
            std::thread::current().name().unwrap_or("?")
        );
        false
    }

    /// Starts the killed OSD again and waits (at most 120 s) until its placement groups
    /// are active again.
    fn restart_osd(conf: &std::path::Path) {
        let started = Instant::now();
        let status = Command::new("ceph-osd")
            .arg("-c")
            .arg(conf)
            .args(["-i", "0"])
            .status()
            .expect("starting ceph-osd");
        assert!(status.success(), "ceph-osd: {status}");
        let deadline = started + Duration::from_secs(120);
        loop {
            let out = Command::new("timeout")
                .args(["30", "ceph", "-c"])
                .arg(conf)
                .args(["pg", "stat"])
                .output()
                .expect("ceph pg stat");
            let stat = String::from_utf8_lossy(&out.stdout).into_owned();
            if stat.contains("active+clean") && !stat.contains("peering") && !stat.contains("down")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the OSD is not back after 120 s: {stat}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!(
            "killed OSD: restarted and active in {:?}",
            started.elapsed()
        );
    }

    /// Waits (at most 10 tries) until a read through `store` works: a client that sent a
    /// request to the killed OSD learns of the new one within one timeout.
    fn wait_until_the_store_reads(store: &RbdStore) {
        let started = Instant::now();
        let mut page = vec![0u8; PAGE];
        for attempt in 1..=10 {
            match store.read_at(1022 * PAGE as u64, &mut page) {
                Ok(()) => {
                    eprintln!(
                        "OSD back: a store read works after {attempt} tries, {:?}",
                        started.elapsed()
                    );
                    return;
                }
                Err(e) => eprintln!("OSD back: try {attempt}: {e}"),
            }
        }
        panic!("no read works 10 tries after the OSD is back");
    }

    /// Maps an image, takes the OSD away (`loss`) while a fault needs it: the access fails
    /// (EFAULT to the kernel; SIGBUS to a program, see the test above) within the timeout,
    /// flush fails, nothing hangs; once the OSD is back the mapping works again, reports
    /// the failed fault once, and the page left dirty reaches the image.
    fn osd_loss_then_back(loss: Loss) {
        let Some(conf) = ceph_conf() else { return };
        if !common::require_uffd() || (loss == Loss::Kill && !osd_survives_a_kill(&conf)) {
            return;
        }
        let _cluster = exclusive();
        let image = TestImage::create(conf.clone(), &format!("{loss:?}"), SIZE);
        write_data(&image.open(Duration::from_secs(30)));
        let store = Arc::new(image.open(TIMEOUT));
        let mapping = map(&store);
        mapping.write_at(PAGE, b"kept").expect("write_at page 1");
        mapping.flush().expect("flush with the OSD up");
        mapping
            .write_at(2 * PAGE, b"late")
            .expect("write_at page 2, left dirty");
        let osd = osd_pid(&conf);
        let resume = Resume(osd);
        match loss {
            Loss::Stop => signal(osd, libc::SIGSTOP),
            Loss::Kill => signal(osd, libc::SIGKILL),
        }
        let page = 301; // data, not resident: its fault needs the OSD
        // SAFETY: `page` lies inside the mapping.
        let ptr = unsafe { mapping.as_ptr().add(page * PAGE) };
        let started = Instant::now();
        assert_eq!(
            kernel_read(ptr, PAGE),
            Err(libc::EFAULT),
            "a kernel read of a page the lost OSD holds"
        );
        let fault_took = started.elapsed();
        let started = Instant::now();
        let flushed = mapping.flush();
        let flush_took = started.elapsed();
        assert!(
            matches!(flushed, Err(Error::Store(StoreError::Io { .. }))),
            "flush of a dirty page with the OSD lost: {flushed:?}"
        );
        eprintln!(
            "{loss:?} OSD: fault failed after {fault_took:?}, flush after {flush_took:?} \
             (timeout {TIMEOUT:?}); {:?}",
            store.stats()
        );
        match loss {
            Loss::Stop => drop(resume), // SIGCONT
            Loss::Kill => restart_osd(&conf),
        }
        wait_until_the_store_reads(&store);
        let started = Instant::now();
        let mut bytes = [0u8; 4];
        mapping
            .read_at(500 * PAGE, &mut bytes)
            .expect("a read once the OSD is back");
        eprintln!(
            "{loss:?} OSD: the first read once back took {:?}",
            started.elapsed()
        );
        assert_eq!(bytes, [0; 4], "page 500 is a hole");
        mapping
            .read_at(1021 * PAGE, &mut bytes)
            .expect("a data read once the OSD is back");
        assert_eq!(bytes, [pattern(1021 * PAGE as u64); 4]);
        match mapping.flush() {
            Err(Error::FaultFailed {
                offset,
                source: StoreError::Io { .. },
            }) => assert_eq!(
                offset,
                (page * PAGE) as u64,
                "the failed fault, reported once"
            ),
            other => panic!("the first flush with the OSD back gave {other:?}"),
        }
        mapping.flush().expect("the fault error is reported once");
        mapping.close().expect("close");
        drop(store);
        let bytes = image.export();
        assert_eq!(&bytes[PAGE..PAGE + 4], b"kept");
        assert_eq!(
            &bytes[2 * PAGE..2 * PAGE + 4],
            b"late",
            "kept dirty across the failed flush, written by the next"
        );
    }
}
