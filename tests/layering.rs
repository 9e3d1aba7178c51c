//! The sans-IO boundary, checked mechanically: `src/core/` names no I/O crate, no socket, no
//! clock and none of the layers above it. A line that does is reported with its file and
//! number; moving the work behind `io` (or passing the value in) is the fix, not an exception.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What the core must not name, with the reason shown when it does.
const FORBIDDEN: &[(&str, &str)] = &[
    ("tokio", "the async runtime belongs to the daemon"),
    ("socket2", "sockets belong to io"),
    ("libc", "system calls belong to io"),
    ("UdpSocket", "sockets belong to io"),
    ("prometheus", "metric types belong to metrics; the core keeps plain counters"),
    ("Instant::now", "the core takes `now` as an argument"),
    ("SystemTime", "the core takes `now` as an argument"),
    ("crate::io", "the core does not call its adapters"),
    ("crate::daemon", "the core does not call its shell"),
    ("crate::metrics", "the core does not know the exporter"),
    ("crate::admin", "the core does not know the admin socket"),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("readable directory entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().and_then(|x| x.to_str()) == Some("rs") {
            out.push(p);
        }
    }
}

#[test]
fn core_names_no_io_clock_or_upper_layer() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut files = Vec::new();
    rust_files(&core, &mut files);
    assert!(files.len() > 10, "only {} files found under {}", files.len(), core.display());
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for (word, why) in FORBIDDEN {
                if code.contains(word) {
                    found.push(format!("{}:{}: `{word}`: {why}", f.display(), n + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "the core crosses its boundary:\n{}", found.join("\n"));
}

/// The top module a path inside `layer` names: its first segment, or the module a re-export of
/// the layer's `mod.rs` brings the name from (`crate::core::Network` is `network`'s).
fn top_module(first: &str, modules: &BTreeSet<String>, reexports: &BTreeMap<String, String>) -> Option<String> {
    if modules.contains(first) { Some(first.to_string()) } else { reexports.get(first).cloned() }
}

/// The first identifier of each path in `s`, which starts right after a `::`: `Name`, or each
/// item of a `{a, b::c, d as e}` group.
fn first_idents(s: &str) -> Vec<String> {
    let ident = |t: &str| t.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    if let Some(group) = s.strip_prefix('{') {
        let (mut depth, mut items, mut cur) = (0, Vec::new(), String::new());
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => items.push(std::mem::take(&mut cur)),
                _ => {}
            }
            if depth > 0 || c != ',' {
                cur.push(c);
            }
        }
        items.push(cur);
        items.iter().map(|t| ident(t)).filter(|t| !t.is_empty()).collect()
    } else {
        vec![ident(s)]
    }
}

/// Which top modules of `src/<layer>/` each one uses (outside its tests): paths through
/// `crate::<layer>::` or through `super::` up to the layer. Names the layer's `mod.rs` defines
/// itself are left out: a parent holding what its children share is no cycle.
fn module_graph(layer: &str) -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(layer);
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    // test files (`mod tests;`, `pmtu_tests.rs`, fixtures) are left out with the in-file tests
    files.retain(|f| f.file_stem().and_then(|s| s.to_str()).is_some_and(|s| s != "tests" && s != "testutil" && !s.ends_with("_tests")));
    let path_of = |f: &Path| -> Vec<String> {
        let rel = f.strip_prefix(&root).expect("under the layer");
        let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        parts
    };
    let modules: BTreeSet<String> = files.iter().filter_map(|f| path_of(f).first().cloned()).collect();
    let code = |f: &Path| -> String {
        let text = std::fs::read_to_string(f).expect("readable source");
        let text = text.split("#[cfg(test)]").next().unwrap_or_default().to_string();
        text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
    };
    // `pub use network::{Network, ...};` in the layer's mod.rs
    let mut reexports = BTreeMap::new();
    for stmt in code(&root.join("mod.rs")).split(';') {
        let Some(rest) = stmt.trim().strip_prefix("pub use ") else { continue };
        let Some((m, items)) = rest.split_once("::") else { continue };
        if modules.contains(m) {
            for item in first_idents(items) {
                reexports.insert(item, m.to_string());
            }
        }
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = modules.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
    for f in &files {
        let path = path_of(f);
        let Some(me) = path.first().cloned() else { continue };
        let text = code(f);
        let mut uses = Vec::new();
        let abs = format!("crate::{layer}::");
        for (i, _) in text.match_indices(&abs) {
            uses.extend(first_idents(&text[i + abs.len()..]));
        }
        // `super::` repeated as often as the file is deep reaches the layer
        let up = "super::".repeat(path.len());
        for (i, _) in text.match_indices(&up) {
            if !text[..i].ends_with("super::") && !text[i + up.len()..].starts_with("super::") {
                uses.extend(first_idents(&text[i + up.len()..]));
            }
        }
        for u in uses {
            if let Some(m) = top_module(&u, &modules, &reexports).filter(|m| *m != me) {
                graph.entry(me.clone()).or_default().insert(m);
            }
        }
    }
    graph
}

/// A cycle in `graph`, as the modules on it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(n: &str, graph: &BTreeMap<String, BTreeSet<String>>, stack: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

/// Dependencies inside the core and inside the daemon run one way (threads → switch →
/// forward/gre → netio in the daemon): a module that uses another is never used by it, even
/// through others.
#[test]
fn core_and_daemon_modules_form_no_cycle() {
    for layer in ["core", "daemon"] {
        let graph = module_graph(layer);
        assert!(graph.len() > 8, "only {} modules found in src/{layer}", graph.len());
        assert!(graph.values().map(BTreeSet::len).sum::<usize>() > 8, "hardly any use between the modules of src/{layer} found: {graph:?}");
        if let Some(c) = find_cycle(&graph) {
            panic!("modules of src/{layer} use each other in a cycle: {}", c.join(" → "));
        }
    }
    // the daemon's layers, as its modules document them
    let daemon = module_graph("daemon");
    for (upper, lower) in [("datapath", "switch"), ("vmport", "switch"), ("switch", "forward"), ("switch", "gre"), ("forward", "netio")] {
        assert!(daemon[upper].contains(lower), "{upper} no longer uses {lower}: {daemon:?}");
    }
}

#[test]
fn a_cycle_is_found() {
    let g: BTreeMap<String, BTreeSet<String>> =
        [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"]), ("d", vec![])].into_iter().map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect())).collect();
    assert_eq!(find_cycle(&g), Some(vec!["a".to_string(), "b".into(), "c".into(), "a".into()]));
    assert_eq!(first_idents("{Action, wire::ip::{self, Family}, Vni as V}; x"), vec!["Action", "wire", "Vni"]);
}
