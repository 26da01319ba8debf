//! The lazy-restore workload: a sparse disk image (or a VM snapshot) on an NBD server or in
//! a Ceph cluster (RBD), of which a program touches a small random part first. With udax
//! the image is mapped and only the touched pages cross the network (holes cost nothing);
//! without it, a user copies the image to a local file first (`nbdcopy` or `rbd export`,
//! which skip holes) and mmaps the copy.
//!
//! The export is prepared once (untimed): holes over SIZE, then `--data` of it written as
//! 1 MiB runs at random places. Each repeat runs udax (a fresh store: no cached layout) and
//! copy-then-mmap (copy into a fresh sparse file, mmap, touch the same pages), alternating
//! which goes first. Reported: times, bytes moved over the network (udax: the store's READ
//! bytes; the copy: the image's data bytes, which is what the copy reads), READ requests and
//! the peak of requests in flight.

use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use udax::{ExtentKind, Store};

use crate::args::{LazyRestore, Plan, Variant};
use crate::engine::{Engine, Region};
use crate::error::CliError;
use crate::kernel::KernelMap;
use crate::prng::permutation;
use crate::remote::{Remote, RemoteStats};
use crate::size::format_bytes;
use crate::udax_engine::UdaxMap;

/// The size of the data runs written into the image.
const RUN: u64 = 1 << 20;

/// One run's measurements.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Time to the last touched page (the copy included, for copy-then-mmap).
    took: Duration,
    /// Of it, the copy (zero for udax).
    copy: Duration,
    /// The remote store's requests (udax only).
    nbd: Option<RemoteStats>,
}

/// Runs lazy-restore on `plan`'s export and prints its table.
pub fn run(plan: &Plan, lazy: LazyRestore) -> Result<(), CliError> {
    let uri = plan.remote.as_deref().ok_or_else(|| {
        CliError::bad(
            "lazy-restore maps an NBD export or an RBD image",
            "pass --store nbd://... or rbd:POOL/IMAGE",
        )
    })?;
    let data = prepare_image(uri, plan.size, lazy.data)?;
    let all = u32::try_from(plan.pages()).unwrap_or(u32::MAX);
    let count = ((all as f64) * lazy.touch).round() as usize;
    let pages: Vec<u32> = permutation(0, all, 0x1a2f)
        .into_iter()
        .take(count)
        .collect();
    let local = std::env::temp_dir().join(format!("udax-lazy-restore-{}.img", std::process::id()));
    let mut rows = Vec::new();
    for variant in &plan.variants {
        let (mut udax, mut copy) = (Vec::new(), Vec::new());
        for repeat in 0..plan.repeat {
            for udax_first in [repeat % 2 == 0, repeat % 2 == 1] {
                if udax_first {
                    udax.push(run_udax(uri, plan.size, variant, &pages, plan.threads)?);
                } else {
                    copy.push(run_copy(uri, &local, plan.size, &pages, plan.threads)?);
                }
            }
        }
        rows.push((variant.label(), udax, copy));
    }
    let _ = std::fs::remove_file(&local);
    let stdout = io::stdout();
    write_table(&mut stdout.lock(), plan, lazy, data, count, &rows)
        .map_err(|e| CliError::failed("writing to stdout", e))
}

/// Makes the export's first `size` bytes a sparse image with `fraction` of it data;
/// returns the data bytes of the whole export afterwards.
fn prepare_image(uri: &str, size: u64, fraction: f64) -> Result<u64, CliError> {
    let remote = Remote::open(uri, false)?;
    let store = remote.store();
    if store.len() < size {
        return Err(CliError::bad(
            format!(
                "export {uri} holds {} bytes, less than --size {size}",
                store.len()
            ),
            "pass a smaller --size or serve a larger image",
        ));
    }
    let failed = |e| CliError::failed(format!("preparing the image on {uri}"), e);
    store.punch_hole(0, size).map_err(failed)?;
    let slots = u32::try_from(size / RUN).unwrap_or(u32::MAX);
    let runs = ((slots as f64) * fraction).round() as usize;
    let mut buf = vec![0u8; RUN as usize];
    for slot in permutation(0, slots, 0x5eed).into_iter().take(runs) {
        for (i, word) in buf.chunks_exact_mut(8).enumerate() {
            word.copy_from_slice(&(u64::from(slot) << 20 | i as u64 | 1).to_ne_bytes());
        }
        store
            .write_at(u64::from(slot) * RUN, &buf)
            .map_err(failed)?;
    }
    store.sync().map_err(failed)?;
    drop(store);
    let fresh = Remote::open(uri, true)?;
    data_bytes(fresh.store().as_ref())
        .map_err(|e| CliError::failed(format!("reading the extents of {uri}"), e))
}

/// The bytes in data extents of `store`.
fn data_bytes(store: &dyn Store) -> Result<u64, udax::StoreError> {
    let (mut offset, mut data) = (0, 0);
    while offset < store.len() {
        let extent = store.extent(offset)?;
        if extent.kind == ExtentKind::Data {
            data += extent.len;
        }
        offset += extent.len.max(1);
    }
    Ok(data)
}

