//! Measures bytes on disk after flush against the serialized plaintext (SPEC P2), for
//! small events and for screenshots, each in a fresh vault.
//!
//! `cargo run --release --example footprint` (kernel keyutils holds the keys).

use capvault::{Event, KeyStoreKind, Vault, VaultOptions};

fn dir_size(path: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(path).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            dir_size(&e.path())
        } else {
            m.len()
        };
    }
    total
}

fn run(name: &str, events: impl Iterator<Item = Event>) {
    let tmp =
        std::env::temp_dir().join(format!("capvault-footprint-{}-{name}", std::process::id()));
    let mut o = VaultOptions::default();
    o.keystore = KeyStoreKind::Keyutils;
    let v = Vault::open(&tmp, "footprint", o).unwrap();
    let mut plain = 0u64;
    let mut buf = Vec::new();
    let start = std::time::Instant::now();
    for e in events {
        buf.clear();
        e.encode_into(&mut buf);
        plain += buf.len() as u64;
        let _ = v.append(e).unwrap();
    }
    v.flush().unwrap();
    let secs = start.elapsed().as_secs_f64();
    let st = v.status().unwrap();
    v.close().unwrap();
    let disk = dir_size(&tmp);
    println!(
        "{name}: plaintext {plain} B, records {} B ({:.3}x), files on disk {disk} B ({:.3}x), {:.1} MB/s",
        st.stored_bytes,
        st.stored_bytes as f64 / plain as f64,
        disk as f64 / plain as f64,
        plain as f64 / secs / 1e6
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

fn main() {
    let t0 = 1_764_000_000_000_000i64;
    run(
        "mouse moves (2,000,000)",
        (0..2_000_000i64).map(|i| Event::MouseMove {
            ts_us: t0 + i * 125,
            x: (i % 1920) as i32,
            y: (i % 1080) as i32,
        }),
    );
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    run(
        "screenshots (100 x 1.5 MB incompressible)",
        (0..100i64).map(move |i| {
            let data: Vec<u8> = (0..1_500_000 / 8)
                .flat_map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()
                })
                .collect();
            Event::Screenshot {
                ts_us: t0 + i * 1_000_000,
                width: 1920,
                height: 1080,
                format: "png".into(),
                data,
            }
        }),
    );
}
