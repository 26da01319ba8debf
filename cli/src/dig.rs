//! `udax dig FILE`: punches the file's all-zero 4 KiB pages into holes, as
//! `fallocate --dig-holes` does, and reports the bytes freed. A Full snapshot's memory
//! file is dense (its zero pages are written out); dug, it costs only its data, and
//! `udax firecracker` serves its holes as zero pages without reading them.

use std::os::unix::fs::MetadataExt;

use udax::{ExtentKind, FileStore, Store};

use crate::args::DigArgs;
use crate::error::CliError;
use crate::size::format_bytes;

/// Bytes read at a time.
const CHUNK: usize = 1 << 20;
const PAGE: usize = 4096;

/// Runs `udax dig`.
pub fn run(args: &DigArgs) -> Result<(), CliError> {
    let store = FileStore::open(&args.path).map_err(CliError::bad_as_is)?;
    let allocated = || {
        store
            .file()
            .metadata()
            .map(|m| m.blocks() * 512)
            .unwrap_or(0)
    };
    let before = allocated();
    let failed = |what: &str, e: udax::StoreError| {
        CliError::failed(format!("{what} {}", args.path.display()), e)
    };
    let mut buf = vec![0u8; CHUNK];
    let mut punched = 0u64;
    let mut offset = 0;
    while offset < store.len() {
        let extent = store.extent(offset).map_err(|e| failed("querying", e))?;
        if extent.kind == ExtentKind::Hole {
            offset += extent.len;
            continue;
        }
        let end = offset + extent.len;
        while offset < end {
            let len = (CHUNK as u64).min(end - offset) as usize;
            store
                .read_at(offset, &mut buf[..len])
                .map_err(|e| failed("reading", e))?;
            punched +=
                punch_zero_runs(&store, offset, &buf[..len]).map_err(|e| failed("punching", e))?;
            offset += len as u64;
        }
    }
    store.sync().map_err(|e| failed("syncing", e))?;
    let freed = before.saturating_sub(allocated());
    println!(
        "{}: punched {} of zero pages; {} freed ({} allocated now)",
        args.path.display(),
        format_bytes(punched),
        format_bytes(freed),
        format_bytes(allocated()),
    );
    Ok(())
}

/// Punches the runs of whole zero pages of `bytes` (read at `offset`, page-aligned);
/// returns the bytes punched. A partial page at the end is left alone.
fn punch_zero_runs(store: &FileStore, offset: u64, bytes: &[u8]) -> Result<u64, udax::StoreError> {
    let mut punched = 0;
    let mut run: Option<usize> = None;
    let pages = bytes.chunks_exact(PAGE);
    let count = pages.len();
    for (i, page) in pages.enumerate() {
        let zero = page.iter().all(|&b| b == 0);
        match (zero, run) {
            (true, None) => run = Some(i),
            (false, Some(start)) => {
                punched += punch(store, offset, start, i)?;
                run = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run {
        punched += punch(store, offset, start, count)?;
    }
    Ok(punched)
}

/// Punches pages `start..end` of the chunk at `offset`.
fn punch(
    store: &FileStore,
    offset: u64,
    start: usize,
    end: usize,
) -> Result<u64, udax::StoreError> {
    let len = ((end - start) * PAGE) as u64;
    store.punch_hole(offset + (start * PAGE) as u64, len)?;
    Ok(len)
}
