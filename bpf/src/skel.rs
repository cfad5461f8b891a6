//! The skeleton libbpf-cargo generates from steer.bpf.c.
#![allow(unsafe_code, unused_imports, clippy::all, missing_docs)]
include!(concat!(env!("OUT_DIR"), "/steer.skel.rs"));
