//! Links the loader binary at a fixed physical address for multiboot.
//!
//! The loader runs before paging exists, at the address the multiboot loader copied it to, so it
//! is linked (not position-independent) with `link.ld`. The arguments are bin-only and only for
//! the bare-metal target, so the host build of the library and its tests is unaffected, and the
//! shared `RUSTFLAGS` of the workspace stay untouched.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    println!("cargo:rerun-if-changed=link.ld");
    if std::env::var("TARGET").unwrap() == "x86_64-unknown-none" {
        println!("cargo:rustc-link-arg-bins=--no-pie");
        println!("cargo:rustc-link-arg-bins=-T{dir}/link.ld");
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=4096");
    }
}
