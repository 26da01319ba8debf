//! Bad configurations and arguments return their typed errors and never panic: empty,
//! short and unaligned mappings, out-of-range accesses, missing and read-only store files,
//! and a machine where userfaultfd cannot be had (whose message must say how to fix it).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use common::{PAGE, TempStore, assert_child_passed, child_case, say};
use udax::{Error, FileStore, Mapping, MemStore, Options, Store, StoreError};

fn mem_store(len: usize) -> Arc<dyn Store> {
    Arc::new(MemStore::new(len as u64))
}

fn map_err(store: Arc<dyn Store>, options: Options) -> Error {
    match Mapping::new(store, options) {
        Ok(mapping) => {
            let len = mapping.len();
            panic!("Mapping::new succeeded (len {len}) where it must fail")
        }
        Err(e) => e,
    }
}

#[test]
fn empty_store_or_zero_length_is_empty_mapping() {
    if !common::require_uffd() {
        return;
    }
    let err = map_err(mem_store(0), Options::default());
    assert!(matches!(err, Error::EmptyMapping), "empty store: {err:?}");
    let err = map_err(mem_store(4 * PAGE), Options::default().len(0));
    assert!(matches!(err, Error::EmptyMapping), "len(0): {err:?}");
    assert!(err.to_string().contains("0 bytes"), "message: {err}");
}

#[test]
fn store_shorter_than_requested_is_store_too_short() {
    if !common::require_uffd() {
        return;
    }
    let err = map_err(mem_store(4 * PAGE), Options::default().len(8 * PAGE as u64));
    match err {
        Error::StoreTooShort { len, store_len } => {
            assert_eq!((len, store_len), (8 * PAGE as u64, 4 * PAGE as u64));
        }
        other => panic!("expected StoreTooShort, got {other:?}"),
    }
}

#[test]
fn unaligned_length_is_unaligned_length() {
    if !common::require_uffd() {
        return;
    }
    for len in [1, 100, PAGE as u64 + 1, 3 * PAGE as u64 - 1] {
        let err = map_err(mem_store(4 * PAGE), Options::default().len(len));
        assert!(
            matches!(err, Error::UnalignedLength { len: l } if l == len),
            "len({len}): {err:?}"
        );
    }
}

#[test]
fn shorter_aligned_length_maps_only_that_much() {
    if !common::require_uffd() {
        return;
    }
    let mapping = Mapping::new(mem_store(8 * PAGE), Options::default().len(2 * PAGE as u64))
        .expect("mapping the first two pages of eight");
    assert_eq!(mapping.len(), 2 * PAGE);
    mapping.close().expect("close");
}

#[test]
fn accesses_outside_the_mapping_are_out_of_range() {
    if !common::require_uffd() {
        return;
    }
    let mapping = Mapping::new(mem_store(4 * PAGE), Options::default()).expect("Mapping::new");
    let end = 4 * PAGE;
    let err = mapping
        .write_at(end - 1, &[1, 2])
        .expect_err("write across the end");
    assert!(
        matches!(err, Error::OutOfRange { offset, len: 2, mapping_len } if offset == end - 1 && mapping_len == end),
        "{err:?}"
    );
    let mut buf = [0u8; 1];
    let err = mapping
        .read_at(end, &mut buf)
        .expect_err("read past the end");
    assert!(matches!(err, Error::OutOfRange { .. }), "{err:?}");
    let err = mapping
        .read_at(usize::MAX, &mut buf)
        .expect_err("offset overflowing usize");
    assert!(matches!(err, Error::OutOfRange { .. }), "{err:?}");
    let stats = mapping.stats();
    assert_eq!(
        stats.write_faults + stats.zero_faults,
        0,
        "rejected accesses must not fault"
    );
    // A rejected write changed nothing: the last byte is still a hole.
    mapping
        .read_at(end - 1, &mut buf)
        .expect("read the last byte");
    assert_eq!(buf, [0]);
    mapping.close().expect("close");
}

