//! The crate's modules import downward only (STYLE.md rule 22, issue 15).
//!
//! Reads every `.rs` file under `node/src`, takes each top-level module's
//! references to the crate's other top-level modules (`crate::x::...`,
//! `crate::{x, y}`, `super::x` from a top-level file; comments and test
//! code skipped: `tests.rs`, `tests/` and what follows `#[cfg(test)]`), and
//! checks that (1) the graph has no cycle, and (2) none of the edges the
//! architecture forbids is there: the core depends on nothing but `limits`,
//! the transports know nothing of the driver, the API or boot, the config
//! knows no transport, the driver imports neither the API nor boot. Run it
//! alone with `cargo test -p mim4-node --test layering -- --nocapture` to see
//! the graph.

// Helpers outside #[test] functions panic on failure too; that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Edges that must not exist: `(from, to)` between top-level modules.
const FORBIDDEN: &[(&str, &str, &str)] = &[
    (
        "transport",
        "node",
        "a transport hands bytes up through transport::Inbound",
    ),
    ("transport", "api", "a transport serves peers, not the API"),
    (
        "transport",
        "boot",
        "boot starts the transports, not the reverse",
    ),
    (
        "config",
        "transport",
        "the config names transports with config::TransportKind",
    ),
    ("config", "node", "the config is read before a node exists"),
    ("node", "api", "the API calls the driver, not the reverse"),
    ("node", "boot", "boot joins the driver's parts"),
    ("api", "boot", "boot starts the API"),
    (
        "store",
        "node",
        "the store knows records, not protocol rules",
    ),
    (
        "store",
        "transport",
        "the store knows records, not transports",
    ),
    (
        "sources",
        "node",
        "a data source knows nothing of the driver",
    ),
    ("clock", "node", "the clock is a leaf"),
    ("counters", "node", "the counters are a leaf"),
];

/// The only modules the sans-IO core may use.
const CORE_MAY_USE: &[&str] = &["core", "limits"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`node/src/transport/grpc.rs` ->
/// `transport`); `None` for the crate root and the binaries.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main" | "bin")).then(|| name.to_owned())
}

/// The crate's top-level modules `text` refers to.
fn references(text: &str, top_level_file: bool) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut add = |text: &str| {
        let name: String = text
            .trim()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.insert(name);
        }
    };
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        // In a top-level module's own file, `super::x` is `crate::x`.
        let prefixes: &[&str] = if top_level_file {
            &["crate::", "super::"]
        } else {
            &["crate::"]
        };
        for prefix in prefixes {
            let mut rest = code;
            while let Some(at) = rest.find(prefix) {
                rest = &rest[at + prefix.len()..];
                match rest.strip_prefix('{') {
                    // `crate::{a, b::c}` on one line.
                    Some(group) => group
                        .split('}')
                        .next()
                        .unwrap_or("")
                        .split(',')
                        .for_each(&mut add),
                    None => add(rest),
                }
            }
        }
    }
    found
}

/// The module graph of `node/src`: module -> modules it refers to.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top_module(&src, f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = top_module(&src, file) else {
            continue;
        };
        let top_level_file = file.parent() == Some(src.as_path());
        if file.components().any(|c| c.as_os_str() == "tests")
            || file.file_name().is_some_and(|n| n == "tests.rs")
        {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        // Test modules may reach across (an erasure test loads the registry).
        let text = text.split("\n#[cfg(test)]").next().unwrap_or("");
        let edges = graph.entry(module.clone()).or_default();
        for target in references(text, top_level_file) {
            if target != module && modules.contains(&target) {
                edges.insert(target);
            }
        }
    }
    graph
}

/// A cycle in `graph`, if there is one (depth-first search, iterative).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    for start in graph.keys() {
        if marks.contains_key(start.as_str()) {
            continue;
        }
        let mut path: Vec<(&str, Vec<&str>)> = Vec::new();
        let next = |m: &str| -> Vec<&str> {
            graph
                .get(m)
                .map(|s| s.iter().map(String::as_str).collect())
                .unwrap_or_default()
        };
        marks.insert(start, Mark::Open);
        path.push((start, next(start)));
        while let Some((module, pending)) = path.last_mut() {
            let module = *module;
            match pending.pop() {
                None => {
                    marks.insert(module, Mark::Done);
                    path.pop();
                }
                Some(target) => match marks.get(target) {
                    Some(Mark::Done) => {}
                    Some(Mark::Open) => {
                        let at = path.iter().position(|(m, _)| *m == target).unwrap();
                        let mut cycle: Vec<String> =
                            path[at..].iter().map(|(m, _)| (*m).to_owned()).collect();
                        cycle.push(target.to_owned());
                        return Some(cycle);
                    }
                    None => {
                        marks.insert(target, Mark::Open);
                        path.push((target, next(target)));
                    }
                },
            }
        }
    }
    None
}

fn describe(graph: &BTreeMap<String, BTreeSet<String>>) -> String {
    graph
        .iter()
        .map(|(m, to)| {
            format!(
                "  {m} -> {}",
                to.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// No import cycle between the crate's top-level modules.
#[test]
fn modules_form_no_cycle() {
    let graph = graph();
    println!("module graph of node/src:\n{}", describe(&graph));
    assert!(
        graph.len() >= 10,
        "too few modules found:\n{}",
        describe(&graph)
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle: {}\nmodule graph:\n{}",
            cycle.join(" -> "),
            describe(&graph)
        );
    }
}

/// None of the forbidden edges is there, and the core uses only itself and `limits`.
#[test]
fn imports_point_down_only() {
    let graph = graph();
    let mut wrong = Vec::new();
    for (from, to, why) in FORBIDDEN {
        if graph.get(*from).is_some_and(|edges| edges.contains(*to)) {
            wrong.push(format!("{from} -> {to}: {why}"));
        }
    }
    for to in graph.get("core").into_iter().flatten() {
        if !CORE_MAY_USE.contains(&to.as_str()) {
            wrong.push(format!(
                "core -> {to}: the core is sans-IO and imports no edge"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that point up:\n  {}\nmodule graph:\n{}",
        wrong.join("\n  "),
        describe(&graph)
    );
}

/// The checker itself: it finds a cycle and the grouped form of `use`.
#[test]
fn the_checker_sees_cycles_and_grouped_imports() {
    let refs = references(
        "use crate::{node::Node, api};\nlet x = crate::store::X; // crate::boot",
        false,
    );
    assert_eq!(
        refs,
        ["api", "node", "store"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    let mut graph = BTreeMap::new();
    graph.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    graph.insert("b".to_owned(), BTreeSet::from(["c".to_owned()]));
    graph.insert("c".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(find_cycle(&graph).map(|c| c.len()), Some(4));
    graph.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&graph), None);
}
