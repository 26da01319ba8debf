//! The `udax` command over NBD: `udax inspect URI`, `udax bench --store URI` (the sort's
//! check reads the udax result copied back from the export) and the lazy-restore workload,
//! against nbdkit's memory plugin on a Unix socket (killed by PID on drop); a missing
//! server is bad input (exit 2, one line).
//!
//! Without nbdkit or nbdcopy, or without userfaultfd, the tests print "SKIPPED" and pass,
//! except when CI=true: there that is a failure.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const UDAX: &str = env!("CARGO_BIN_EXE_udax");

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether nbdkit and nbdcopy are installed; skips loudly (fails under CI).
fn have_tools() -> bool {
    let found = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if found("nbdkit") && found("nbdcopy") {
        return true;
    }
    assert!(!in_ci(), "nbdkit or nbdcopy missing under CI=true");
    eprintln!("SKIPPED: nbdkit or nbdcopy is not installed (apt: nbdkit libnbd-bin)");
    false
}

/// nbdkit's memory plugin of `size` on a socket in `dir`; killed and reaped on drop.
struct Nbdkit {
    child: Child,
    uri: String,
}

impl Nbdkit {
    fn start(dir: &Path, size: &str) -> Nbdkit {
        let socket = dir.join("nbdkit.sock");
        let child = Command::new("nbdkit")
            .args(["-f", "--exit-with-parent", "-U"])
            .arg(&socket)
            .args(["memory", size])
            .stdin(Stdio::null())
            .spawn()
            .expect("starting nbdkit");
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "nbdkit did not listen in 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        let uri = format!("nbd+unix:///?socket={}", socket.display());
        Nbdkit { child, uri }
    }
}

impl Drop for Nbdkit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn udax(dir: &Path, args: &[&str]) -> Output {
    Command::new(UDAX)
        .args(args)
        .env("TMPDIR", dir)
        .output()
        .expect("run udax")
}

/// Whether a failed run failed only for want of userfaultfd (never skipped under CI).
fn skip_without_userfaultfd(output: &Output) -> bool {
    let stderr = text(&output.stderr);
    if output.status.code() == Some(2) && stderr.contains("userfaultfd") {
        assert!(!in_ci(), "userfaultfd unavailable under CI: {stderr}");
        eprintln!("SKIPPED: userfaultfd is unavailable here: {stderr}");
        return true;
    }
    false
}

#[test]
fn inspect_an_export_and_a_missing_server() {
    if !have_tools() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Nbdkit::start(dir.path(), "16M");
    let output = udax(dir.path(), &["inspect", "--json", &server.uri]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(report["size_bytes"], 16 << 20);
    assert_eq!(report["hole_bytes"], 16 << 20, "{report}");
    let missing = format!(
        "nbd+unix:///?socket={}",
        dir.path().join("none.sock").display()
    );
    let output = udax(dir.path(), &["inspect", &missing]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot connect") && stderr.contains("check"),
        "{stderr}"
    );
}

#[test]
fn bench_over_an_export_with_lazy_restore() {
    if !have_tools() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Nbdkit::start(dir.path(), "8M");
    let args = [
        "bench",
        "--size",
        "8MiB",
        "--repeat",
        "1",
        "--store",
        &server.uri,
        "--workload",
        "seq-read,sort,lazy-restore",
        "--touch",
        "0.2",
    ];
    let output = udax(dir.path(), &args);
    if skip_without_userfaultfd(&output) {
        return;
    }
    assert!(
        output.status.success(),
        "udax {args:?}: {}",
        text(&output.stderr)
    );
    let stdout = text(&output.stdout);
    for expected in [
        "NBD requests",
        "seq-read",
        "sort",
        "lazy-restore:",
        "udax over NBD",
        "nbdcopy + mmap",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name != "nbdkit.sock")
        .collect();
    assert!(leftovers.is_empty(), "left in $TMPDIR: {leftovers:?}");
}
