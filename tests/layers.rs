//! The architecture, checked: the library's modules import each other only downwards,
//! floor by floor, and the files inside a floor form no import cycle.
//!
//! Floors, bottom to top: `sys` and `store`; `error`; `engine`; `resolve`; `options` and
//! `exit`;
//! the front-ends `mapping` and `adopted` (which do not import each other). A file may
//! import a file of a lower floor, or a file of its own floor, as long as no cycle forms.
//! Imports are read from `crate::` paths (and must be spelled that way: `super::` only as
//! `use super::*` in a test module); root re-exports (`crate::Error`) are refused inside the
//! crate, so that every arrow names the file it comes from. Only `PAGE_SIZE`,
//! `HUGE_PAGE_SIZE` and `HUGE_PAGES` may be taken from the root.
//!
//! Run `cargo test --test layers -- --nocapture` to print the import graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Floor of each top-level module (lower numbers are lower floors).
const FLOORS: [(&str, u32); 9] = [
    ("sys", 0),
    ("store", 0),
    ("error", 1),
    ("engine", 2),
    ("resolve", 3),
    ("options", 4),
    ("exit", 4),
    ("mapping", 5),
    ("adopted", 5),
];

/// Items the root itself defines, which any file may use.
const ROOT_ITEMS: [&str; 3] = ["PAGE_SIZE", "HUGE_PAGE_SIZE", "HUGE_PAGES"];

/// A module path (`engine::fault`) and the source of its file.
type Sources = BTreeMap<String, String>;

/// Every module file under `src` by module path (`lib.rs` is the root, "").
fn read_sources(src: &Path) -> Sources {
    let mut sources = Sources::new();
    let mut pending = vec![src.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "rs") {
                continue;
            }
            let relative = path
                .strip_prefix(src)
                .expect("under src")
                .with_extension("");
            let mut parts: Vec<String> = relative
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            if parts
                .last()
                .is_some_and(|last| last == "mod" || last == "lib")
            {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).expect("read a source file");
            sources.insert(parts.join("::"), text);
        }
    }
    sources
}

/// The source without comments (doc comments mention paths that are not imports).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `crate::` paths a source names, with `crate::a::{b, c::D}` groups expanded.
fn crate_paths(code: &str) -> Result<Vec<String>, String> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `foo_crate::`, not ours
        }
        let prefix: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let after = &rest[prefix.len()..];
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').ok_or("an unclosed `crate::{` group")?;
            if group[..end].contains('{') {
                return Err(format!(
                    "a nested group after crate::{prefix}: spell it flat"
                ));
            }
            for item in group[..end].split(',') {
                let item = item.split(" as ").next().unwrap_or("").trim();
                if !item.is_empty() {
                    paths.push(format!("{prefix}{item}"));
                }
            }
        } else {
            paths.push(prefix.trim_end_matches(':').to_string());
        }
    }
    Ok(paths)
}

/// The module a `crate::` path names: its longest prefix that is a module file.
fn module_of(path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").filter(|part| *part != "self").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|prefix| modules.contains(prefix))
}

fn floor_of(module: &str) -> Option<u32> {
    let top = module.split("::").next().unwrap_or("");
    FLOORS
        .iter()
        .find(|(name, _)| *name == top)
        .map(|(_, floor)| *floor)
}

