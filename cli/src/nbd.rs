//! NBD exports where the command takes a store: telling a URI from a path (opening one is
//! `remote.rs`'s), and copying a store's layout and bytes into another
//! (the benchmark mirrors its local file into the export before a udax run and back after
//! it, untimed, so both engines start from and are checked on the same bytes).

use udax::{ExtentKind, Store, StoreError};

/// The URI schemes of the NBD URI format (libnbd accepts these).
const SCHEMES: [&str; 6] = [
    "nbd://",
    "nbds://",
    "nbd+unix://",
    "nbds+unix://",
    "nbd+vsock://",
    "nbds+vsock://",
];

/// Whether `text` names an NBD export rather than a file.
pub fn is_uri(text: &str) -> bool {
    SCHEMES.iter().any(|scheme| text.starts_with(scheme))
}

/// Copies `from`'s first `size` bytes into `to`: holes punched, data written in 1 MiB
/// pieces, then `to` synced. Returns the bytes of data copied.
pub fn copy(from: &dyn Store, to: &dyn Store, size: u64) -> Result<u64, StoreError> {
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK as usize];
    let (mut offset, mut copied) = (0, 0);
    while offset < size {
        let extent = from.extent(offset)?;
        let end = size.min(offset + extent.len.max(1));
        match extent.kind {
            ExtentKind::Hole => to.punch_hole(offset, end - offset)?,
            ExtentKind::Data => {
                let mut at = offset;
                while at < end {
                    let piece = &mut buf[..CHUNK.min(end - at) as usize];
                    from.read_at(at, piece)?;
                    to.write_at(at, piece)?;
                    at += piece.len() as u64;
                }
                copied += end - offset;
            }
        }
        offset = end;
    }
    to.sync()?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use udax::MemStore;

    #[test]
    fn tells_uris_from_paths() {
        assert!(is_uri("nbd://localhost:10809/disk"));
        assert!(is_uri("nbd+unix:///disk?socket=/tmp/s"));
        assert!(!is_uri("/tmp/nbd://x"));
        assert!(!is_uri("disk.img"));
    }

    #[test]
    fn copies_holes_and_data() {
        let from = MemStore::new(4 << 20);
        from.write_at(3 << 20, &[7; 4096]).expect("write");
        let to = MemStore::new(4 << 20);
        to.write_at(0, &[1; 4096]).expect("write");
        assert!(copy(&from, &to, 4 << 20).expect("copy") >= 4096);
        let mut page = [9u8; 4096];
        to.read_at(0, &mut page).expect("read");
        assert_eq!(page, [0; 4096]);
        to.read_at(3 << 20, &mut page).expect("read");
        assert_eq!(page, [7; 4096]);
    }
}
