//! Resource limits: running out of file descriptors, address space or memory maps gives a
//! typed `Error::ResourceLimit` that names the limit (never an abort, never the advice to
//! run as root). Each case runs in a child process, whose limits it lowers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use udax::{Error, Mapping, MemStore, Options};

fn set_soft_limit(resource: libc::__rlimit_resource_t, value: u64) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one `struct rlimit`.
    unsafe {
        assert_eq!(libc::getrlimit(resource, &mut old), 0);
        let new = libc::rlimit {
            rlim_cur: value,
            rlim_max: old.rlim_max,
        };
        assert_eq!(libc::setrlimit(resource, &new), 0, "setrlimit");
    }
    old
}

fn restore_limit(resource: libc::__rlimit_resource_t, old: libc::rlimit) {
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(resource, &old) }, 0);
}

/// The error of mapping a MemStore of `len` bytes, which must be a named limit.
#[track_caller]
fn expect_limit(len: u64, options: Options, limit: &str) -> String {
    match Mapping::new(Arc::new(MemStore::new(len)), options) {
        Err(error @ Error::ResourceLimit { .. }) => {
            let text = error.to_string();
            assert!(text.contains(limit), "the message names {limit}: {text}");
            assert!(!text.contains("root"), "no advice to run as root: {text}");
            text
        }
        Err(other) => panic!("expected ResourceLimit naming {limit}, got {other}"),
        Ok(_) => panic!("expected ResourceLimit naming {limit}, but it mapped"),
    }
}

fn out_of_fds() {
    let highest = std::fs::read_dir("/proc/self/fd")
        .expect("fds")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .expect("some fd");
    let old = set_soft_limit(libc::RLIMIT_NOFILE, highest + 1);
    // Fill any free number below the limit, so that no fd is left.
    let mut fillers = Vec::new();
    // SAFETY: dup of stdin returns a new fd or -1; the new ones are closed below.
    while let fd @ 0.. = unsafe { libc::dup(0) } {
        fillers.push(fd);
    }
    // Three handler threads: a pool this process has not made yet, so a uffd to open.
    let options = Options::default().handler_threads(3);
    let text = expect_limit(1 << 20, options.clone(), "RLIMIT_NOFILE");
    for fd in fillers {
        // SAFETY: closes the duplicates made above.
        unsafe { libc::close(fd) };
    }
    restore_limit(libc::RLIMIT_NOFILE, old);
    say(&text);
    let mapping = Mapping::new(Arc::new(MemStore::new(1 << 20)), options).expect("map again");
    mapping.close().expect("close");
}

fn out_of_address_space() {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let size_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmSize:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmSize");
    let old = set_soft_limit(libc::RLIMIT_AS, (size_kib << 10) + (64 << 20));
    say(&expect_limit(1 << 30, Options::default(), "RLIMIT_AS"));
    restore_limit(libc::RLIMIT_AS, old);
}

fn out_of_memory_maps() {
    // Fill the map count with one-page maps of alternating protection (so none merge).
    let mut maps = Vec::new();
    for number in 0.. {
        let prot = if number % 2 == 0 {
            libc::PROT_READ
        } else {
            libc::PROT_NONE
        };
        // SAFETY: a new anonymous mapping at an address of the kernel's choosing.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            break;
        }
        maps.push(raw);
        assert!(number < 10_000_000, "vm.max_map_count never reached");
    }
    let text = expect_limit(1 << 20, Options::default(), "vm.max_map_count");
    for raw in maps {
        // SAFETY: the one-page maps made above, referenced by nothing.
        unsafe { libc::munmap(raw, PAGE) };
    }
    say(&text);
    let mapping = Mapping::new(Arc::new(MemStore::new(1 << 20)), Options::default());
    mapping.expect("maps again").close().expect("close");
}

fn run(case: &str, test_name: &str, body: fn()) {
    run_case(case, test_name, Duration::from_secs(120), body);
}

/// Out of fds (RLIMIT_NOFILE) when a uffd must be opened.
#[test]
fn out_of_file_descriptors_names_rlimit_nofile() {
    run(
        "fds",
        "out_of_file_descriptors_names_rlimit_nofile",
        out_of_fds,
    );
}

/// Out of address space (RLIMIT_AS) when the mapping is reserved.
#[test]
fn out_of_address_space_names_rlimit_as() {
    run(
        "as",
        "out_of_address_space_names_rlimit_as",
        out_of_address_space,
    );
}

/// Out of memory maps (vm.max_map_count) when the mapping is reserved.
#[test]
fn out_of_memory_maps_names_max_map_count() {
    run(
        "maps",
        "out_of_memory_maps_names_max_map_count",
        out_of_memory_maps,
    );
}
