//! A minimal capture agent in Rust: open a vault, record a few events, flush, report.
//!
//! `cargo run --example agent -- /tmp/capvault-example alice`
//! (uses the platform keychain; pass `keyutils` as a third argument on headless Linux).

use capvault::{KeyStoreKind, Vault, VaultOptions};

fn main() -> capvault::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "capvault-example".into());
    let user = args.next().unwrap_or_else(|| "alice".into());
    let mut options = VaultOptions::default();
    if args.next().as_deref() == Some("keyutils") {
        options.keystore = KeyStoreKind::Keyutils;
    }
    let vault = Vault::open(&dir, &user, options)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    for i in 0..1000 {
        let _ = vault.append_mouse_move(now + i, (i % 1920) as i32, (i % 1080) as i32)?;
    }
    let _ = vault.append_key(now + 1000, 0x04, true, Some("a"))?;
    let _ = vault.append_window_focus(now + 1001, "editor", "notes.txt")?;
    vault.flush()?;
    let status = vault.status()?;
    println!(
        "{} records, {} bytes stored, keychain {:?}",
        status.records, status.stored_bytes, status.keystore
    );
    vault.close()
}
