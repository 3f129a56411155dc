//! Links the binaries with packed relative relocations (`DT_RELR`) where the C
//! library can load them.
//!
//! A position-independent executable carries one 24-byte record for every
//! pointer the loader must adjust; for this program that is ~200 KiB read at
//! every start and then kept resident for the life of the daemon. `DT_RELR`
//! encodes the same in ~3 KiB. The loader learned the format in glibc 2.36 and a
//! binary that uses it does not start on an older one, so it is used only when
//! building for the machine the build runs on and that machine's glibc is new
//! enough (NixOS and Debian 12 are; Ubuntu 22.04 is not and gets the plain form).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    let gnu = std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|e| e == "gnu");
    if target == host && gnu && glibc_at_least(2, 36) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// The build machine's glibc version from `getconf GNU_LIBC_VERSION`
/// (`glibc 2.36`); false when it cannot be told.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.trim().strip_prefix("glibc ") else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}
