//! Facts about the machine a benchmark ran on, for the JSON report: kernel release, CPUs,
//! memory, CPU model, transparent huge page mode, and the store's file system.

use std::path::Path;

use serde::Serialize;

/// The machine, as far as a report needs it. Unknown facts are empty or zero.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// `uname -r`.
    pub kernel_release: String,
    /// Online CPUs.
    pub cpus: usize,
    /// MemTotal in bytes.
    pub memory_bytes: u64,
    /// The first "model name" of /proc/cpuinfo.
    pub cpu_model: String,
    /// The selected mode of /sys/kernel/mm/transparent_hugepage/enabled.
    pub transparent_hugepage: String,
    /// The file system type of the store (from /proc/mounts), e.g. "ext4".
    pub store_filesystem: String,
    /// This udax's version.
    pub udax_version: &'static str,
}

impl Machine {
    /// Collects the facts; `store` is the store file's path.
    pub fn collect(store: &Path) -> Machine {
        Machine {
            kernel_release: kernel_release(),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_bytes: memory_bytes(),
            cpu_model: cpu_model(),
            transparent_hugepage: thp_mode(),
            store_filesystem: filesystem_of(store),
            udax_version: env!("CARGO_PKG_VERSION"),
        }
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn kernel_release() -> String {
    read("/proc/sys/kernel/osrelease").trim().to_string()
}

fn memory_bytes() -> u64 {
    read("/proc/meminfo")
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

fn cpu_model() -> String {
    read("/proc/cpuinfo")
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, model)| model.trim().to_string())
        .unwrap_or_default()
}

fn thp_mode() -> String {
    let modes = read("/sys/kernel/mm/transparent_hugepage/enabled");
    modes
        .split_whitespace()
        .find_map(|m| m.strip_prefix('[').and_then(|m| m.strip_suffix(']')))
        .unwrap_or("")
        .to_string()
}

/// The type of the mount holding `path`: the longest /proc/mounts mount point that is a
/// prefix of its canonical directory.
fn filesystem_of(path: &Path) -> String {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let Ok(dir) = dir.canonicalize() else {
        return String::new();
    };
    let mounts = read("/proc/mounts");
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_dev, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            dir.starts_with(point)
                .then(|| (point.len(), kind.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, kind)| kind)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_something() {
        let m = Machine::collect(Path::new("/tmp/x"));
        assert!(m.cpus > 0);
        assert!(m.memory_bytes > 0);
        assert!(!m.kernel_release.is_empty());
        assert!(!m.store_filesystem.is_empty());
    }
}
