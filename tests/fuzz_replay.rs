//! Replays every fuzz corpus file and every input that once crashed a fuzz target through the
//! same property checks the targets run (`overlayd::core::invariants`), so a plain `cargo test`
//! on a stable toolchain keeps each finding fixed. New inputs: drop them into
//! `fuzz/corpus/<target>/` (minimized) or `fuzz/regressions/<target>/` (crashes).

use std::path::Path;

use overlayd::core::invariants;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(rd) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        let mut files: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                panic!("{target}: input {} violates a property (see the panic above)", f.display());
            }
            n += 1;
        }
    }
    assert!(n > 0, "no corpus for fuzz target {target} under {}", root.display());
}

#[test]
fn ethernet_corpus_and_regressions_hold() {
    replay("ethernet", invariants::check_ethernet);
}

#[test]
fn vxlan_corpus_and_regressions_hold() {
    replay("vxlan", invariants::check_vxlan);
}

#[test]
fn node_corpus_and_regressions_hold() {
    replay("node", invariants::check_node);
}

#[test]
fn gre_corpus_and_regressions_hold() {
    replay("gre", invariants::check_gre);
}

#[test]
fn ipv4_corpus_and_regressions_hold() {
    replay("ipv4", invariants::check_ipv4);
}

#[test]
fn qemu_stream_corpus_and_regressions_hold() {
    replay("qemu_stream", invariants::check_qemu_stream);
}

#[test]
fn reload_corpus_and_regressions_hold() {
    replay("reload", invariants::check_reload);
}

#[test]
fn pmtu_corpus_and_regressions_hold() {
    replay("pmtu", invariants::check_pmtu);
}
