//! With the `trace` feature, link defmt's script (`defmt.x`, found on the search path defmt's
//! own build script adds): it keeps the `.defmt` section of interned strings that
//! `scripts/trace` decodes with.
fn main() {
    if std::env::var_os("CARGO_FEATURE_TRACE").is_some() {
        println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
    }
}
