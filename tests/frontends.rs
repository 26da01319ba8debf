//! What the C and Python front-ends need of the library: mappings at a given address
//! (UMAP_FIXED), read-only mappings (PROT_READ), stores over a caller's descriptor opened
//! with O_DIRECT, and one budget shared by several mappings (UMap's global buffer).

mod common;

use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;

use common::{PAGE, child_case, describe, require_uffd, run_child, say};
use udax::{Error, FileStore, Granularity, Mapping, MemStore, Options, SharedBudget, Store};

const MIB: usize = 1 << 20;

/// Reserves `len` bytes of address space and unmaps them, returning a free address.
fn free_address(len: usize) -> usize {
    // SAFETY: a fresh anonymous mapping, unmapped at once; only its address is kept.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        libc::munmap(p, len);
        p as usize
    }
}

#[test]
fn a_mapping_goes_where_it_is_asked_and_not_over_another() {
    if !require_uffd() {
        return;
    }
    let store = || Arc::new(MemStore::new(MIB as u64));
    let fixed = |address| Options::default().address(address);
    // Back to back: the second right after the first. Another test thread may take the
    // free range between `free_address` and the maps (EEXIST): then try another one.
    let taken = |result: &Result<Mapping, Error>| matches!(result, Err(Error::Os { source, .. }) if source.raw_os_error() == Some(libc::EEXIST));
    let (at, first, second) = (0..10)
        .find_map(|_| {
            let at = free_address(2 * MIB);
            let first = Mapping::new(store(), fixed(at));
            if taken(&first) {
                return None;
            }
            let second = Mapping::new(store(), fixed(at + MIB));
            if taken(&second) {
                return None;
            }
            Some((at, first.expect("map at"), second.expect("next")))
        })
        .expect("a free 2 MiB range within 10 tries");
    assert_eq!(first.as_ptr() as usize, at);
    assert_eq!(second.as_ptr() as usize, at + MIB);
    first.write_at(0, b"one").expect("write first");
    second.write_at(0, b"two").expect("write second");
    let mut buf = [0u8; 3];
    first.read_at(0, &mut buf).expect("read first");
    assert_eq!(&buf, b"one");
    // Not over a live mapping without the caller's say-so...
    let over = Mapping::new(store(), Options::default().address(at));
    match over {
        Err(Error::Os { source, .. }) => assert_eq!(source.raw_os_error(), Some(libc::EEXIST)),
        other => panic!("mapping over a live mapping: {:?}", other.map(|m| m.len())),
    }
    // ...nor unaligned, nor a 2 MiB mapping off a 2 MiB boundary.
    assert!(Mapping::new(store(), Options::default().address(at + 1)).is_err());
    let huge = Options::default()
        .granularity(Granularity::Huge)
        .address(at + 2 * MIB + PAGE);
    assert!(matches!(
        Mapping::new(Arc::new(MemStore::new(2 * MIB as u64)), huge),
        Err(Error::IncompatibleOptions { .. })
    ));
    drop(second);
    // With the caller's say-so, over its own reservation (MAP_FIXED).
    let reserved = free_address(MIB);
    // SAFETY: an anonymous mapping at a free address, which this test owns.
    let p = unsafe {
        libc::mmap(
            reserved as *mut libc::c_void,
            MIB,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    assert_eq!(p as usize, reserved);
    // SAFETY: the range is this test's reservation just made, referenced by nothing.
    let options = unsafe { Options::default().address_replacing(reserved) };
    let replaced = Mapping::new(store(), options).expect("map over own reservation");
    assert_eq!(replaced.as_ptr() as usize, reserved);
    replaced.write_at(4096, b"x").expect("write");
    replaced.close().expect("close");
    first.close().expect("close");
}

#[test]
fn a_read_only_mapping_reads_and_refuses_writes() {
    if !require_uffd() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ro.img");
    let mut data = vec![0u8; 2 * MIB];
    data[5000] = 42;
    std::fs::write(&path, &data).expect("write file");
    let fd = OwnedFd::from(std::fs::File::open(&path).expect("open read-only"));
    let store = Arc::new(FileStore::from_fd(fd).expect("store over fd"));
    for granularity in [Granularity::Page, Granularity::Huge] {
        let options = Options::default().read_only(true).granularity(granularity);
        let mapping = Mapping::new(store.clone(), options).expect("map read-only");
        assert!(mapping.is_read_only());
        let mut byte = [0u8];
        mapping.read_at(5000, &mut byte).expect("read");
        assert_eq!(byte[0], 42);
        assert!(matches!(mapping.write_at(0, b"x"), Err(Error::ReadOnly)));
        assert!(matches!(
            mapping.prefault(0, PAGE, true),
            Err(Error::ReadOnly)
        ));
        mapping.prefault(0, 2 * MIB, false).expect("read prefault");
        mapping.flush().expect("flush writes nothing");
        assert_eq!(mapping.stats().pages_written_back, 0);
        mapping.close().expect("close");
    }
}

#[test]
fn a_write_through_the_pointer_of_a_read_only_mapping_is_sigsegv() {
    if child_case().as_deref() == Some("ro-write") {
        let store = Arc::new(MemStore::new(MIB as u64));
        let mapping = Mapping::new(store, Options::default().read_only(true)).expect("map");
        // SAFETY: inside the mapping; the read faults in the zero page.
        let value = unsafe { mapping.as_ptr().read_volatile() };
        say(&format!("READ {value}"));
        // SAFETY: inside the mapping; the kernel refuses the write (PROT_READ).
        unsafe { mapping.as_ptr().add(PAGE).write_volatile(1) };
        say("SURVIVED");
        return;
    }
    if !require_uffd() {
        return;
    }
    let output = run_child(
        "a_write_through_the_pointer_of_a_read_only_mapping_is_sigsegv",
        "ro-write",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("READ 0"), "{}", describe(&output));
    assert!(!stdout.contains("SURVIVED"), "{}", describe(&output));
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGSEGV),
        "{}",
        describe(&output)
    );
}

