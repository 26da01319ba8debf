//! `udax firecracker`: an external page-fault handler for a Firecracker microVM restored
//! from a snapshot (`mem_backend.backend_type = "Uffd"`), served by a udax adopted region.
//!
//! The protocol (Firecracker's docs/snapshotting/handling-page-faults-on-snapshot-resume.md):
//! we listen on a Unix stream socket; the VMM maps guest memory privately, registers it
//! with a userfaultfd (missing faults, `UFFD_FEATURE_EVENT_REMOVE`), connects and sends
//! ONE message, a JSON array of its regions, with the uffd attached (SCM_RIGHTS):
//! `[{"base_host_virt_addr", "size", "offset", "page_size", "page_size_kib"}, ...]`,
//! `offset` being where the region lies in the memory file and `page_size` (bytes; the
//! deprecated `page_size_kib` holds the same byte value) 4096 or 2 MiB. We serve its
//! faults until it closes the stream (or exits), then print the counters.
//!
//! The parsing is here, with serde_json, and the library takes the parsed ranges
//! (`udax::Adopted`): the library carries no JSON dependency. Further messages on the
//! stream (more uffds) are served the same way.
//!
//! Failures: a fault udax cannot serve poisons its page (the VMM's access gets SIGBUS),
//! said on stderr; a handler that cannot go on (a bad message, a panic) kills the VMM
//! found by SO_PEERCRED, since the VMM would otherwise wait forever on its next fault.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use udax::{
    Adopted, AdoptedRange, Error, FileStore, Granularity, LayeredStore, Options, Stats, Store,
};

use crate::args::FirecrackerArgs;
use crate::error::CliError;
use crate::size::parse_size;
use crate::uffd_socket::{Message, Peer, accept, listen};

/// How long the VMM may take to send its region list once connected.
const HANDSHAKE_PATIENCE: Duration = Duration::from_secs(30);
/// How often the serving loop looks at the counters (to report poisoned pages).
const TICK: Duration = Duration::from_millis(100);
/// Messages longer than this are refused (Firecracker's is a few hundred bytes).
const MAX_MESSAGE: usize = 1 << 20;
/// Failed faults after which udax stops trying and kills the VMM: a fault whose page
/// cannot even be poisoned is retried by the VMM forever otherwise.
const FAILURES_BEFORE_KILL: u64 = 1000;

/// One region of the VMM's message, as Firecracker's `GuestRegionUffdMapping` has it.
#[derive(Debug, Deserialize)]
struct GuestRegion {
    base_host_virt_addr: u64,
    size: usize,
    offset: u64,
    /// Bytes; absent from older Firecrackers' messages (4 KiB then).
    page_size: Option<usize>,
    /// Deprecated, and despite its name in bytes (as `page_size`).
    page_size_kib: Option<usize>,
}

/// Runs `udax firecracker`.
pub fn run(args: &FirecrackerArgs) -> Result<(), CliError> {
    let store = open_store(&args.mem_file, &args.diff)?;
    let prefetch = args.prefetch.as_deref().map(read_record).transpose()?;
    let options = options(args)?;
    let listener = listen(&args.socket)?;
    eprintln!("udax: listening on {}", args.socket.display());
    let peer = Arc::new(accept(&listener)?);
    kill_on_panic(&peer);
    let handshake = Instant::now();
    let first = match first_message(&peer) {
        Ok(message) => message,
        Err(error) => return Err(killed(&peer, error)),
    };
    let mut served = vec![adopt(&peer, first, &store, &options)?];
    let prefetched = prefetch.map(|offsets| {
        let start = Instant::now();
        (served[0].prefetch(&offsets), start.elapsed())
    });
    serve_until_hangup(&peer, &mut served, &store, &options)?;
    let serving = handshake.elapsed();
    let stats = served
        .iter()
        .map(Adopted::stats)
        .fold(Stats::default(), |a, b| a + b);
    let faults: u64 = served.iter().map(Adopted::faults).sum();
    let first_fault = served
        .iter()
        .filter_map(Adopted::first_fault_at)
        .min()
        .map(|at| at.saturating_duration_since(handshake));
    if let Some(path) = &args.record {
        let order: Vec<u64> = served.iter().flat_map(Adopted::first_faults).collect();
        write_record(path, &order)?;
    }
    let mut failure = None;
    for adopted in served {
        if let Err(error) = adopted.close() {
            failure.get_or_insert(error);
        }
    }
    print_counters(&stats, faults, prefetched, first_fault, serving);
    match failure {
        None => Ok(()),
        Some(error) => Err(CliError::failed(
            format!(
                "{} fault(s) could not be served; their pages were poisoned (SIGBUS in the VMM); the first",
                stats.sigbus_delivered
            ),
            error,
        )),
    }
}