#[test]
fn missing_store_file_is_not_found() {
    let tmp = TempStore::new("does-not-exist.img");
    match FileStore::open(&tmp.path) {
        Err(StoreError::NotFound { path }) => assert_eq!(path, tmp.path),
        Err(other) => panic!("expected NotFound, got {other:?}"),
        Ok(_) => panic!("opened a file that does not exist"),
    }
}

/// Gives up root for uid/gid 65534 (nobody), dropping every capability. Returns false if
/// this process is not root (then it has no privileges to drop).
fn become_nobody() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return false;
    }
    // SAFETY: setgroups with a count of 0 reads no memory.
    let rc = unsafe { libc::setgroups(0, std::ptr::null()) };
    assert_eq!(rc, 0, "setgroups: {}", std::io::Error::last_os_error());
    // SAFETY: setgid/setuid take plain ids; glibc applies them to every thread.
    let rc = unsafe { libc::setgid(65534) };
    assert_eq!(rc, 0, "setgid: {}", std::io::Error::last_os_error());
    // SAFETY: as above.
    let rc = unsafe { libc::setuid(65534) };
    assert_eq!(rc, 0, "setuid: {}", std::io::Error::last_os_error());
    true
}

const READ_ONLY_TEST: &str = "read_only_store_file_is_not_writable";

#[test]
fn read_only_store_file_is_not_writable() {
    if child_case().as_deref() == Some("read-only") {
        let path = std::path::PathBuf::from(std::env::var("UDAX_PATH").expect("UDAX_PATH"));
        assert!(become_nobody(), "the child must start as root");
        std::fs::File::open(&path).expect("precondition: the file is readable");
        let write = std::fs::OpenOptions::new().write(true).open(&path);
        assert!(
            write.is_err(),
            "precondition: nobody cannot open a root 0644 file to write"
        );
        match FileStore::open(&path) {
            Err(StoreError::NotWritable { path: p, .. }) => assert_eq!(p, path),
            Err(other) => panic!("expected NotWritable, got {other:?}"),
            Ok(_) => panic!("FileStore::open opened a file this user may not write"),
        }
        say("NOT-WRITABLE-OK");
        return;
    }
    let tmp = TempStore::new("read-only.img");
    std::fs::write(&tmp.path, vec![1u8; 4 * PAGE]).expect("creating the file");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // Root ignores file modes, so the check runs in a child that becomes nobody; the
        // directory must be traversable for it, and the file readable but not writable.
        let dir_mode = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(tmp.dir.path(), dir_mode).expect("chmod 755 of the directory");
        let file_mode = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(&tmp.path, file_mode).expect("chmod 644 of the file");
        let path = tmp.path.to_str().expect("a UTF-8 temporary path");
        let output =
            common::run_child_with_env(READ_ONLY_TEST, "read-only", &[("UDAX_PATH", path)]);
        assert_child_passed(&output, "NOT-WRITABLE-OK");
    } else {
        let mode = std::fs::Permissions::from_mode(0o444);
        std::fs::set_permissions(&tmp.path, mode).expect("chmod 444 of the file");
        match FileStore::open(&tmp.path) {
            Err(StoreError::NotWritable { path, .. }) => assert_eq!(path, tmp.path),
            Err(other) => panic!("expected NotWritable, got {other:?}"),
            Ok(_) => panic!("FileStore::open opened a 0444 file for writing"),
        }
    }
}

/// Makes the userfaultfd syscall fail with EPERM in this thread (and threads it creates
/// later) with a seccomp filter, after setting no_new_privs.
#[cfg(target_arch = "x86_64")]
fn block_userfaultfd_syscall() {
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    // Offsets in struct seccomp_data.
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let mut program = [
        stmt(load, ARCH),
        jeq(AUDIT_ARCH_X86_64, 0, 3),
        stmt(load, NR),
        jeq(libc::SYS_userfaultfd as u32, 0, 1),
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) };
    assert_eq!(
        rc,
        0,
        "PR_SET_NO_NEW_PRIVS: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: PR_SET_SECCOMP with SECCOMP_MODE_FILTER reads a sock_fprog whose `filter`
    // points at `len` instructions; both live until the call returns (the kernel copies them).
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog,
        )
    };
    assert_eq!(rc, 0, "PR_SET_SECCOMP: {}", std::io::Error::last_os_error());
}