/// udax over the remote store: a fresh store and mapping, then the touches.
fn run_udax(
    uri: &str,
    size: u64,
    variant: &Variant,
    pages: &[u32],
    threads: usize,
) -> Result<Sample, CliError> {
    let remote = Remote::open(uri, false)?;
    let start = Instant::now();
    let map = UdaxMap::over(remote.store(), size, variant, None)?;
    touch(map.region(), pages, threads);
    let took = start.elapsed();
    map.close()?;
    Ok(Sample {
        took,
        copy: Duration::ZERO,
        nbd: Some(remote.stats()),
    })
}

/// Copy-then-mmap: `nbdcopy` or `rbd export` into a fresh sparse file, mmap it, touch.
fn run_copy(
    uri: &str,
    local: &Path,
    size: u64,
    pages: &[u32],
    threads: usize,
) -> Result<Sample, CliError> {
    let image_len = Remote::open(uri, true)?.store().len();
    let start = Instant::now();
    crate::remote::copy_to_file(uri, local, image_len)?;
    let copy = start.elapsed();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(local)
        .map_err(|e| CliError::failed(format!("opening {}", local.display()), e))?;
    let map = KernelMap::new(&file, size as usize)
        .map_err(|e| CliError::failed("mmap of the local copy", e))?;
    touch(map.region(), pages, threads);
    let took = start.elapsed();
    drop(map);
    let _ = std::fs::remove_file(local);
    Ok(Sample {
        took,
        copy,
        nbd: None,
    })
}

/// Reads the first byte of each of `pages`, split in `threads` contiguous shares.
fn touch(region: Region, pages: &[u32], threads: usize) {
    let share = pages.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        for part in pages.chunks(share) {
            scope.spawn(move || {
                let sum = part.iter().fold(0u64, |acc, &p| {
                    acc + u64::from(region.read_page(p as usize))
                });
                std::hint::black_box(sum);
            });
        }
    });
}

/// The median and the range of `samples`' times, in seconds.
fn seconds(samples: &[Sample], of: fn(&Sample) -> Duration) -> (f64, f64, f64) {
    let mut times: Vec<f64> = samples.iter().map(|s| of(s).as_secs_f64()).collect();
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(0.0);
    let (min, max) = (
        times.first().copied().unwrap_or(0.0),
        times.last().copied().unwrap_or(0.0),
    );
    (median, min, max)
}

/// The table: per variant, udax over the remote store beside copy-then-mmap.
fn write_table(
    out: &mut dyn Write,
    plan: &Plan,
    lazy: LazyRestore,
    data: u64,
    touched: usize,
    rows: &[(String, Vec<Sample>, Vec<Sample>)],
) -> io::Result<()> {
    let uri = plan.remote.as_deref().unwrap_or_default();
    let protocol = crate::remote::protocol_of(uri);
    writeln!(
        out,
        "\nlazy-restore: {} image ({} data, {:.0}%), {touched} pages touched ({:.0}%), {} thread(s), {} run(s)",
        format_bytes(plan.size),
        format_bytes(data),
        lazy.data * 100.0,
        lazy.touch * 100.0,
        plan.threads,
        plan.repeat
    )?;
    writeln!(
        out,
        "  {:<18} {:<8} {:>22} {:>10} {:>8} {:>9} {:>6}",
        "engine", "variant", "seconds (median, range)", "moved", "READs", "layout", "peak"
    )?;
    for (label, udax, copy) in rows {
        let (u, u_min, u_max) = seconds(udax, |s| s.took);
        let nbd = udax
            .iter()
            .filter_map(|s| s.nbd)
            .next_back()
            .unwrap_or_default();
        writeln!(
            out,
            "  {:<18} {:<8} {:>8.3} ({:.3}-{:.3}) {:>10} {:>8} {:>9} {:>6}",
            format!("udax over {protocol}"),
            label,
            u,
            u_min,
            u_max,
            format_bytes(nbd.bytes_read),
            nbd.reads,
            nbd.layout_queries,
            nbd.in_flight_peak
        )?;
        let (c, c_min, c_max) = seconds(copy, |s| s.took);
        let (copy_only, _, _) = seconds(copy, |s| s.copy);
        writeln!(
            out,
            "  {:<18} {:<8} {:>8.3} ({:.3}-{:.3}) {:>10} {:>8} {:>9} {:>6}",
            format!("{} + mmap", crate::remote::copy_tool(uri)),
            "-",
            c,
            c_min,
            c_max,
            format_bytes(data),
            "-",
            "-",
            "-"
        )?;
        writeln!(
            out,
            "  copy-then-mmap / udax: {:.2}x time ({copy_only:.3} s of it the copy), {:.2}x bytes",
            c / u.max(f64::MIN_POSITIVE),
            data as f64 / (nbd.bytes_read.max(1)) as f64
        )?;
    }
    Ok(())
}
