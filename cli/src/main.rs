//! `udax`: the command-line face of the udax library.
//!
//! - `udax bench`: runs workloads on a udax mapping and on the kernel's own mmap of the
//!   same file, side by side, and reports times, memory, allocation, counters and ratios
//!   (table, `--json`, `--plot`).
//! - `udax inspect PATH`: a store file's size, allocated bytes and extents.
//! - `udax firecracker`: a Firecracker snapshot restore's page-fault handler.
//! - `udax dig FILE`: punch a file's zero pages into holes.
//!
//! Exit codes: 0 on success; 2 on bad input (a wrong argument, a missing directory, a store
//! too small, no userfaultfd permission), with one line `udax: <cause>: <fix>` on stderr;
//! 1 when a run fails on the way.
//!
//! One concept a file: `args` (command line), `size` (SIZE values), `workload` (what each
//! workload does), `engine` (what a workload runs on), `udax_engine` and `kernel` (the two
//! engines), `store_file` (the benchmark's store file), `smaps` (Rss of a range),
//! `page_cache` (a file's cached pages),
//! `warmup`, `prng`, `bench` (the driver), `report` (table and JSON), `plot`, `machine`,
//! `inspect`, `nbd` (NBD URIs and copies between stores), `remote` (NBD exports and RBD
//! images behind one type), `nbd_bench` (the workloads over a remote store),
//! `lazy_restore` (udax over NBD or RBD against copy-then-mmap), `firecracker` (the
//! handler) over `uffd_socket` (its socket), `dig`.

mod args;
mod bench;
mod dig;
mod engine;
mod error;
mod firecracker;
mod inspect;
mod kernel;
mod lazy_restore;
mod machine;
mod nbd;
mod nbd_bench;
mod page_cache;
mod plot;
mod prng;
mod remote;
mod report;
mod size;
mod smaps;
mod store_file;
mod udax_engine;
mod uffd_socket;
mod warmup;
mod workload;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Firecracker(args) => firecracker::run(args),
        Command::Dig(args) => dig::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("udax: {error}");
            error.exit_code()
        }
    }
}