#[cfg(target_arch = "x86_64")]
const NO_UFFD_TEST: &str = "unavailable_userfaultfd_is_a_uffd_error_naming_the_fixes";

/// In a child that blocks the userfaultfd syscall (seccomp) and cannot open
/// /dev/userfaultfd (not root), Mapping::new returns Error::Uffd whose message names the
/// sysctl and the device.
#[cfg(target_arch = "x86_64")]
#[test]
fn unavailable_userfaultfd_is_a_uffd_error_naming_the_fixes() {
    if child_case().as_deref() == Some("no-uffd") {
        // Create the store before giving anything up: only userfaultfd may be missing.
        let store = mem_store(4 * PAGE);
        become_nobody();
        block_userfaultfd_syscall();
        // SAFETY: userfaultfd(2) takes an int of flags and returns a new fd or -1.
        let rc = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        assert_eq!(
            (rc, errno),
            (-1, Some(libc::EPERM)),
            "precondition: the filter works"
        );
        let device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/userfaultfd");
        assert!(
            device.is_err(),
            "precondition: /dev/userfaultfd must not open for this user"
        );
        let err = map_err(store, Options::default());
        let message = err.to_string();
        assert!(
            matches!(err, Error::Uffd(_)),
            "expected Error::Uffd, got {err:?}"
        );
        assert!(
            message.contains("vm.unprivileged_userfaultfd"),
            "message: {message}"
        );
        assert!(message.contains("/dev/userfaultfd"), "message: {message}");
        say("UFFD-UNAVAILABLE-OK");
        return;
    }
    let output = common::run_child(NO_UFFD_TEST, "no-uffd");
    assert_child_passed(&output, "UFFD-UNAVAILABLE-OK");
}

/// Sets the sysctl vm.unprivileged_userfaultfd to 0 for as long as it lives, and puts the
/// old value back on drop (a test that fails still restores it).
struct UnprivilegedUffdOff {
    old: Option<String>,
}

const UNPRIVILEGED_SYSCTL: &str = "/proc/sys/vm/unprivileged_userfaultfd";

impl UnprivilegedUffdOff {
    fn set() -> UnprivilegedUffdOff {
        let old = std::fs::read_to_string(UNPRIVILEGED_SYSCTL).expect("read the sysctl");
        let old = old.trim().to_string();
        if old == "0" {
            return UnprivilegedUffdOff { old: None };
        }
        std::fs::write(UNPRIVILEGED_SYSCTL, "0").expect("set vm.unprivileged_userfaultfd=0");
        UnprivilegedUffdOff { old: Some(old) }
    }
}

impl Drop for UnprivilegedUffdOff {
    fn drop(&mut self) {
        if let Some(old) = &self.old {
            let _ = std::fs::write(UNPRIVILEGED_SYSCTL, old);
        }
    }
}

const USER_MODE_TEST: &str = "an_unprivileged_user_gets_user_mode_only_only_when_asking_for_it";

