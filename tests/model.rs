//! Model test: random sequences of writes, reads, pointer accesses and flushes on a
//! Mapping over a 64-page MemStore (some pages data, the rest holes) must behave exactly
//! like a `Vec<u8>`, and after `close()` the store itself must hold the model's bytes.

mod common;

use std::sync::Arc;

use common::{Model, PAGE, assert_bytes_eq};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use udax::{Mapping, MemStore, Options, Store};

const PAGES: usize = 64;
const LEN: usize = PAGES * PAGE;

#[derive(Clone, Debug)]
enum Op {
    /// `Mapping::write_at(offset, bytes)` of `len` bytes derived from `seed`.
    Write { offset: usize, len: usize, seed: u8 },
    /// `Mapping::read_at(offset, len)`, compared with the model.
    Read { offset: usize, len: usize },
    /// A volatile store through `as_ptr()`.
    Poke { offset: usize, value: u8 },
    /// A volatile load through `as_ptr()`, compared with the model.
    Peek { offset: usize },
    /// `Mapping::flush()`.
    Flush,
    /// The whole mapping compared with the model.
    Check,
}

/// Offsets cluster around page boundaries, where faults and writeback split work.
fn offset() -> impl Strategy<Value = usize> {
    prop_oneof![
        0..LEN,
        (1..PAGES, -8i64..8).prop_map(|(p, d)| (p as i64 * PAGE as i64 + d) as usize),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (offset(), 1..3 * PAGE, any::<u8>()).prop_map(|(offset, len, seed)| Op::Write {
            offset,
            len: len.min(LEN - offset),
            seed,
        }),
        4 => (offset(), 1..3 * PAGE).prop_map(|(offset, len)| Op::Read {
            offset,
            len: len.min(LEN - offset),
        }),
        3 => (offset(), any::<u8>()).prop_map(|(offset, value)| Op::Poke { offset, value }),
        3 => offset().prop_map(|offset| Op::Peek { offset }),
        2 => Just(Op::Flush),
        1 => Just(Op::Check),
    ]
}

/// Which pages start as data (and with what byte), the rest are holes.
fn initial() -> impl Strategy<Value = Vec<Option<u8>>> {
    proptest::collection::vec(proptest::option::weighted(0.3, 1..=255u8), PAGES)
}

fn run(initial: &[Option<u8>], ops: &[Op]) -> Result<(), TestCaseError> {
    let store = Arc::new(MemStore::new(LEN as u64));
    let mut model = Model::zeroed(LEN);
    for (p, fill) in initial.iter().enumerate() {
        if let Some(byte) = *fill {
            store
                .write_at((p * PAGE) as u64, &[byte; PAGE])
                .expect("seeding the store");
            model.write(p * PAGE, &[byte; PAGE]);
        }
    }
    let dyn_store: Arc<dyn Store> = store.clone();
    let mapping = Mapping::new(dyn_store, Options::default()).expect("Mapping::new");
    let ptr = mapping.as_ptr();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Write { offset, len, seed } => {
                let bytes: Vec<u8> = (0..*len).map(|i| seed.wrapping_add(i as u8) | 1).collect();
                mapping.write_at(*offset, &bytes).expect("write_at");
                model.write(*offset, &bytes);
            }
            Op::Read { offset, len } => {
                let mut buf = vec![0u8; *len];
                mapping.read_at(*offset, &mut buf).expect("read_at");
                prop_assert_eq!(
                    &buf[..],
                    &model.bytes[*offset..*offset + *len],
                    "step {}: read_at({}, {})",
                    step,
                    offset,
                    len
                );
            }
            Op::Poke { offset, value } => {
                // SAFETY: `offset < LEN` by construction; this thread is the only accessor.
                unsafe { common::poke(ptr, *offset, *value) };
                model.write(*offset, &[*value]);
            }
            Op::Peek { offset } => {
                // SAFETY: as above.
                let got = unsafe { common::peek(ptr, *offset) };
                prop_assert_eq!(got, model.bytes[*offset], "step {}: byte {}", step, offset);
            }
            Op::Flush => mapping.flush().expect("flush"),
            Op::Check => {
                let mut all = vec![0u8; LEN];
                mapping.read_at(0, &mut all).expect("read_at of everything");
                prop_assert!(
                    all == model.bytes,
                    "step {}: mapping differs from the model",
                    step
                );
            }
        }
    }
    let stats = mapping.stats();
    prop_assert_eq!(stats.sigbus_delivered, 0);
    // Dirtied: by a fault each, or made writable ahead of their first write (write-around).
    let dirtied =
        stats.write_faults + stats.mkwrite_faults + stats.zero_to_dirty + stats.write_around_pages;
    prop_assert!(
        stats.pages_written_back <= dirtied,
        "more pages written back than were ever dirtied: {:?}",
        stats
    );
    mapping.close().expect("close");
    let mut stored = vec![0u8; LEN];
    store.read_at(0, &mut stored).expect("Store::read_at");
    assert_bytes_eq(&stored, &model.bytes, "store after close");
    Ok(())
}

#[test]
fn mapping_behaves_like_a_vec() {
    if !common::require_uffd() {
        return;
    }
    let config = Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let strategy = (initial(), proptest::collection::vec(op(), 1..60));
    let result = runner.run(&strategy, |(initial, ops)| run(&initial, &ops));
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
