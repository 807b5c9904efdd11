//! The house's layout, pinned: the data path reads left to right, and no
//! crate's modules import each other in a circle (cargo forbids cycles between
//! crates; this test forbids them between the modules inside one).
//!
//! An edge A -> B is drawn when module A names an item defined in module B
//! (`crate::b::Item`, `super::b::Item`, `use b::Item` for a child, or an item
//! the crate root re-exports from B). The crate root itself is the crate's
//! face: its children may use what it defines, so edges into it are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use regex::Regex;

type Module = Vec<String>;

struct Crate {
    /// Module path -> its source, test modules and comments removed.
    sources: BTreeMap<Module, String>,
    /// Module path -> (re-exported name -> the path it re-exports).
    reexports: BTreeMap<Module, BTreeMap<String, Vec<String>>>,
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Module = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("lib" | "main" | "mod")
    ) {
        parts.pop();
    }
    parts
}

/// The code of a file without its comments and its `#[cfg(test)] mod` (tests
/// may reach anywhere in their crate).
fn code(text: &str) -> String {
    let test_mod = Regex::new(r"#\[cfg\(test\)\]\s*(#\[[^\]]*\]\s*)*mod \w+ \{").expect("regex");
    let text = match test_mod.find(text) {
        Some(m) => &text[..m.start()],
        None => text,
    };
    let comment = Regex::new(r"//.*").expect("regex");
    comment.replace_all(text, "").into_owned()
}

fn load(src: &Path) -> Crate {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let group =
        Regex::new(r"pub(?:\([a-z]+\))?\s+use\s+([A-Za-z_:]+?)::\{([^}]*)\}").expect("regex");
    let single = Regex::new(r"pub(?:\([a-z]+\))?\s+use\s+([A-Za-z_:]+);").expect("regex");
    let mut sources = BTreeMap::new();
    let mut reexports = BTreeMap::new();
    for file in files {
        let text = code(&std::fs::read_to_string(&file).expect("readable"));
        let mut names = BTreeMap::new();
        for c in group.captures_iter(&text) {
            for name in c[2]
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty() && *n != "self")
            {
                let shown = name.rsplit(" as ").next().unwrap_or(name).to_owned();
                let mut path: Vec<String> = c[1].split("::").map(str::to_owned).collect();
                path.push(name.split(" as ").next().unwrap_or(name).to_owned());
                names.insert(shown, path);
            }
        }
        for c in single.captures_iter(&text) {
            let path: Vec<String> = c[1].split("::").map(str::to_owned).collect();
            names.insert(path.last().cloned().unwrap_or_default(), path);
        }
        let module = module_of(src, &file);
        reexports.insert(module.clone(), names);
        sources.insert(module, text);
    }
    Crate { sources, reexports }
}

impl Crate {
    fn is_module(&self, m: &[String]) -> bool {
        self.sources.contains_key(m)
    }

    /// The module defining the item at `base::parts`, re-exports followed.
    fn resolve(&self, base: Module, parts: &[String], depth: usize) -> Module {
        let mut m = base;
        for (i, p) in parts.iter().enumerate() {
            let mut child = m.clone();
            child.push(p.clone());
            if self.is_module(&child) {
                m = child;
                continue;
            }
            if depth < 8
                && let Some(path) = self.reexports.get(&m).and_then(|r| r.get(p))
            {
                let mut path = path.clone();
                path.extend(parts[i + 1..].iter().cloned());
                return self.resolve_path(&m, &path, depth + 1).unwrap_or(m);
            }
            return m;
        }
        m
    }

    /// `path` as written in module `m`; `None` for another crate's item.
    fn resolve_path(&self, m: &Module, path: &[String], depth: usize) -> Option<Module> {
        let first = path.first()?;
        match first.as_str() {
            "crate" => Some(self.resolve(Vec::new(), &path[1..], depth)),
            "super" | "self" => {
                let mut base = m.clone();
                let mut rest = path;
                while let Some(head) = rest.first() {
                    match head.as_str() {
                        "super" => {
                            base.pop();
                        }
                        "self" => {}
                        _ => break,
                    }
                    rest = &rest[1..];
                }
                Some(self.resolve(base, rest, depth))
            }
            _ => {
                let mut child = m.clone();
                child.push(first.clone());
                self.is_module(&child)
                    .then(|| self.resolve(m.clone(), path, depth))
            }
        }
    }

