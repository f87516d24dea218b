//! Gives the shared library a versioned SONAME (`libcapvault.so.<ABI>`), so programs
//! linked against it record the ABI they need and refuse an incompatible library.

fn main() {
    // Keep in step with `CAPVAULT_ABI_VERSION` in src/lib.rs (a test checks it).
    const ABI: u32 = 1;
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" || os == "freebsd" || os == "android" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcapvault.so.{ABI}");
    }
    println!("cargo:rustc-env=CAPVAULT_SONAME_ABI={ABI}");
    println!("cargo:rerun-if-changed=build.rs");
}
