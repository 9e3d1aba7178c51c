//! Compiles the eBPF fast path (`src/bpf/*.bpf.c`) with clang into OUT_DIR; the daemon embeds
//! the object with `include_bytes!` and loads it with aya at run time. No object is committed.

use std::path::PathBuf;
use std::process::Command;

/// The eBPF programs in src/bpf/, each `NAME.bpf.c`.
const PROGRAMS: &[&str] = &["fastpath"];

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    for name in PROGRAMS {
        let src = format!("src/bpf/{name}.bpf.c");
        println!("cargo:rerun-if-changed={src}");
        let obj = out.join(format!("{name}.bpf.o"));
        let status = Command::new(&clang)
            .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror", "-D__TARGET_ARCH_x86"])
            .args(["-I/usr/include/x86_64-linux-gnu"])
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("clang failed ({s}) compiling {src}: see the errors above"),
            Err(e) => panic!(
                "cannot run {clang:?} ({e}): building overlayd needs clang (with the BPF target) and the \
                 libbpf headers to compile its eBPF fast path; on Debian: apt-get install clang libbpf-dev (or: bash scripts/deps.sh build)"
            ),
        }
    }
    println!("cargo:rerun-if-env-changed=CLANG");
}
