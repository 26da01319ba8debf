//! `udax firecracker` against a fake Firecracker VMM (`fake_vmm`, a child process doing
//! what Firecracker does on a snapshot restore with a Uffd backend): a Full snapshot with
//! zero runs, the same snapshot dug (`udax dig`), a diff over a base, record then
//! prefetch, 2 MiB hugetlbfs regions when hugetlb pages can be had, and every bad-input
//! case (exit code 2, one line naming the cause, the VMM killed rather than left hanging).
//!
//! Without userfaultfd the tests print "SKIPPED" and pass, except under CI=true.

mod copy_all;
mod fake_vmm;

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_vmm::{Bad, PASSED, PLAN_ENV, Plan, Touch};

const UDAX: &str = env!("CARGO_BIN_EXE_udax");
const PAGE: usize = 4096;
/// The two regions of the 4 KiB cases: 16 MiB and 8 MiB.
const REGIONS: [usize; 2] = [16 << 20, 8 << 20];
/// How long a run may take before both processes are killed and the test fails.
const PATIENCE: Duration = Duration::from_secs(120);

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// If this process is the fake VMM, runs it (never returns).
fn be_the_vmm() {
    if let Ok(path) = std::env::var(PLAN_ENV) {
        let plan = std::fs::read(&path).expect("the plan file");
        fake_vmm::run(serde_json::from_slice(&plan).expect("the plan"));
    }
}

/// The start of each test: be the fake VMM if this process is one; else a scratch
/// directory, or `None` (a loud skip) without userfaultfd.
fn start(test: &str) -> Option<tempfile::TempDir> {
    be_the_vmm();
    require_uffd(test).then(|| tempfile::tempdir().expect("tempdir"))
}

/// Whether userfaultfd is usable here (loud skip otherwise; a failure under CI=true).
fn require_uffd(test: &str) -> bool {
    match fake_vmm::open_uffd() {
        Ok(_) => true,
        Err(why) if in_ci() => panic!("userfaultfd is unavailable under CI=true: {why}"),
        Err(why) => {
            eprintln!("SKIPPED {test}: userfaultfd is unavailable ({why})");
            false
        }
    }
}

/// The bytes of 4 KiB page `page` of a snapshot: zeros on every `zero_every`-th run of 16
/// pages... or, with `zero_quarters` of 4, on the runs `run % 4 < zero_quarters`.
fn page_bytes(page: usize, zero_quarters: usize, salt: u8) -> Vec<u8> {
    if (page / 16) % 4 < zero_quarters {
        return vec![0; PAGE];
    }
    (0..PAGE)
        .map(|i| (page as u8).wrapping_mul(31) ^ (i as u8) ^ salt | 1)
        .collect()
}

/// Writes a dense (Full) memory file of `len` bytes: every page written, zeros included.
fn write_full(path: &Path, len: usize, zero_quarters: usize) {
    let file = File::create(path).expect("create the memory file");
    let mut chunk = Vec::with_capacity(1 << 20);
    for page in 0..len / PAGE {
        chunk.extend(page_bytes(page, zero_quarters, 0));
        if chunk.len() == 1 << 20 || page + 1 == len / PAGE {
            let at = ((page + 1) * PAGE - chunk.len()) as u64;
            file.write_all_at(&chunk, at)
                .expect("write the memory file");
            chunk.clear();
        }
    }
    file.sync_all().expect("sync");
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).expect("metadata").blocks() * 512
}

/// One run: `udax firecracker ARGS` and the fake VMM with `plan`.
struct Run {
    udax: std::process::Output,
    vmm: std::process::Output,
}