/// The child of the test below, as nobody with vm.unprivileged_userfaultfd=0.
fn user_mode_only_child() {
    use std::os::fd::AsRawFd;
    let path = std::path::PathBuf::from(std::env::var("UDAX_PATH").expect("UDAX_PATH"));
    // Stores opened before giving root up: only userfaultfd may be missing.
    let file_store: Arc<dyn Store> =
        Arc::new(FileStore::create(&path, 4 * PAGE as u64).expect("create"));
    let store = mem_store(4 * PAGE);
    assert!(become_nobody(), "the child must start as root");
    // setuid made the process not dumpable: /proc/self/pagemap is root's now.
    let err = map_err(Arc::clone(&store), Options::default().user_mode_only(true));
    let message = err.to_string();
    assert!(message.contains("/proc/self/pagemap"), "{message}");
    assert!(
        message.contains("PR_SET_DUMPABLE"),
        "the way out: {message}"
    );
    assert!(message.contains("setuid"), "why: {message}");
    // SAFETY: PR_SET_DUMPABLE takes integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1 as libc::c_ulong, 0, 0, 0) };
    assert_eq!(
        rc,
        0,
        "PR_SET_DUMPABLE: {}",
        std::io::Error::last_os_error()
    );

    // The default (handler threads) never degrades silently.
    let err = map_err(Arc::clone(&store), Options::default());
    let message = err.to_string();
    assert!(
        matches!(err, Error::Uffd(udax::UffdError::UserModeOnly { .. })),
        "expected UffdError::UserModeOnly, got {err:?}"
    );
    for way_out in [
        "root",
        "vm.unprivileged_userfaultfd=1",
        "/dev/userfaultfd",
        "user_mode_only",
        "InThread",
        "prefault",
    ] {
        assert!(
            message.contains(way_out),
            "the message names {way_out:?}: {message}"
        );
    }

    // Opted in: it maps, says kernel-side accesses are not served, and indeed they fail.
    let mapping = Mapping::new(store, Options::default().user_mode_only(true)).expect("opt-in");
    assert!(
        !mapping.serves_kernel_access(),
        "a user-mode-only mapping must say so"
    );
    mapping
        .write_at(0, b"user")
        .expect("user-space accesses are served");
    let dev_zero = std::fs::File::open("/dev/zero").expect("open /dev/zero");
    // SAFETY: read(2) into page 2 of the live mapping, which is never touched: the kernel
    // fails with EFAULT rather than write through a pointer it cannot fault in.
    let n = unsafe {
        libc::read(
            dev_zero.as_raw_fd(),
            mapping.as_ptr().add(2 * PAGE).cast(),
            16,
        )
    };
    let errno = std::io::Error::last_os_error().raw_os_error();
    assert_eq!(
        (n, errno),
        (-1, Some(libc::EFAULT)),
        "a kernel-side access to a missing page"
    );
    mapping.close().expect("close");

    // In-thread resolution takes user-mode-only without asking: it never serves them.
    let options = Options::default().resolution(udax::Resolution::InThread);
    let mapping = Mapping::new(file_store, options).expect("in-thread, user-mode-only");
    assert_eq!(mapping.resolution(), udax::Resolution::InThread);
    assert!(!mapping.serves_kernel_access());
    mapping.write_at(PAGE, b"in-thread").expect("write");
    mapping.close().expect("close");
    say("USER-MODE-ONLY-OK");
}

/// With vm.unprivileged_userfaultfd=0 and /dev/userfaultfd root's, an unprivileged user
/// can get only a user-mode-only userfaultfd: `Mapping::new` in the default mode refuses
/// it with a typed error naming the ways out, maps with `Options::user_mode_only(true)`
/// and then reports that kernel-side accesses are not served; and a process made not
/// dumpable by setuid is told why /proc/self/pagemap is closed to it and how to open it.
#[test]
fn an_unprivileged_user_gets_user_mode_only_only_when_asking_for_it() {
    if child_case().as_deref() == Some("user-mode-only") {
        user_mode_only_child();
        return;
    }
    if !common::require_uffd() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(!common::in_ci(), "under CI=true this test must run as root");
        eprintln!("SKIPPED {USER_MODE_TEST}: needs root (to set the sysctl and become nobody)");
        return;
    }
    let device = std::fs::metadata("/dev/userfaultfd").map(|m| m.permissions().mode());
    if let Ok(mode) = device {
        assert_eq!(
            mode & 0o066,
            0,
            "precondition: /dev/userfaultfd must be root's only (mode {mode:o})"
        );
    }
    let _off = UnprivilegedUffdOff::set();
    let tmp = TempStore::new("user-mode-only.img");
    std::fs::set_permissions(tmp.dir.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod 777 of the directory");
    let path = tmp.path.to_str().expect("a UTF-8 temporary path");
    let output =
        common::run_child_with_env(USER_MODE_TEST, "user-mode-only", &[("UDAX_PATH", path)]);
    assert_child_passed(&output, "USER-MODE-ONLY-OK");
}
