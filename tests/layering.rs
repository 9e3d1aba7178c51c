//! The sans-IO boundary, checked mechanically: `src/core/` names no I/O crate, no socket, no
//! clock and none of the layers above it. A line that does is reported with its file and
//! number; moving the work behind `io` (or passing the value in) is the fix, not an exception.

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
