//! Build script: links libtorch so the binary finds it at run time, compiles the
//! protobuf records in `proto/` (pure Rust, no `protoc` needed). Nothing it writes may
//! name the checkout's path: cargo reuses build-script output across checkouts that
//! share a target directory.

use std::env;

fn main() {
    link_libtorch();
    compile_protos();
}

/// tch's own rpath does not reach our binary; without `--no-as-needed -ltorch` the
/// linker also drops libtorch_cuda and CUDA silently stays off. Every target gets both
/// (the library's unit tests too, which only `rustc-link-arg` reaches) except
/// `engram-extract`, the document parser, which runs no model: it gets `--as-needed`
/// between the two (cargo keeps the order of these lines), so the unused libtorch is
/// dropped and each extraction starts in milliseconds instead of loading a gigabyte of
/// libraries.
fn link_libtorch() {
    if let Some(lib) = env::var_os("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath={}", lib.to_string_lossy());
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg-bin=engram-extract=-Wl,--as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}

fn compile_protos() {
    println!("cargo:rerun-if-changed=proto");
    let files = ["proto/engram/store/v1/records.proto"];
    let descriptors = protox::compile(files, ["proto"]).expect("proto/ does not compile");
    prost_build::Config::new().bytes(["."]).compile_fds(descriptors).expect("prost code generation failed");
}