/// The memory file, with the diff files layered over it (read-only).
fn open_store(mem_file: &Path, diffs: &[std::path::PathBuf]) -> Result<Arc<dyn Store>, CliError> {
    let open = |path: &Path| -> Result<Arc<dyn Store>, CliError> {
        let store = FileStore::open(path).map_err(CliError::bad_as_is)?;
        Ok(Arc::new(store))
    };
    let base = open(mem_file)?;
    if diffs.is_empty() {
        return Ok(base);
    }
    let diffs = diffs
        .iter()
        .map(|p| open(p))
        .collect::<Result<Vec<_>, _>>()?;
    let layered = LayeredStore::new(base, diffs).map_err(|e| {
        CliError::bad(
            format!("a --diff file is longer than the memory file ({e})"),
            "pass the diff snapshot's base as --mem-file",
        )
    })?;
    Ok(Arc::new(layered))
}

/// The library options: the fault-around window and the handler threads.
fn options(args: &FirecrackerArgs) -> Result<Options, CliError> {
    let default = if args.record.is_some() {
        "4KiB"
    } else {
        "64KiB"
    };
    let around = args.fault_around.as_deref().unwrap_or(default);
    let window = parse_size(around).map_err(|e| {
        CliError::bad(
            format!("--fault-around {around}: {e}"),
            "give a size such as 4KiB (none) or 64KiB",
        )
    })?;
    if window % 4096 != 0 || window == 0 || window > 2 << 20 {
        return Err(CliError::bad(
            format!("--fault-around {around} is not a multiple of 4KiB up to 2MiB"),
            "give a size such as 4KiB (none) or 64KiB",
        ));
    }
    let granularity = match window {
        4096 => Granularity::Page,
        window => Granularity::FaultAround(window as usize),
    };
    let mut options = Options::default().granularity(granularity);
    if let Some(threads) = args.threads {
        options = options.handler_threads(threads.max(1));
    }
    Ok(options)
}

/// Waits for the VMM's first message and reads all of it.
fn first_message(peer: &Peer) -> Result<(Vec<GuestRegion>, Vec<OwnedFd>), CliError> {
    match peer.wait_readable(Some(HANDSHAKE_PATIENCE)) {
        Ok(true) => {}
        Ok(false) => {
            return Err(CliError::bad(
                format!("the VMM sent no region list within {HANDSHAKE_PATIENCE:?}"),
                "point only a Firecracker restoring a snapshot (mem_backend Uffd) at the socket",
            ));
        }
        Err(e) => return Err(CliError::failed("waiting for the VMM's message", e)),
    }
    match peer.receive() {
        Ok(Some(message)) => parse_message(peer, message),
        Ok(None) => Err(CliError::bad(
            "the VMM closed the socket without sending its region list",
            "check the VMM's log",
        )),
        Err(e) => Err(bad_message(format!("cannot be received ({e})"))),
    }
}

/// Parses a message (reading the rest of it if it came in parts) into regions and fds.
fn parse_message(
    peer: &Peer,
    mut message: Message,
) -> Result<(Vec<GuestRegion>, Vec<OwnedFd>), CliError> {
    loop {
        match serde_json::from_slice::<Vec<GuestRegion>>(&message.bytes) {
            Ok(regions) => return Ok((regions, message.fds)),
            Err(e) if e.is_eof() && message.bytes.len() < MAX_MESSAGE => {
                let more = match peer.wait_readable(Some(Duration::from_secs(5))) {
                    Ok(true) => peer.receive().ok().flatten(),
                    _ => None,
                };
                let Some(more) = more else {
                    return Err(bad_message(format!("is cut short ({e})")));
                };
                message.bytes.extend(more.bytes);
                message.fds.extend(more.fds);
            }
            Err(e) => return Err(bad_message(format!("is not a JSON region list ({e})"))),
        }
    }
}

