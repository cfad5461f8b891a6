//! Compiles the tc-BPF link impairment program the reliability tests use.
use std::{env, path::PathBuf};

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "src/bpf/impair.bpf.c";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let multiarch = format!("-I/usr/include/{}-linux-gnu", env::consts::ARCH);
    SkeletonBuilder::new()
        .source(SRC)
        .clang_args([multiarch.as_str(), "-Wall", "-O2"])
        .build_and_generate(out.join("impair.skel.rs"))
        .expect("building the impairment program failed (needs clang and linux-libc-dev)");
    println!("cargo:rerun-if-changed={SRC}");
}
