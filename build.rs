//! Links the release `sidekey` binary with its code in the order it runs: the functions a
//! request runs first, then those start-up runs, then the rest (`proxy/link-order.txt`, written
//! by `cargo bench --bench load -- --rounds 0 --link-order proxy/link-order.txt`). Linked in
//! the compiler's order, start-up touches a few pages in most 64 KiB stretches of the code and
//! the kernel maps each stretch whole (fault-around), so most of the binary stays resident for
//! the little of it that runs. Also packs the relative relocations (`-z pack-relative-relocs`),
//! which the loader otherwise reads as large tables at every start.
//!
//! Both are linker options of lld (Rust's default linker on x86_64 Linux since 1.90) that GNU
//! ld lacks, and the packed relocations need glibc 2.36 to load: each is first tried on an
//! empty program with the build's own compiler, flags and linker, and left out, with a
//! warning, where that fails. Names missing from the order file (code changed since it was
//! written) only lose their place; the build never fails for them.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    // Read when the script runs, not when it was compiled: a build script compiled in another
    // checkout sharing this target directory is reused here, and would name that checkout's file.
    let root = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from);
    let order = root.join("proxy/link-order.txt");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", order.display());
    // Debug builds have other symbol names and no use for the layout.
    if std::env::var("PROFILE").as_deref() != Ok("release") {
        return;
    }
    let ordered =
        [format!("-Wl,--symbol-ordering-file={}", order.display()), "-Wl,--no-warn-symbol-ordering".to_owned()];
    let packed = ["-Wl,-z,pack-relative-relocs".to_owned()];
    for (what, args) in [("code order", &ordered[..]), ("packed relocations", &packed[..])] {
        match links_and_runs(args) {
            Ok(()) => {
                for arg in args {
                    println!("cargo:rustc-link-arg-bin=sidekey={arg}");
                }
            }
            Err(why) => {
                println!("cargo:warning=sidekey is linked without its {what} ({why}): it only costs resident memory")
            }
        }
    }
}

/// Builds and, when the build runs on its own target, runs an empty program linked with
/// `args`, the way cargo builds sidekey (its `RUSTC`, `RUSTFLAGS`, target and linker).
fn links_and_runs(args: &[String]) -> Result<(), String> {
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let source = out.join("probe.rs");
    std::fs::write(&source, "fn main() {}\n").map_err(|e| e.to_string())?;
    let program = out.join("probe");
    let target = std::env::var("TARGET").unwrap_or_default();
    let mut rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned()));
    rustc.arg("--crate-type=bin").arg("--target").arg(&target).arg("-o").arg(&program).arg(&source);
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    rustc.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    if let Ok(linker) = std::env::var("RUSTC_LINKER") {
        rustc.arg(format!("-Clinker={linker}"));
    }
    for arg in args {
        rustc.arg(format!("-Clink-arg={arg}"));
    }
    let built = rustc.output().map_err(|e| format!("rustc: {e}"))?;
    if !built.status.success() {
        let said = String::from_utf8_lossy(&built.stderr);
        let lines = || said.lines().map(str::trim);
        let why = lines()
            .find(|l| ["unrecognized", "unknown", "not supported"].iter().any(|w| l.contains(w)))
            .or_else(|| lines().find(|l| l.starts_with("error")))
            .unwrap_or("the linker refused it");
        return Err(why.trim_start_matches("= note:").trim().to_owned());
    }
    if std::env::var("HOST").ok() == Some(target) {
        let ran = Command::new(&program).status().map_err(|e| format!("the linked program: {e}"))?;
        if !ran.success() {
            return Err(format!("the linked program failed to start: {ran}"));
        }
    }
    Ok(())
}