/// A bad message, named.
fn bad_message(what: String) -> CliError {
    CliError::bad(
        format!("the VMM's message {what}"),
        "expected Firecracker's [{\"base_host_virt_addr\", \"size\", \"offset\", \"page_size\"}, ...] with the uffd attached",
    )
}

/// Adopts the regions of one message; on bad input kills the VMM (it would wait forever
/// on faults nobody serves) and says so.
fn adopt(
    peer: &Peer,
    (regions, mut fds): (Vec<GuestRegion>, Vec<OwnedFd>),
    store: &Arc<dyn Store>,
    options: &Options,
) -> Result<Adopted, CliError> {
    let checked = (|| {
        let uffd = match fds.len() {
            1 => fds.remove(0),
            0 => {
                return Err(bad_message(
                    "came without a userfaultfd (SCM_RIGHTS)".into(),
                ));
            }
            n => {
                return Err(bad_message(format!(
                    "came with {n} file descriptors, not one"
                )));
            }
        };
        let ranges = ranges_of(&regions)?;
        // SAFETY: the uffd and its ranges are the VMM's, handed to us to serve over its
        // socket; nobody else serves them, and none of this process's memory is there.
        unsafe { Adopted::new(uffd, &ranges, Arc::clone(store), options.clone()) }.map_err(
            |error| match error {
                Error::Os { .. } => CliError::failed("starting the fault handler", error),
                Error::BadRange { .. } => CliError::bad(
                    format!("the VMM's region list: {error}"),
                    "restore with the memory file (and diffs) of this snapshot",
                ),
                other => CliError::bad_as_is(format!("the VMM's userfaultfd: {other}")),
            },
        )
    })();
    checked.map_err(|error| killed(peer, error))
}

/// The message's regions as library ranges; a page size other than 4 KiB or 2 MiB, or a
/// region that does not fit the address space, is bad input.
fn ranges_of(regions: &[GuestRegion]) -> Result<Vec<AdoptedRange>, CliError> {
    if regions.is_empty() {
        return Err(bad_message("lists no region".into()));
    }
    let range = |(i, region): (usize, &GuestRegion)| {
        // Firecracker before hugetlbfs support sent neither: its pages were 4 KiB.
        let page_size = region.page_size.or(region.page_size_kib).unwrap_or(4096);
        if page_size != 4096 && page_size != 2 << 20 {
            return Err(bad_message(format!(
                "gives region {i} a page size of {page_size} bytes (4096 or 2097152 are served)"
            )));
        }
        let address = usize::try_from(region.base_host_virt_addr)
            .map_err(|_| bad_message(format!("gives region {i} an address past 64 bits")))?;
        Ok(AdoptedRange {
            address,
            len: region.size,
            offset: region.offset,
            page_size,
        })
    };
    regions.iter().enumerate().map(range).collect()
}

/// `error`, after killing the VMM, which would otherwise hang on its next fault.
fn killed(peer: &Peer, error: CliError) -> CliError {
    let note = match peer.kill() {
        Some(pid) => format!("; the VMM (pid {pid}) was killed so that it does not hang"),
        None => "; the VMM could not be killed (no pid from SO_PEERCRED): kill it".into(),
    };
    match error {
        CliError::BadInput { cause, fix } => CliError::BadInput {
            cause,
            fix: format!("{fix}{note}"),
        },
        CliError::Failed { what, source } => CliError::Failed {
            what,
            source: format!("{source}{note}"),
        },
    }
}

