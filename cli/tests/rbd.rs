//! The `udax` command over Ceph RBD (a build with `--features rbd`): `udax inspect rbd:...`,
//! `udax bench --store rbd:...` with the lazy-restore workload (udax against `rbd export`
//! then mmap), and a missing image as bad input (exit 2, one line), against the one-node
//! cluster named by `UDAX_CEPH_CONF` (`scripts/ceph-one-node.sh start DIR`). Without the
//! feature, an RBD URI is bad input that says how to build it.
//!
//! Without `UDAX_CEPH_CONF`, or without userfaultfd, the tests print "SKIPPED" and pass,
//! except when CI=true and the cluster is meant to be there: there that is a failure.

use std::path::Path;
use std::process::{Command, Output};

const UDAX: &str = env!("CARGO_BIN_EXE_udax");

#[cfg(feature = "rbd")]
fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn udax(dir: &Path, args: &[&str]) -> Output {
    Command::new(UDAX)
        .args(args)
        .env("TMPDIR", dir)
        .output()
        .expect("run udax")
}

#[cfg(not(feature = "rbd"))]
#[test]
fn an_rbd_uri_without_the_feature_is_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = udax(dir.path(), &["inspect", "rbd:rbd/none"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--features rbd"), "{stderr}");
}

/// The cluster's ceph.conf, or None after a loud skip (a failure under CI=true, where
/// .ci/run starts the cluster for the build with the feature).
#[cfg(feature = "rbd")]
fn ceph_conf() -> Option<String> {
    match std::env::var("UDAX_CEPH_CONF") {
        Ok(conf) => Some(conf),
        Err(_) => {
            assert!(!in_ci(), "UDAX_CEPH_CONF is not set under CI=true");
            eprintln!("SKIPPED: UDAX_CEPH_CONF not set (scripts/ceph-one-node.sh start DIR)");
            None
        }
    }
}

/// `rbd -c CONF ARGS...`, which must succeed.
#[cfg(feature = "rbd")]
fn rbd(conf: &str, args: &[&str]) {
    let out = Command::new("timeout")
        .args(["120", "rbd", "-c", conf])
        .args(args)
        .output()
        .expect("running rbd");
    assert!(out.status.success(), "rbd {args:?}: {}", text(&out.stderr));
}

/// An image of `size` for one test, removed on drop.
#[cfg(feature = "rbd")]
struct Image {
    conf: String,
    name: String,
}

#[cfg(feature = "rbd")]
impl Image {
    fn create(conf: &str, test: &str, size: &str) -> Image {
        let name = format!("udax-cli-{test}-{}", std::process::id());
        rbd(conf, &["create", "--size", size, &name]);
        Image {
            conf: conf.to_string(),
            name,
        }
    }

    fn uri(&self) -> String {
        format!("rbd:rbd/{}?conf={}", self.name, self.conf)
    }
}

#[cfg(feature = "rbd")]
impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("timeout")
            .args([
                "120",
                "rbd",
                "-c",
                &self.conf,
                "rm",
                "--no-progress",
                &self.name,
            ])
            .output();
    }
}

#[cfg(feature = "rbd")]
#[test]
fn inspect_an_image_and_a_missing_one() {
    let Some(conf) = ceph_conf() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let image = Image::create(&conf, "inspect", "16M");
    let output = udax(dir.path(), &["inspect", "--json", &image.uri()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(report["size_bytes"], 16 << 20);
    assert_eq!(report["hole_bytes"], 16 << 20, "{report}");
    let missing = format!("rbd:rbd/udax-none-{}?conf={conf}", std::process::id());
    let output = udax(dir.path(), &["inspect", &missing]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot connect") && stderr.contains("opening the image"),
        "{stderr}"
    );
}

#[cfg(feature = "rbd")]
#[test]
fn bench_over_an_image_with_lazy_restore() {
    let Some(conf) = ceph_conf() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let image = Image::create(&conf, "bench", "8M");
    let uri = image.uri();
    let args = [
        "bench",
        "--size",
        "8MiB",
        "--repeat",
        "1",
        "--store",
        &uri,
        "--workload",
        "seq-read,sort,lazy-restore",
        "--touch",
        "0.2",
    ];
    let output = udax(dir.path(), &args);
    let stderr = text(&output.stderr);
    if output.status.code() == Some(2) && stderr.contains("userfaultfd") {
        assert!(!in_ci(), "userfaultfd unavailable under CI: {stderr}");
        eprintln!("SKIPPED: userfaultfd is unavailable here: {stderr}");
        return;
    }
    assert!(output.status.success(), "udax {args:?}: {stderr}");
    let stdout = text(&output.stdout);
    for expected in [
        "RBD requests",
        "seq-read",
        "sort",
        "lazy-restore:",
        "udax over RBD",
        "rbd export + mmap",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(leftovers.is_empty(), "left in $TMPDIR: {leftovers:?}");
}
