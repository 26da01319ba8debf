//! Smoke check: map a sparse file, read holes, write, flush, and print the counters.
use std::sync::Arc;
use udax::{FileStore, Mapping, Options, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join("udax-smoke.img");
    let pages = 16384usize;
    let store = Arc::new(FileStore::create(&path, (pages * 4096) as u64)?);
    let mapping = Mapping::new(store.clone(), Options::default())?;
    let base = mapping.as_ptr();
    let t = std::time::Instant::now();
    for i in 0..pages {
        // SAFETY: inside the mapping.
        unsafe { std::ptr::read_volatile(base.add(i * 4096)) };
    }
    let read = t.elapsed();
    let t = std::time::Instant::now();
    for i in 0..pages {
        // SAFETY: inside the mapping.
        unsafe { std::ptr::write_volatile(base.add(i * 4096 + 7), i as u8) };
    }
    let write = t.elapsed();
    let t = std::time::Instant::now();
    mapping.flush()?;
    let flush = t.elapsed();
    println!(
        "read {:?}/page write {:?}/page flush {:?}",
        read / pages as u32,
        write / pages as u32,
        flush
    );
    println!("{:?}", mapping.stats());
    mapping.close()?;
    println!("allocated {:?}", store.allocated_bytes());
    std::fs::remove_file(path)?;
    Ok(())
}
