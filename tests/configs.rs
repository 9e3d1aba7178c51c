//! The configurations shipped in `configs/` stay valid, and `overlayd check` says what is wrong
//! with a bad one (the key and the problem, exit status 1) the way a user sees it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

fn shipped_configs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("configs/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    found.sort();
    found
}

#[test]
fn every_shipped_config_passes_check() {
    let configs = shipped_configs();
    assert!(!configs.is_empty(), "configs/ holds no *.toml");
    for path in configs {
        let out = Command::new(env!("CARGO_BIN_EXE_overlayd"))
            .args(["check", "--config"])
            .arg(&path)
            .env_remove("OVERLAYD__NODE__UNDERLAY")
            .output()
            .expect("run overlayd check");
        assert!(
            out.status.success(),
            "{} fails `overlayd check`: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn check_text(text: &str) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!("overlayd-configs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let path = dir.join(format!("{}.toml", NEXT.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_overlayd"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run overlayd check");
    let _ = std::fs::remove_file(&path);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

const GOOD: &str = r#"
[node]
underlay = "192.0.2.1"
[[networks]]
name = "blue"
encap = "vxlan"
vni = 42
tap = "ovl-blue"
peers = ["192.0.2.2"]
"#;

#[test]
fn check_accepts_a_good_config() {
    let (code, stderr) = check_text(GOOD);
    assert_eq!(code, 0, "stderr: {stderr}");
}

#[test]
fn check_names_the_key_and_the_problem() {
    let cases = [
        (GOOD.replace("vni = 42", "vni = 16777216"), "networks[0].vni"),
        (GOOD.replace("underlay = \"192.0.2.1\"", "underlay = \"192.0.2.300\""), "node.underlay"),
        (GOOD.replace("peers = [\"192.0.2.2\"]", "peers = [\"192.0.2.2\"]\ncolour = \"red\""), "colour"),
        (GOOD.replace("encap = \"vxlan\"", "encap = \"nvgre\""), "networks[0].encap"),
        (GOOD.replace("vni = 42", "vni = 42\nunknown_unicast = \"drop\""), "networks[0].unknown_unicast"),
        (GOOD.replace("underlay = \"192.0.2.1\"", "underlay = \"192.0.2.1\"\nuser = \"no-such-user-here\""), "node.user"),
        (GOOD.replace("underlay = \"192.0.2.1\"", "underlay = \"192.0.2.1\"\nuser = \"root\"\ngroup = \"no-such-group-here\""), "node.group"),
    ];
    for (text, key) in cases {
        let (code, stderr) = check_text(&text);
        assert_eq!(code, 1, "expected exit 1 for a bad {key}; stderr: {stderr}");
        assert!(stderr.contains(key), "the error should name {key}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line, not a stack of causes: {stderr}");
    }
}

#[test]
fn check_reports_a_missing_file_in_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_overlayd"))
        .args(["check", "--config", "/nonexistent/overlayd.toml"])
        .output()
        .expect("run overlayd check");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/overlayd.toml"), "{stderr}");
}
