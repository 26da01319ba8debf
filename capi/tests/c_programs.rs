//! The C API from C: compiles each program of `tests/c` with the system `cc` (and the
//! headers as C++ with `c++`) against `include/` and this build's libudax, runs it with
//! the `UMAP_*` variables it needs, and checks that it exits 0. Each program prints one
//! line of results (seen with `--nocapture`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// Whether userfaultfd can be used here; without it the programs would fail. Under
/// `CI=true` its absence is a failure, elsewhere a loud skip.
fn require_uffd() -> bool {
    let store = Arc::new(udax_core::MemStore::new(4096));
    match udax_core::Mapping::new(store, udax_core::Options::default()) {
        Ok(mapping) => mapping.close().is_ok(),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("userfaultfd is unavailable under CI=true: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: userfaultfd is unavailable ({e}); the C programs did not run");
            false
        }
    }
}

/// A directory in `scratch` where this build's library is named libudax.so, as
/// `install.sh` names it. Cargo builds it for the tests beside them (target/<profile>/
/// deps/libudax_capi.so: the rlib crate type makes it build the library first).
fn lib_dir(scratch: &Path) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let built = exe.with_file_name("libudax_capi.so");
    assert!(built.exists(), "{} was not built", built.display());
    let dir = scratch.join("lib");
    std::fs::create_dir_all(&dir).expect("lib dir");
    std::os::unix::fs::symlink(&built, dir.join("libudax.so")).expect("symlink");
    dir
}

/// Compiles `source` (in tests/c, or a path under the package) into `out_dir` with
/// `compiler`, linking libudax and `libs`; returns the binary.
fn compile(compiler: &str, source: &str, out_dir: &Path, libs: &[&str]) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = lib_dir(out_dir);
    let binary = out_dir.join(source.replace(['.', '/'], "_"));
    let path = if source.contains('/') {
        manifest.join(source)
    } else {
        manifest.join("tests/c").join(source)
    };
    let std_flag = if compiler == "c++" {
        "-std=c++17"
    } else {
        "-std=c11"
    };
    let output = Command::new(compiler)
        .args([
            std_flag,
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-D_GNU_SOURCE",
        ])
        .arg("-I")
        .arg(manifest.join("include"))
        .arg(path)
        .arg("-o")
        .arg(&binary)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-ludax", "-lpthread"])
        .args(libs)
        .output()
        .unwrap_or_else(|e| panic!("running {compiler}: {e}"));
    assert!(
        output.status.success(),
        "{compiler} {source} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    binary
}

/// Compiles and runs `source` with `env`, the argument a scratch directory (plus
/// `args`); asserts it exited 0 and returns its stdout.
fn run(compiler: &str, source: &str, env: &[(&str, &str)], args: &[&str]) -> String {
    run_linked(compiler, source, &[], env, args)
}

/// [`run`], linking `libs` too.
fn run_linked(
    compiler: &str,
    source: &str,
    libs: &[&str],
    env: &[(&str, &str)],
    args: &[&str],
) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = compile(compiler, source, dir.path(), libs);
    let output = Command::new(&binary)
        .arg(dir.path())
        .args(args)
        // Cargo's LD_LIBRARY_PATH (target/<profile>) would come before the rpath.
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("UMAP_BUFSIZE")
        .env_remove("UMAP_PAGESIZE")
        .envs(env.iter().copied())
        .output()
        .expect("running the program");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{source} failed: {:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    print!("{stdout}");
    stdout
}

#[test]
fn the_native_api_maps_flushes_and_reports_errors() {
    if require_uffd() {
        run("cc", "native.c", &[], &[]);
    }
}

#[test]
fn threads_map_flush_and_unmap_at_once() {
    if require_uffd() {
        run("cc", "umap_threads.c", &[("UMAP_PAGE_FILLERS", "1")], &[]);
    }
}

#[test]
fn a_sort_runs_under_a_small_umap_bufsize() {
    if require_uffd() {
        // 32 MiB of words under a 4 MiB buffer.
        run("cc", "umap_sort.c", &[("UMAP_BUFSIZE", "1024")], &["32"]);
    }
}

#[test]
fn umap_fixed_regions_sit_back_to_back() {
    if require_uffd() {
        run("cc", "umap_fixed.c", &[], &[]);
        // 64 KiB UMap pages: fault-around of 64 KiB.
        run("cc", "umap_fixed.c", &[("UMAP_PAGESIZE", "65536")], &[]);
    }
}

#[test]
fn a_read_only_region_refuses_writes_with_sigsegv() {
    if require_uffd() {
        run("cc", "umap_readonly.c", &[], &[]);
    }
}

#[test]
fn bad_arguments_fail_with_errno_and_getters_report_the_environment() {
    let env = [
        ("UMAP_PAGESIZE", "8192"),
        ("UMAP_BUFSIZE", "100"),
        ("UMAP_PAGE_FILLERS", "2"),
        ("UMAP_PAGE_EVICTORS", "3"),
        ("UMAP_EVICT_HIGH_WATER_THRESHOLD", "80"),
        ("UMAP_EVICT_LOW_WATER_THRESHOLD", "60"),
        ("UMAP_MAX_FAULT_EVENTS", "32"),
        ("UMAP_READ_AHEAD", "4"),
    ];
    if require_uffd() {
        run("cc", "umap_errors.c", &env, &[]);
    }
}

#[test]
fn the_headers_compile_as_cpp() {
    if require_uffd() {
        run("c++", "headers.cpp", &[], &[]);
    }
}

#[test]
fn install_sh_makes_a_pkg_config_package_and_a_umap_library() {
    if !require_uffd() {
        return;
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scratch = tempfile::tempdir().expect("tempdir");
    let prefix = scratch.path().join("prefix");
    let exe = std::env::current_exe().expect("current_exe");
    let status = Command::new("bash")
        .arg(manifest.join("install.sh"))
        .arg(&prefix)
        .env("UDAX_LIB_DIR", exe.parent().expect("deps dir"))
        .status()
        .expect("running install.sh");
    assert!(status.success(), "install.sh failed");
    let pkg = |what: &str| {
        let out = Command::new("pkg-config")
            .args([what, "udax"])
            .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
            .output()
            .expect("pkg-config");
        assert!(out.status.success(), "pkg-config {what} udax failed");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (cflags, libs) = (pkg("--cflags"), pkg("--libs"));
    assert!(libs.contains("-ludax"), "{libs}");
    // A UMap program as its users build it: -lumap.
    let binary = scratch.path().join("fixed");
    let lib = prefix.join("lib");
    let output = Command::new("cc")
        .args(cflags.split_whitespace())
        .arg(manifest.join("tests/c/umap_fixed.c"))
        .arg("-o")
        .arg(&binary)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lumap")
        .output()
        .expect("cc");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run = Command::new(&binary)
        .arg(scratch.path())
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

#[test]
fn sqlite_runs_in_place_and_writes_back_exactly_the_pages_it_wrote() {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !Path::new("/usr/include/sqlite3.h").exists() && !in_ci {
        eprintln!("SKIPPED: no /usr/include/sqlite3.h (apt-get install libsqlite3-dev)");
        return;
    }
    if require_uffd() {
        let out = run_linked("cc", "examples/sqlite_in_place.c", &["-lsqlite3"], &[], &[]);
        assert!(out.contains("integrity_check ok"), "{out}");
    }
}