impl Run {
    fn counters(&self) -> std::collections::HashMap<String, String> {
        let stdout = String::from_utf8_lossy(&self.udax.stdout);
        let line = stdout
            .lines()
            .find(|l| l.starts_with("faults="))
            .unwrap_or_else(|| {
                panic!(
                    "no counters line from udax: {}",
                    describe("udax", &self.udax)
                )
            });
        line.split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn counter(&self, name: &str) -> u64 {
        let counters = self.counters();
        counters[name]
            .parse()
            .unwrap_or_else(|_| panic!("counter {name}: {counters:?}"))
    }

    #[track_caller]
    fn assert_served(&self) {
        let vmm = String::from_utf8_lossy(&self.vmm.stdout);
        assert!(
            vmm.contains(PASSED) && self.vmm.status.success(),
            "the fake VMM's checks failed: {}\n{}",
            describe("vmm", &self.vmm),
            describe("udax", &self.udax)
        );
        assert!(
            self.udax.status.success(),
            "udax must exit 0 once the VMM is gone: {}",
            describe("udax", &self.udax)
        );
    }
}

fn describe(who: &str, output: &std::process::Output) -> String {
    format!(
        "{who}: {:?} (signal {:?})\n--- {who} stdout ---\n{}\n--- {who} stderr ---\n{}",
        output.status,
        output.status.signal(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Waits for `child` until `deadline`, killing it then.
fn wait(mut child: Child, deadline: Instant) -> std::process::Output {
    loop {
        match child.try_wait().expect("try_wait") {
            Some(_) => break,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                break;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let mut output = child.wait_with_output().expect("wait");
    if output.status.code().is_none() && output.status.signal() == Some(libc::SIGKILL) {
        output
            .stderr
            .extend(b"\n(killed by the test: it ran out of time or was the VMM)");
    }
    output
}

/// Runs udax with `args` (plus --socket) and the fake VMM (test `test`) with `plan`.
fn run(dir: &Path, test: &str, args: &[&str], mut plan: Plan) -> Run {
    let socket = dir.join("uffd.sock");
    let _ = std::fs::remove_file(&socket);
    plan.socket = socket.display().to_string();
    let udax = Command::new(UDAX)
        .arg("firecracker")
        .arg("--socket")
        .arg(&socket)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn udax");
    let vmm = spawn_vmm(test, &plan);
    let deadline = Instant::now() + PATIENCE;
    let vmm = wait(vmm, deadline);
    let udax = wait(udax, deadline);
    Run { udax, vmm }
}

/// Starts the fake VMM (this test binary, running `test` as the VMM) with `plan`.
fn spawn_vmm(test: &str, plan: &Plan) -> Child {
    // In a file: a working set of many offsets is too long for the environment.
    let plan_path = format!("{}.plan", plan.socket);
    std::fs::write(&plan_path, serde_json::to_vec(plan).expect("plan")).expect("write the plan");
    Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            test,
            "--nocapture",
            "--test-threads=1",
            "--include-ignored",
        ])
        .env(PLAN_ENV, &plan_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the fake VMM")
}

/// The fake VMM's FIGURES line.
fn figures_of(vmm: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&vmm.stdout);
    // The harness's "test figures ... " may precede it on its line.
    let line = stdout
        .lines()
        .find_map(|l| l.find("FIGURES").map(|at| &l[at..]));
    line.unwrap_or("").to_string()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn pages() -> usize {
    REGIONS.iter().sum::<usize>() / PAGE
}

fn nonzero_pages(zero_quarters: usize) -> u64 {
    (0..pages())
        .filter(|&p| (p / 16) % 4 >= zero_quarters)
        .count() as u64
}

fn plan(expected: &Path) -> Plan {
    Plan {
        expected: path(expected).into(),
        regions: REGIONS.to_vec(),
        threads: 4,
        ..Plan::default()
    }
}

#[test]
fn a_full_snapshot_serves_zero_runs_as_zero_pages() {
    let Some(dir) = start("a_full_snapshot_serves_zero_runs_as_zero_pages") else {
        return;
    };
    let mem = dir.path().join("mem");
    write_full(&mem, pages() * PAGE, 1);
    let run = run(
        dir.path(),
        "a_full_snapshot_serves_zero_runs_as_zero_pages",
        &["--mem-file", path(&mem), "--fault-around", "4KiB"],
        plan(&mem),
    );
    run.assert_served();
    // Every data page copied once, except the balloon's (region 0's units 1, 9, 17...,
    // removed before anything touched them: zero pages from then on, never copies).
    let ballooned_data = (0..REGIONS[0] / PAGE)
        .filter(|&p| p % 8 == 1 && (p / 16) % 4 >= 1)
        .count() as u64;
    assert_eq!(
        run.counter("copies"),
        nonzero_pages(1) - ballooned_data,
        "{:?}",
        run.counters()
    );
    assert!(
        run.counter("zero_pages") >= pages() as u64 - nonzero_pages(1),
        "{:?}",
        run.counters()
    );
    assert_eq!(run.counter("poisoned"), 0);
    // Touched once each, on one thread, without the balloon: each page is read once, and
    // the zero ones are zero pages, not copies.
    let once = run_once(
        dir.path(),
        "a_full_snapshot_serves_zero_runs_as_zero_pages",
        &mem,
        &mem,
    );
    assert_eq!(
        once.counter("bytes_read"),
        (pages() * PAGE) as u64,
        "{:?}",
        once.counters()
    );
    assert_eq!(
        once.counter("copies"),
        nonzero_pages(1),
        "{:?}",
        once.counters()
    );
    assert_eq!(
        once.counter("zero_pages"),
        pages() as u64 - nonzero_pages(1),
        "{:?}",
        once.counters()
    );
}

/// Touches every page once, in order, on one thread, served page by page from `mem`.
fn run_once(dir: &Path, test: &str, mem: &Path, expected: &Path) -> Run {
    let all = (0..pages() as u64).map(|p| p * PAGE as u64).collect();
    let plan = Plan {
        touch: Touch::Pages(all),
        ..plan(expected)
    };
    let run = run(
        dir,
        test,
        &["--mem-file", path(mem), "--fault-around", "4KiB"],
        plan,
    );
    run.assert_served();
    run
}

#[test]
fn a_second_uffd_on_the_stream_is_served() {
    let test = "a_second_uffd_on_the_stream_is_served";
    let Some(dir) = start(test) else {
        return;
    };
    let mem = dir.path().join("mem");
    let later = 4 << 20;
    write_full(&mem, pages() * PAGE + later, 1);
    let plan = Plan {
        later: Some(later),
        ..plan(&mem)
    };
    let run = run(dir.path(), test, &["--mem-file", path(&mem)], plan);
    run.assert_served();
}

#[test]
fn a_dug_snapshot_reads_only_its_data() {
    let Some(dir) = start("a_dug_snapshot_reads_only_its_data") else {
        return;
    };
    let (mem, dug) = (dir.path().join("mem"), dir.path().join("dug"));
    write_full(&mem, pages() * PAGE, 1);
    std::fs::copy(&mem, &dug).expect("copy");
    let before = allocated(&dug);
    let dig = Command::new(UDAX)
        .args(["dig", path(&dug)])
        .output()
        .expect("udax dig");
    assert!(dig.status.success(), "{}", describe("dig", &dig));
    let freed = before - allocated(&dug);
    let zeros = (pages() as u64 - nonzero_pages(1)) * PAGE as u64;
    assert!(
        freed >= zeros * 9 / 10,
        "dig freed {freed} of {zeros} zero bytes"
    );
    assert!(
        String::from_utf8_lossy(&dig.stdout).contains("freed"),
        "{}",
        describe("dig", &dig)
    );
    let run = run(
        dir.path(),
        "a_dug_snapshot_reads_only_its_data",
        &["--mem-file", path(&dug)],
        plan(&mem),
    );
    run.assert_served();
    // Touched once each: the holes are never read.
    let once = run_once(dir.path(), "a_dug_snapshot_reads_only_its_data", &dug, &mem);
    let data = nonzero_pages(1);
    assert_eq!(
        once.counter("bytes_read"),
        data * PAGE as u64,
        "{:?}",
        once.counters()
    );
    assert_eq!(
        once.counter("zero_pages"),
        pages() as u64 - data,
        "{:?}",
        once.counters()
    );
}

#[test]
fn a_diff_is_layered_over_its_base() {
    let Some(dir) = start("a_diff_is_layered_over_its_base") else {
        return;
    };
    let (base, diff, expected) = (
        dir.path().join("base"),
        dir.path().join("diff"),
        dir.path().join("expected"),
    );
    let len = pages() * PAGE;
    write_full(&base, len, 1);
    std::fs::copy(&base, &expected).expect("copy");
    // The diff: sparse, data on the pages dirtied since the base; some dirtied to zeros
    // (data in the diff that reads as zeros: zero, whatever the base holds).
    let file = File::create(&diff).expect("create the diff");
    file.set_len(len as u64).expect("size the diff");
    let out = File::options()
        .write(true)
        .open(&expected)
        .expect("expected");
    for page in (0..pages()).filter(|p| p % 37 == 5 || p % 37 == 6) {
        let bytes = if page % 37 == 6 {
            vec![0; PAGE]
        } else {
            page_bytes(page, 0, 0x40)
        };
        file.write_all_at(&bytes, (page * PAGE) as u64)
            .expect("write the diff");
        out.write_all_at(&bytes, (page * PAGE) as u64)
            .expect("write the expected image");
    }
    let run = run(
        dir.path(),
        "a_diff_is_layered_over_its_base",
        &["--mem-file", path(&base), "--diff", path(&diff)],
        plan(&expected),
    );
    run.assert_served();
}

#[test]
fn a_recorded_working_set_is_prefetched() {
    let test = "a_recorded_working_set_is_prefetched";
    let Some(dir) = start(test) else {
        return;
    };
    let (mem, record) = (dir.path().join("mem"), dir.path().join("record"));
    write_full(&mem, pages() * PAGE, 1);
    // A working set in no simple order, over both regions: about a tenth of the pages.
    let set: Vec<u64> = (0..pages() as u64)
        .rev()
        .filter(|p| p % 10 == 3)
        .map(|p| p * PAGE as u64)
        .collect();
    let touching = Plan {
        touch: Touch::Pages(set.clone()),
        ..plan(&mem)
    };
    let first = run(
        dir.path(),
        test,
        &[
            "--mem-file",
            path(&mem),
            "--fault-around",
            "4KiB",
            "--record",
            path(&record),
        ],
        touching.clone(),
    );
    first.assert_served();
    let text = std::fs::read_to_string(&record).expect("the record");
    let recorded: Vec<u64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.parse().expect("an offset"))
        .collect();
    assert_eq!(recorded, set, "the record is the order of first faults");
    // The second restore prefetches them: the guest finds them resident without a fault.
    let prefetching = Plan {
        wait_resident: set.clone(),
        ..touching
    };
    let second = run(
        dir.path(),
        test,
        &["--mem-file", path(&mem), "--prefetch", path(&record)],
        prefetching,
    );
    second.assert_served();
    assert_eq!(second.counter("faults"), 0, "{:?}", second.counters());
    assert_eq!(
        second.counter("prefetched_bytes"),
        (set.len() * PAGE) as u64,
        "{:?}",
        second.counters()
    );
}

/// Reserves `pages` free 2 MiB hugetlb pages if it can (as root, by raising
/// nr_hugepages); returns the value to restore, or why not.
fn reserve_huge_pages(pages: u64) -> Result<Option<u64>, String> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|e| e.to_string())?;
    let field = |name: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    if field("Hugepagesize:") != Some(2048) {
        return Err("the default huge page size is not 2 MiB".into());
    }
    let free = field("HugePages_Free:").unwrap_or(0);
    if free >= pages {
        return Ok(None);
    }
    let knob = "/proc/sys/vm/nr_hugepages";
    let total: u64 = std::fs::read_to_string(knob)
        .map_err(|e| e.to_string())?
        .trim()
        .parse()
        .map_err(|_| "unreadable nr_hugepages".to_string())?;
    std::fs::write(knob, (total + pages - free).to_string())
        .map_err(|e| format!("cannot raise {knob} ({e}): run as root"))?;
    let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|e| e.to_string())?;
    let now = meminfo
        .lines()
        .find(|l| l.starts_with("HugePages_Free:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    if now < pages {
        let _ = std::fs::write(knob, total.to_string());
        return Err(format!("only {now} hugetlb pages could be reserved"));
    }
    Ok(Some(total))
}

#[test]
fn hugetlb_regions_are_filled_in_2_mib_units() {
    be_the_vmm();
    let test = "hugetlb_regions_are_filled_in_2_mib_units";
    if !require_uffd(test) {
        return;
    }
    let regions = [8usize << 20, 4 << 20];
    let restore = match reserve_huge_pages((regions.iter().sum::<usize>() >> 21) as u64 + 2) {
        Ok(restore) => restore,
        Err(why) if in_ci() => panic!("{test}: hugetlb pages are needed under CI=true: {why}"),
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}; this test did not run");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mem = dir.path().join("mem");
    let len: usize = regions.iter().sum();
    write_full(&mem, len, 1);
    // A whole zero unit, as a hole, and one as dense zeros: both copied from zeros.
    File::options()
        .write(true)
        .open(&mem)
        .and_then(|f| f.write_all_at(&vec![0; 2 << 20], 10 << 20))
        .expect("zero a unit");
    let plan = Plan {
        regions: regions.to_vec(),
        huge: true,
        ..plan(&mem)
    };
    let run = run(dir.path(), test, &["--mem-file", path(&mem)], plan);
    if let Some(total) = restore {
        let _ = std::fs::write("/proc/sys/vm/nr_hugepages", total.to_string());
    }
    run.assert_served();
    assert!(
        run.counter("huge_units") >= (len >> 21) as u64,
        "{:?}",
        run.counters()
    );
    assert!(
        run.counter("zero_pages") >= 1,
        "the zero unit: {:?}",
        run.counters()
    );
}

/// Runs udax against a VMM sending `bad`, and checks the refusal.
#[track_caller]
fn assert_refused(dir: &Path, test: &str, mem: &Path, bad: Bad, cause: &str) {
    let plan = Plan {
        bad: Some(bad.clone()),
        ..plan(mem)
    };
    let run = run(dir, test, &["--mem-file", path(mem)], plan);
    let stderr = String::from_utf8_lossy(&run.udax.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("listening on"))
        .collect();
    assert_eq!(
        run.udax.status.code(),
        Some(2),
        "{bad:?}: {}",
        describe("udax", &run.udax)
    );
    assert!(
        lines.len() == 1 && lines[0].contains(cause) && lines[0].contains("was killed"),
        "{bad:?}: one line naming {cause:?} and the kill: {stderr}"
    );
    assert_eq!(
        run.vmm.status.signal(),
        Some(libc::SIGKILL),
        "{bad:?}: the VMM is killed, not left hanging: {}",
        describe("vmm", &run.vmm)
    );
}

#[test]
fn bad_messages_are_refused_and_the_vmm_is_not_left_hanging() {
    let test = "bad_messages_are_refused_and_the_vmm_is_not_left_hanging";
    let Some(dir) = start(test) else {
        return;
    };
    let mem = dir.path().join("mem");
    write_full(&mem, pages() * PAGE, 1);
    let cases = [
        (Bad::Text("hello".into()), "is not a JSON region list"),
        (Bad::Text("[]".into()), "lists no region"),
        (Bad::Text(r#"[{"size": 4096}]"#.into()), "missing field"),
        (
            Bad::Text(r#"[{"base_host_virt_addr": 1"#.into()),
            "is cut short",
        ),
        (Bad::NoFd, "without a userfaultfd"),
        (Bad::PastTheEnd, "runs past the end"),
        (Bad::OverlapInMemory, "overlaps another range in memory"),
        (Bad::OverlapInFile, "overlap another range's"),
        (Bad::PageSize(65536), "page size of 65536"),
    ];
    for (bad, cause) in cases {
        assert_refused(dir.path(), test, &mem, bad, cause);
    }
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mem = dir.path().join("mem");
    write_full(&mem, 64 * PAGE, 0);
    let long = dir.path().join("long");
    write_full(&long, 128 * PAGE, 0);
    let record = dir.path().join("record");
    std::fs::write(&record, "4096\nnot a number\n").expect("record");
    let socket = dir.path().join("s");
    let socket = path(&socket);
    let missing = dir.path().join("missing");
    let cases: [(Vec<&str>, &str); 4] = [
        (vec!["--mem-file", path(&missing)], "does not exist"),
        (
            vec!["--mem-file", path(&mem), "--diff", path(&long)],
            "longer than the memory file",
        ),
        (
            vec!["--mem-file", path(&mem), "--prefetch", path(&record)],
            "line 2",
        ),
        (
            vec!["--mem-file", path(&mem), "--fault-around", "5000"],
            "--fault-around",
        ),
    ];
    for (args, cause) in cases {
        let udax = Command::new(UDAX)
            .args(["firecracker", "--socket", socket])
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("udax");
        // Bounded: a refusal that did not happen would listen for a VMM forever.
        let output = wait(udax, Instant::now() + Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.lines().count() == 1 && stderr.contains(cause),
            "{args:?}: {stderr}"
        );
    }
}

/// The figures of the closing note (`cargo test --release --test firecracker -- --ignored
/// --nocapture figures`): a 1 GiB Full snapshot, 75% zero, served by udax.
#[test]
#[ignore]
fn figures() {
    be_the_vmm();
    let dir = PathBuf::from(std::env::var("FIGURES_DIR").unwrap_or_else(|_| "/tmp".into()));
    let mem = dir.join("udax-figures.mem");
    let len = 1usize << 30;
    if std::fs::metadata(&mem).map(|m| m.len() as usize).ok() != Some(len) {
        write_full(&mem, len, 3);
    }
    let regions = vec![len];
    let touch_all = Plan {
        regions: regions.clone(),
        touch: Touch::AllTimed,
        ..plan(&mem)
    };
    for round in 0..2 {
        for around in ["4KiB", "64KiB"] {
            let run = run(
                &dir,
                "figures",
                &["--mem-file", path(&mem), "--fault-around", around],
                touch_all.clone(),
            );
            run.assert_served();
            let counters = run.counters();
            println!(
                "[{round}] udax fault-around {around}: {} | {counters:?}",
                figures_of(&run.vmm)
            );
        }
        // The copy-everything handler, in this process, against the same VMM.
        let socket = dir.join("copy-all.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        let plan = Plan {
            socket: path(&socket).into(),
            ..touch_all.clone()
        };
        let vmm = spawn_vmm("figures", &plan);
        let handler = std::thread::spawn({
            let mem = mem.clone();
            move || copy_all::serve(listener, &mem)
        });
        let vmm = wait(vmm, Instant::now() + PATIENCE);
        let served = handler.join().expect("the copy-all handler");
        assert!(
            figures_of(&vmm).contains("touch_all"),
            "{}",
            describe("vmm", &vmm)
        );
        println!("[{round}] copy-all: {} | {served:?}", figures_of(&vmm));
    }
    let record = dir.join("udax-figures.record");
    let set: Vec<u64> = (0..(len / PAGE) as u64)
        .filter(|p| p % 10 == 0)
        .map(|p| p * PAGE as u64)
        .collect();
    let touch_set = Plan {
        regions,
        touch: Touch::Pages(set.clone()),
        threads: 1,
        ..plan(&mem)
    };
    let recorded = run(
        &dir,
        "figures",
        &[
            "--mem-file",
            path(&mem),
            "--fault-around",
            "4KiB",
            "--record",
            path(&record),
        ],
        touch_set.clone(),
    );
    recorded.assert_served();
    let counters = recorded.counters();
    println!(
        "on demand, 10% working set: {} | {counters:?}",
        figures_of(&recorded.vmm)
    );
    let prefetched = run(
        &dir,
        "figures",
        &["--mem-file", path(&mem), "--prefetch", path(&record)],
        touch_set,
    );
    prefetched.assert_served();
    let counters = prefetched.counters();
    println!(
        "prefetched, 10% working set: {} | {counters:?}",
        figures_of(&prefetched.vmm)
    );
}
