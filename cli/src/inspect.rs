//! `udax inspect PATH|URI`: a store file's (or an NBD export's) size, allocated bytes and
//! extent list, as the store itself reports them (`Store::extent`), adjacent runs of one
//! kind merged. An export's allocated bytes are its data bytes (NBD reports no more).

use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Serialize;
use udax::{ExtentKind, FileStore, Store, StoreError};

use crate::args::InspectArgs;
use crate::error::CliError;
use crate::size::format_bytes;

/// Extent lists longer than this are shown as their first and last `SHOWN / 2` entries.
const SHOWN: usize = 20;

/// One run of data or hole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExtentRow {
    /// "data" or "hole".
    pub kind: &'static str,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub length: u64,
}

/// What `inspect` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    /// The file.
    pub path: String,
    /// Its size.
    pub size_bytes: u64,
    /// Disk space allocated (`st_blocks * 512`).
    pub allocated_bytes: u64,
    /// Bytes in data extents.
    pub data_bytes: u64,
    /// Bytes in holes.
    pub hole_bytes: u64,
    /// Number of extents.
    pub extent_count: usize,
    /// Every extent, in offset order.
    pub extents: Vec<ExtentRow>,
}

/// Runs `udax inspect`.
pub fn run(args: &InspectArgs) -> Result<(), CliError> {
    let target = args.path.to_string_lossy();
    let inspection = if crate::remote::is_uri(&target) {
        let remote = crate::remote::Remote::open(&target, true)?;
        inspection(&target, remote.store().as_ref(), None)?
    } else {
        inspect(&args.path)?
    };
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &inspection)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        write_text(&mut out, &inspection, args.all)
    };
    match written {
        // A closed stdout (`| head`) ends the output quietly.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| CliError::failed("writing to stdout", e)),
    }
}

/// Reads the extents of the store file at `path`.
pub fn inspect(path: &Path) -> Result<Inspection, CliError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        CliError::bad(
            format!("cannot inspect {}: {e}", path.display()),
            "check the path",
        )
    })?;
    if !meta.is_file() {
        return Err(CliError::bad(
            format!("{} is not a regular file", path.display()),
            "pass a store file",
        ));
    }
    let store = FileStore::open(path).map_err(|e| match e {
        StoreError::NotFound { .. } | StoreError::NotWritable { .. } | StoreError::Open { .. } => {
            CliError::bad(format!("cannot open {}", path.display()), e.to_string())
        }
        other => CliError::failed(format!("opening {}", path.display()), other),
    })?;
    inspection(
        &path.display().to_string(),
        &store,
        Some(meta.blocks() * 512),
    )
}

/// The inspection of `store` (named `name`), with `allocated` bytes if known (else its
/// data bytes).
fn inspection(
    name: &str,
    store: &dyn Store,
    allocated: Option<u64>,
) -> Result<Inspection, CliError> {
    let extents = extents(store)
        .map_err(|e| CliError::failed(format!("reading the extents of {name}"), e))?;
    let bytes_of = |kind: &str| -> u64 {
        extents
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.length)
            .sum()
    };
    Ok(Inspection {
        path: name.to_string(),
        size_bytes: store.len(),
        allocated_bytes: allocated.unwrap_or_else(|| bytes_of("data")),
        data_bytes: bytes_of("data"),
        hole_bytes: bytes_of("hole"),
        extent_count: extents.len(),
        extents,
    })
}

/// Walks the store from 0 to its end, merging adjacent runs of one kind.
fn extents(store: &dyn Store) -> Result<Vec<ExtentRow>, StoreError> {
    let mut rows: Vec<ExtentRow> = Vec::new();
    let len = store.len();
    let mut offset = 0;
    while offset < len {
        let extent = store.extent(offset)?;
        let kind = match extent.kind {
            ExtentKind::Data => "data",
            ExtentKind::Hole => "hole",
        };
        // A store reports at least one byte; guard against a broken one anyway.
        let length = extent.len.clamp(1, len - offset);
        match rows.last_mut() {
            Some(last) if last.kind == kind => last.length += length,
            _ => rows.push(ExtentRow {
                kind,
                offset,
                length,
            }),
        }
        offset += length;
    }
    Ok(rows)
}

fn write_text(out: &mut dyn Write, i: &Inspection, all: bool) -> io::Result<()> {
    let count = |kind: &str| i.extents.iter().filter(|e| e.kind == kind).count();
    writeln!(out, "{}", i.path)?;
    writeln!(
        out,
        "size:      {} ({} bytes)",
        format_bytes(i.size_bytes),
        i.size_bytes
    )?;
    writeln!(
        out,
        "allocated: {} ({} bytes)",
        format_bytes(i.allocated_bytes),
        i.allocated_bytes
    )?;
    writeln!(
        out,
        "extents:   {} ({} data, {}; {} holes, {})",
        i.extent_count,
        count("data"),
        format_bytes(i.data_bytes),
        count("hole"),
        format_bytes(i.hole_bytes)
    )?;
    let width = i.size_bytes.to_string().len();
    let row = |out: &mut dyn Write, e: &ExtentRow| {
        writeln!(
            out,
            "  {}  {:>width$}  {:>width$}  ({})",
            e.kind,
            e.offset,
            e.length,
            format_bytes(e.length)
        )
    };
    writeln!(out, "  kind  {:>width$}  {:>width$}", "offset", "length")?;
    if all || i.extents.len() <= SHOWN {
        for e in &i.extents {
            row(out, e)?;
        }
    } else {
        let half = SHOWN / 2;
        for e in &i.extents[..half] {
            row(out, e)?;
        }
        writeln!(
            out,
            "  ... {} more extents (--all lists them) ...",
            i.extents.len() - 2 * half
        )?;
        for e in &i.extents[i.extents.len() - half..] {
            row(out, e)?;
        }
    }
    Ok(())
}