#[test]
fn an_o_direct_descriptor_backs_a_mapping() {
    if !require_uffd() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("direct.img");
    std::fs::write(&path, vec![3u8; MIB]).expect("write file");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path);
    let Ok(file) = file else {
        // tmpfs has no O_DIRECT before Linux 6.6.
        eprintln!("SKIPPED: O_DIRECT unsupported on this file system");
        return;
    };
    let store = Arc::new(FileStore::from_fd(OwnedFd::from(file)).expect("store"));
    assert_eq!(store.len(), MIB as u64);
    assert_eq!(store.path(), path.canonicalize().expect("canonical path"));
    let mapping = Mapping::new(store, Options::default()).expect("map");
    let mut byte = [0u8];
    mapping.read_at(12345, &mut byte).expect("read"); // an unaligned single-page read
    assert_eq!(byte[0], 3);
    mapping.write_at(4097, b"direct").expect("write");
    mapping.close().expect("close");
    let mut back = [0u8; 6];
    std::fs::File::open(&path)
        .and_then(|f| f.read_exact_at(&mut back, 4097))
        .expect("read back");
    assert_eq!(&back, b"direct");
}

#[test]
fn mappings_sharing_a_budget_stay_under_it_together() {
    if !require_uffd() {
        return;
    }
    assert!(matches!(
        SharedBudget::new(64 * 1024 - 1),
        Err(Error::BudgetTooSmall { .. })
    ));
    let budget = SharedBudget::new(2 * MIB as u64).expect("budget");
    let threads = 2;
    let options = Options::default()
        .handler_threads(threads)
        .shared_budget(&budget);
    let stores: Vec<_> = (0..3)
        .map(|_| Arc::new(MemStore::new(4 * MIB as u64)))
        .collect();
    let mappings: Vec<_> = stores
        .iter()
        .map(|s| Mapping::new(s.clone(), options.clone()).expect("map"))
        .collect();
    // 12 MiB written through three mappings under 2 MiB for all of them.
    for page in 0..(4 * MIB / PAGE) {
        for (i, mapping) in mappings.iter().enumerate() {
            mapping
                .write_at(page * PAGE, &[i as u8 + 1, page as u8])
                .expect("write");
        }
    }
    let budget_pages = (2 * MIB / PAGE) as u64;
    let slack = (3 * threads) as u64;
    assert!(
        budget.peak_pages() <= budget_pages + slack,
        "peak {} pages over a budget of {budget_pages}",
        budget.peak_pages()
    );
    assert!(budget.resident_pages() <= budget_pages + slack);
    // Each mapping was evicted from, and kept some pages: the largest goes first.
    for mapping in &mappings {
        let stats = mapping.stats();
        assert!(stats.evicted_dirty > 0, "{stats:?}");
        assert!(stats.resident_pages > 0, "{stats:?}");
    }
    for (i, mapping) in mappings.iter().enumerate() {
        let mut two = [0u8; 2];
        for page in [0, 511, 1023] {
            mapping.read_at(page * PAGE, &mut two).expect("read");
            assert_eq!(two, [i as u8 + 1, page as u8]);
        }
    }
    for mapping in mappings {
        mapping.close().expect("close");
    }
    // Closed mappings drop out of the sum.
    assert_eq!(budget.resident_pages(), 0);
    for (i, store) in stores.iter().enumerate() {
        let mut two = [0u8; 2];
        store
            .read_at(1000 * PAGE as u64, &mut two)
            .expect("store read");
        assert_eq!(two, [i as u8 + 1, 1000u32 as u8]);
    }
    // In-thread resolution cannot hold one.
    let in_thread = Options::default()
        .resolution(udax::Resolution::InThread)
        .shared_budget(&budget);
    match Mapping::new(Arc::new(MemStore::new(MIB as u64)), in_thread) {
        Err(Error::IncompatibleOptions { .. }) => {}
        // Off x86-64 in-thread falls back to handler threads, which may hold it.
        Ok(mapping) => assert_ne!(mapping.resolution(), udax::Resolution::InThread),
        Err(e) => panic!("in-thread with a shared budget: {e}"),
    }
}
