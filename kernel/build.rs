//! With the `trace` feature, link `trace.x` (defmt's `defmt.x` made to add to the default
//! layout rather than replace it): it keeps the `.defmt` section of interned strings that
//! `scripts/trace` decodes with.
fn main() {
    println!("cargo:rerun-if-changed=trace.x");
    if std::env::var_os("CARGO_FEATURE_TRACE").is_some() {
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        println!("cargo:rustc-link-search={dir}");
        println!("cargo:rustc-link-arg-bins=-Ttrace.x");
    }
}
