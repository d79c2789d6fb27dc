//! Build script: links GCC's unwinder into the binaries instead of loading `libgcc_s.so.1`.
//!
//! Rust's `std` asks the linker for `-lgcc_s` (its unwinder, used for panics and backtraces).
//! Loading that shared library costs every `broctld` process a file open, four mappings, their
//! page faults and relocations, and the run of libgcc's CPU-feature constructor, which issues
//! `cpuid` (a trap to the hypervisor on a VM): about a tenth of a `broctld status` run's CPU
//! samples. The same unwinder ships as the static archive `libgcc_eh.a`; a link-search folder
//! holding it under the name `libgcc_s.a` is searched before the compiler's own folders, so
//! the linker takes it. Where the archive cannot be found, nothing changes.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let target = std::env::var("TARGET").unwrap_or_default();
    if !target.ends_with("-linux-gnu") {
        return;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let Ok(out) = Command::new(cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
    else {
        return;
    };
    let archive = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    // A compiler that does not know the file prints its bare name back.
    if !out.status.success() || !archive.is_absolute() || !archive.is_file() {
        return;
    }
    let dir = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("unwind");
    let link = dir.join("libgcc_s.a");
    let _ = std::fs::remove_file(&link);
    if std::fs::create_dir_all(&dir).is_err()
        || std::os::unix::fs::symlink(&archive, &link).is_err()
    {
        return;
    }
    println!("cargo:rustc-link-search=native={}", dir.display());
}
