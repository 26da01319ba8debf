//! Process exit: the dirty pages of live mappings are written back when the process exits
//! normally, as a kernel MAP_SHARED mapping loses none; SIGKILL loses what was written
//! since the last flush, and nothing a flush wrote.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use udax::{FileStore, Mapping, Options, Resolution, Store};

const PAGES: usize = 64;

/// The child: maps the store at `UDAX_EXIT_STORE`, flushes the first half of its writes,
/// writes the second half, and leaves by `how` with the mapping still live.
fn write_then_leave(how: &str) {
    let path = std::env::var("UDAX_EXIT_STORE").expect("store path");
    let store = Arc::new(FileStore::open(&path).expect("open"));
    let resolution = match std::env::var("UDAX_EXIT_MODE").as_deref() {
        Ok("in-thread") => Resolution::InThread,
        _ => Resolution::HandlerThreads,
    };
    let mapping = Mapping::new(store, Options::default().resolution(resolution)).expect("map");
    for page in 0..PAGES {
        mapping
            .write_at(page * PAGE, &[page as u8 + 1; 16])
            .expect("write");
        if page == PAGES / 2 - 1 {
            mapping.flush().expect("flush");
        }
    }
    say("WRITTEN");
    match how {
        // A leaked mapping and exit(3): the atexit hook must write the rest back.
        "exit" => {
            std::mem::forget(mapping);
            std::process::exit(0);
        }
        // SIGKILL: nothing runs; only the flushed half is on the store.
        _ => {
            // SAFETY: kills this process; nothing after it runs.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }
}

/// Runs the child and returns how many of the pages hold their bytes on the store.
fn pages_on_store(case: &str, test_name: &str, mode: &str) -> usize {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.img");
    FileStore::create(&path, (PAGES * PAGE) as u64).expect("create");
    let env = [
        ("UDAX_EXIT_STORE", path.to_str().expect("utf-8 path")),
        ("UDAX_EXIT_MODE", mode),
    ];
    let output = run_child_within(test_name, case, &env, Duration::from_secs(60));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("WRITTEN"),
        "{}",
        describe(&output)
    );
    let store = FileStore::open(&path).expect("reopen");
    (0..PAGES)
        .filter(|&page| {
            let mut bytes = [0u8; 16];
            store
                .read_at((page * PAGE) as u64, &mut bytes)
                .expect("read");
            bytes == [page as u8 + 1; 16]
        })
        .count()
}

fn run(case: &str, test_name: &str, mode: &str, expected: usize) {
    if !require_uffd() {
        return;
    }
    match child_case().as_deref() {
        Some(c) if c == case => write_then_leave(if case.starts_with("exit") {
            "exit"
        } else {
            "kill"
        }),
        Some(_) => {}
        None => assert_eq!(pages_on_store(case, test_name, mode), expected, "{case}"),
    }
}

/// `std::process::exit` with a leaked mapping loses no dirty page.
#[test]
fn exit_writes_back_live_mappings() {
    run("exit", "exit_writes_back_live_mappings", "threads", PAGES);
}

/// The same with in-thread resolution.
#[test]
fn exit_writes_back_live_mappings_in_thread() {
    run(
        "exit-in-thread",
        "exit_writes_back_live_mappings_in_thread",
        "in-thread",
        PAGES,
    );
}

/// SIGKILL loses exactly the writes since the last flush.
#[test]
fn sigkill_keeps_what_was_flushed() {
    run(
        "kill",
        "sigkill_keeps_what_was_flushed",
        "threads",
        PAGES / 2,
    );
}