    fn graph(&self) -> BTreeMap<Module, BTreeSet<Module>> {
        let paths =
            Regex::new(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)(::\{[^}]*\})?")
                .expect("regex");
        let uses =
            Regex::new(r"\buse\s+([a-z_][a-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)+)").expect("regex");
        let mut graph = BTreeMap::new();
        for (m, text) in &self.sources {
            let mut refs: Vec<Vec<String>> = Vec::new();
            for c in paths.captures_iter(text) {
                let head: Vec<String> = c[1].split("::").map(str::to_owned).collect();
                match c.get(2) {
                    Some(group) => {
                        let inner = group
                            .as_str()
                            .trim_start_matches("::{")
                            .trim_end_matches('}');
                        for name in inner.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                            let name = name.split("::").next().unwrap_or(name);
                            let name = name.split(" as ").next().unwrap_or(name).trim();
                            let mut path = head.clone();
                            if name != "self" {
                                path.push(name.to_owned());
                            }
                            refs.push(path);
                        }
                    }
                    None => refs.push(head),
                }
            }
            for c in uses.captures_iter(text) {
                let mut path = vec!["self".to_owned()];
                path.extend(c[1].split("::").map(str::to_owned));
                refs.push(path);
            }
            let edges: BTreeSet<Module> = refs
                .iter()
                .filter_map(|r| self.resolve_path(m, r, 0))
                .filter(|t| t != m && !t.is_empty())
                .collect();
            graph.insert(m.clone(), edges);
        }
        graph
    }
}

/// The groups of modules that reach each other (strongly connected
/// components of more than one module). The graphs are small: reachability
/// from every module is cheap and plain to read.
fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    let reach = |from: &Module| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(m) = todo.pop() {
            for next in graph.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&Module, BTreeSet<Module>> =
        graph.keys().map(|m| (m, reach(m))).collect();
    let mut placed = BTreeSet::new();
    let mut found = Vec::new();
    for m in graph.keys() {
        if placed.contains(m) || !reached[m].contains(m) {
            continue;
        }
        let group: Vec<Module> = reached[m]
            .iter()
            .filter(|other| reached[*other].contains(m))
            .cloned()
            .collect();
        placed.extend(group.iter().cloned());
        if group.len() > 1 {
            found.push(group);
        }
    }
    found
}

fn source_dirs() -> Vec<PathBuf> {
    let root = workspace();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .expect("crates/")
        .map(|e| e.expect("entry").path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    dirs.push(root.join("tests/src"));
    dirs.sort();
    dirs
}

#[test]
fn no_crate_has_modules_that_import_each_other_in_a_circle() {
    let mut found = Vec::new();
    for src in source_dirs() {
        for cycle in cycles(&load(&src).graph()) {
            let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
            found.push(format!("{}: {}", src.display(), names.join(" <-> ")));
        }
    }
    assert!(found.is_empty(), "module cycles:\n{}", found.join("\n"));
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    // Two sibling modules that use each other, and a child re-exported by
    // the root: the finder must see both.
    let dir = std::env::temp_dir().join(format!("idem-layout-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("nest")).expect("temp dir");
    let files = [
        ("lib.rs", "mod a; mod b; mod nest; pub use nest::Thing;"),
        ("a.rs", "use crate::b::B; pub struct A;"),
        ("b.rs", "use crate::Thing; pub struct B;"),
        ("nest/mod.rs", "pub use crate::a::A; pub struct Thing;"),
    ];
    for (name, text) in files {
        std::fs::write(src.join(name), text).expect("write");
    }
    let found = cycles(&load(&src).graph());
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(found.len(), 1, "{found:?}");
    let mut names: Vec<String> = found[0].iter().map(|m| m.join("::")).collect();
    names.sort();
    assert_eq!(names, ["a", "b", "nest"]);
}

/// `cargo metadata`'s dependency edges between the workspace's own crates,
/// and each crate's full dependency closure, on this machine's platform:
/// offline, metadata for every platform would need crates no build here
/// downloads (chrono's Android dependencies).
fn dependencies() -> serde_json::Value {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &host_triple()])
        .current_dir(workspace())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("metadata is JSON")
}

/// The host's target triple, as `rustc -vV` prints it.
fn host_triple() -> String {
    let out = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned()))
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_owned()
}

