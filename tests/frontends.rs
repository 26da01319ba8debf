//! What the C and Python front-ends need of the library: stores over a caller's
//! descriptor opened with O_DIRECT.

mod common;

use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;

use common::require_uffd;
use udax::{FileStore, Mapping, Options, Store};

const MIB: usize = 1 << 20;

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