/// A panic anywhere (a handler thread's, say) leaves faults unserved: kill the VMM first,
/// then let the panic go on.
fn kill_on_panic(peer: &Arc<Peer>) {
    let peer = Arc::clone(peer);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        match peer.kill() {
            Some(pid) => eprintln!(
                "udax: internal error: killed the VMM (pid {pid}) so that it does not hang"
            ),
            None => eprintln!("udax: internal error: could not kill the VMM (no pid): kill it"),
        }
    }));
}

/// Serves until the VMM closes the stream or exits; adopts the uffds of any further
/// messages; reports poisoned pages on stderr as they happen.
fn serve_until_hangup(
    peer: &Peer,
    served: &mut Vec<Adopted>,
    store: &Arc<dyn Store>,
    options: &Options,
) -> Result<(), CliError> {
    let mut reported = 0;
    loop {
        let readable = peer
            .wait_readable(Some(TICK))
            .map_err(|e| CliError::failed("waiting on the VMM's socket", e))?;
        if readable {
            match peer.receive() {
                Ok(None) => return Ok(()),
                Ok(Some(message)) => {
                    let parsed = parse_message(peer, message).map_err(|e| killed(peer, e))?;
                    served.push(adopt(peer, parsed, store, options)?);
                }
                Err(e) => {
                    eprintln!("udax: the VMM's socket failed ({e}): taken as the VMM gone");
                    return Ok(());
                }
            }
        }
        let failed: u64 = served.iter().map(|a| a.stats().sigbus_delivered).sum();
        if failed > reported {
            eprintln!(
                "udax: {} fault(s) could not be served: poisoned the page(s), the VMM's access gets SIGBUS",
                failed - reported
            );
            reported = failed;
        }
        if failed >= FAILURES_BEFORE_KILL {
            let what = format!("{failed} faults failed (poisoning does not stop them)");
            return Err(killed(peer, CliError::failed(what, "giving up")));
        }
    }
}

/// Reads a record file: one store offset per line (`#` comments allowed).
fn read_record(path: &Path) -> Result<Vec<u64>, CliError> {
    let file = File::open(path).map_err(|e| {
        CliError::bad(
            format!("cannot read --prefetch {} ({e})", path.display()),
            "pass a file written by --record",
        )
    })?;
    let mut offsets = Vec::new();
    for (number, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| CliError::failed(format!("reading {}", path.display()), e))?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let offset = line
            .parse::<u64>()
            .ok()
            .filter(|o| o % 4096 == 0)
            .ok_or_else(|| {
                CliError::bad(
                    format!(
                        "--prefetch {} line {}: {line:?} is not a page offset",
                        path.display(),
                        number + 1
                    ),
                    "pass a file written by --record",
                )
            })?;
        offsets.push(offset);
    }
    Ok(offsets)
}

/// Writes the first-fault order to `path`.
fn write_record(path: &Path, order: &[u64]) -> Result<(), CliError> {
    let write = || -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(File::create(path)?);
        writeln!(
            out,
            "# udax firecracker --record: store offsets by first fault"
        )?;
        for offset in order {
            writeln!(out, "{offset}")?;
        }
        out.into_inner()?.sync_all()
    };
    write().map_err(|e| CliError::failed(format!("writing --record {}", path.display()), e))
}

/// The counters, one `name=value` line on stdout.
fn print_counters(
    stats: &Stats,
    faults: u64,
    prefetched: Option<(u64, Duration)>,
    first_fault: Option<Duration>,
    serving: Duration,
) {
    let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1e3);
    let (prefetched_bytes, prefetch_ms) = match prefetched {
        Some((bytes, time)) => (bytes, ms(time)),
        None => (0, "-".into()),
    };
    println!(
        "faults={faults} zero_pages={} copies={} bytes_read={} huge_units={} \
         fault_around_pages={} prefetched_bytes={prefetched_bytes} prefetch_ms={prefetch_ms} \
         first_fault_ms={} serving_ms={} poisoned={}",
        stats.zero_faults,
        stats.read_faults,
        stats.bytes_read,
        stats.huge_faults,
        stats.fault_around_pages,
        first_fault.map_or("-".into(), ms),
        ms(serving),
        stats.sigbus_delivered,
    );
}