/// The import edges between module files, and every rule broken on the way.
fn check(sources: &Sources) -> (BTreeMap<String, BTreeSet<String>>, Vec<String>) {
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut broken = Vec::new();
    for (module, text) in sources.iter().filter(|(module, _)| !module.is_empty()) {
        let code = code_of(text);
        for line in code.lines().filter(|line| line.contains("super::")) {
            if line.trim() != "use super::*;" {
                broken.push(format!("{module}: `{}`: spell it crate::...", line.trim()));
            }
        }
        let paths = match crate_paths(&code) {
            Ok(paths) => paths,
            Err(why) => {
                broken.push(format!("{module}: {why}"));
                continue;
            }
        };
        for path in paths {
            let target = module_of(&path, &modules);
            match target.as_deref() {
                None if ROOT_ITEMS.contains(&path.as_str()) => {}
                None => broken.push(format!(
                    "{module} takes crate::{path} from the root: import it from its module"
                )),
                Some(target) if target == module || target.is_empty() => {}
                Some(target) => {
                    let same_top = target.split("::").next() == module.split("::").next();
                    let (from, to) = (floor_of(module), floor_of(target));
                    if !same_top && !matches!((from, to), (Some(from), Some(to)) if to < from) {
                        broken.push(format!(
                            "{module} (floor {from:?}) imports {target} (floor {to:?}): arrows point down"
                        ));
                    }
                    edges
                        .entry(module.clone())
                        .or_default()
                        .insert(target.to_string());
                }
            }
        }
    }
    broken.extend(cycles(&edges));
    (edges, broken)
}

/// One line per import cycle among module files.
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    // Depth-first search with colours: an edge to a node on the stack closes a cycle.
    fn visit<'a>(
        node: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        found: &mut Vec<String>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(at) = stack.iter().position(|n| *n == node) {
            let mut cycle: Vec<&str> = stack[at..].to_vec();
            cycle.push(node);
            found.push(format!("import cycle: {}", cycle.join(" -> ")));
            return;
        }
        stack.push(node);
        for next in edges.get(node).into_iter().flatten() {
            visit(next, edges, stack, done, found);
        }
        stack.pop();
        done.insert(node);
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        visit(node, edges, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

#[test]
fn imports_point_down_and_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let sources = read_sources(&src);
    assert!(
        sources.contains_key("engine::fault"),
        "found {:?}",
        sources.keys()
    );
    let (edges, broken) = check(&sources);
    for (module, targets) in &edges {
        let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
        eprintln!("{module} -> {}", targets.join(", "));
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
    // Every top-level module has a floor.
    for module in sources.keys().filter(|m| !m.is_empty()) {
        assert!(
            floor_of(module).is_some(),
            "{module} has no floor in FLOORS"
        );
    }
}

/// The checker itself: an upward arrow, a cycle inside a floor, a root re-export and a
/// `super::` path are each reported.
#[test]
fn the_checker_reports_what_it_forbids() {
    let sources = |files: &[(&str, &str)]| -> Sources {
        files
            .iter()
            .map(|(module, text)| (module.to_string(), text.to_string()))
            .collect()
    };
    let ok = sources(&[
        ("", ""),
        ("sys", ""),
        ("sys::uffd", "use crate::PAGE_SIZE;"),
        ("engine", ""),
        ("engine::a", "use crate::sys::uffd::{self, Uffd};"),
        (
            "engine::b",
            "use crate::engine::a::X; // crate::mapping::Mapping in a comment",
        ),
        ("mapping", "use crate::{engine::b::Y};"),
    ]);
    assert_eq!(check(&ok).1, Vec::<String>::new());
    let upward = sources(&[
        ("", ""),
        ("engine", ""),
        ("mapping", ""),
        ("engine::a", "use crate::mapping::M;"),
    ]);
    assert!(check(&upward).1[0].contains("arrows point down"));
    let cycle = sources(&[
        ("", ""),
        ("engine", ""),
        ("engine::a", "use crate::engine::b::B;"),
        ("engine::b", "fn f() { crate::engine::a::g() }"),
    ]);
    assert!(
        check(&cycle).1[0].contains("import cycle"),
        "{:?}",
        check(&cycle).1
    );
    let root = sources(&[("", ""), ("engine", ""), ("engine::a", "use crate::Error;")]);
    assert!(check(&root).1[0].contains("from the root"));
    let sideways = sources(&[
        ("", ""),
        ("mapping", ""),
        ("adopted", "use crate::mapping::Mapping;"),
    ]);
    assert!(check(&sideways).1[0].contains("arrows point down"));
    let parent = sources(&[
        ("", ""),
        ("store", ""),
        ("store::file", "use super::Store;"),
    ]);
    assert!(check(&parent).1[0].contains("spell it crate::"));
}
