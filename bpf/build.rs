//! Compiles the XDP program with clang and generates its Rust skeleton.
use std::{env, path::PathBuf};

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "src/bpf/steer.bpf.c";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    // Debian keeps <asm/types.h> under the multiarch directory, which `clang -target bpf` does
    // not search by itself.
    let multiarch = format!("-I/usr/include/{}-linux-gnu", env::consts::ARCH);
    SkeletonBuilder::new()
        .source(SRC)
        .clang_args([multiarch.as_str(), "-Wall", "-O2"])
        .build_and_generate(out.join("steer.skel.rs"))
        .expect("building the XDP program failed (needs clang and linux-libc-dev; run scripts/install-deps.sh)");
    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-changed=src/bpf/steer.h");
}
