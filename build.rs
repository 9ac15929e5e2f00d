//! Build script: links libtorch so the binary finds it at run time, compiles the
//! protobuf records in `proto/` (pure Rust, no `protoc` needed) and registers the
//! numbered store migrations in `migrations/`.

use std::{env, fs, path::PathBuf};

fn main() {
    link_libtorch();
    compile_protos();
    register_migrations();
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

/// Writes `$OUT_DIR/migrations.rs`: one module per `migrations/NNNN_name.rs` file, in
/// number order, and a `MIGRATIONS` table the store walks at open.
fn register_migrations() {
    println!("cargo:rerun-if-changed=migrations");
    let mut files: Vec<(u32, String, PathBuf)> = fs::read_dir("migrations")
        .expect("migrations/ is missing")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let path = e.path();
            let name = path.file_stem()?.to_str()?.to_owned();
            if path.extension()? != "rs" {
                return None;
            }
            let (num, _) = name.split_once('_')?;
            Some((num.parse().ok()?, name, fs::canonicalize(&path).ok()?))
        })
        .collect();
    files.sort();
    for (i, (num, name, _)) in files.iter().enumerate() {
        assert_eq!(*num as usize, i + 1, "migration {name}: numbers must run 1, 2, 3… without gaps");
    }
    let mut out = String::new();
    for (num, _, path) in &files {
        out += &format!("#[path = {:?}]\nmod m{num:04};\n", path.display().to_string());
    }
    out += "/// Every migration, in the order they are applied.\npub static MIGRATIONS: &[Migration] = &[\n";
    for (num, name, _) in &files {
        out += &format!("    Migration {{ version: {num}, name: {name:?}, apply: m{num:04}::apply }},\n");
    }
    out += "];\n";
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    fs::write(out_dir.join("migrations.rs"), out).unwrap();
    fs::write(out_dir.join("migration_count.rs"), files.len().to_string()).unwrap();
}