/// Every package `name` depends on, transitively (normal dependencies only).
fn closure(meta: &serde_json::Value, name: &str) -> BTreeSet<String> {
    let packages = meta["packages"].as_array().expect("packages");
    let id_of = |n: &str| {
        packages
            .iter()
            .find(|p| p["name"] == n)
            .and_then(|p| p["id"].as_str())
            .map(str::to_owned)
    };
    let nodes = meta["resolve"]["nodes"].as_array().expect("resolve");
    let name_of = |id: &str| {
        packages
            .iter()
            .find(|p| p["id"] == id)
            .and_then(|p| p["name"].as_str())
            .unwrap_or("?")
            .to_owned()
    };
    let mut seen = BTreeSet::new();
    let mut todo = vec![id_of(name).expect("package in the workspace")];
    while let Some(id) = todo.pop() {
        let Some(node) = nodes.iter().find(|n| n["id"] == id.as_str()) else {
            continue;
        };
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null());
            let dep_id = dep["pkg"].as_str().unwrap_or_default().to_owned();
            if normal && seen.insert(name_of(&dep_id)) {
                todo.push(dep_id);
            }
        }
    }
    seen
}

#[test]
fn the_data_path_reads_left_to_right() {
    let meta = dependencies();
    let forbidden: &[(&str, &[&str])] = &[
        // The contracts depend on no other part of idem, and on no I/O.
        (
            "idem-message",
            &["idem-store", "sqlx", "lapin", "reqwest", "tokio"],
        ),
        (
            "idem-charge-api",
            &["idem-charge", "reqwest", "tokio", "sqlx"],
        ),
        // The store is persistence: no HTTP client, no broker, no provider client.
        ("idem-store", &["idem-charge", "reqwest", "lapin"]),
        // The fake provider shares the contract, never the client's code.
        ("idem-simulator", &["idem-charge", "idem-store"]),
        // A replica does not carry the tools' weight.
        (
            "idem-daemon",
            &[
                "idem-workload",
                "hdrhistogram",
                "indicatif",
                "idem-simulator",
                "idem-servers",
            ],
        ),
        ("idem-retention", &["idem-daemon", "clap"]),
        // A producer's crate carries the contract and a broker client, never
        // idem's database, replica or tools.
        (
            "idem-client",
            &[
                "idem-store",
                "sqlx",
                "idem-daemon",
                "idem-events",
                "idem-workload",
                "reqwest",
            ],
        ),
        // The console is the operators' pages over the store: no replica, no
        // tools, no command line.
        (
            "idem-console",
            &["idem-daemon", "idem-workload", "idem-simulator", "clap"],
        ),
    ];
    let mut wrong = Vec::new();
    for (krate, never) in forbidden {
        let deps = closure(&meta, krate);
        for n in *never {
            if deps.contains(*n) {
                wrong.push(format!("{krate} depends on {n}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_binary_stays_thin() {
    let mut files = Vec::new();
    rust_files(&workspace().join("crates/idem/src"), &mut files);
    let lines: usize = files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .expect("readable")
                .lines()
                .count()
        })
        .sum();
    // 2,000 until issue 15 gave the operator commands pages, filters, an
    // audit list, completions and grouped help (argument parsing and
    // printing: the binary's own work). Past this, the operator commands'
    // handlers move into a library crate of their own.
    assert!(
        lines < 2400,
        "crates/idem/src holds {lines} lines: the binary decides where and until when; \
         move what it decides (the what) into a library crate"
    );
    assert!(
        !workspace().join("crates/idem/src/lib.rs").exists(),
        "the binary has no library: tests and tools use the crates it calls"
    );
}
