//! Append throughput side by side: the vault (framing + XChaCha20-Poly1305 + sled) and raw
//! sled with one insert per event, on the same serialized event bytes.
//!
//! `cargo bench --bench append` (uses kernel keyutils for the vault's keys).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use capvault::{Event, KeyStoreKind, Vault, VaultOptions};

const EVENTS: u64 = 200_000;

fn options() -> VaultOptions {
    let mut o = VaultOptions::default();
    o.keystore = KeyStoreKind::Keyutils;
    o
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("small events (mouse moves)");
    g.throughput(Throughput::Elements(EVENTS));
    g.sample_size(10);
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open(dir.path().join("v"), "bench", options()).unwrap();
    let mut ts = 1_764_000_000_000_000i64;
    g.bench_function("vault append + flush", |b| {
        b.iter(|| {
            for i in 0..EVENTS {
                ts += 125;
                let _ = vault
                    .append_mouse_move(ts, (i % 1920) as i32, (i % 1080) as i32)
                    .unwrap();
            }
            vault.flush().unwrap();
        })
    });
    let raw = sled::open(dir.path().join("raw")).unwrap();
    let mut seq = 0u64;
    g.bench_function("raw sled, one insert per event", |b| {
        b.iter(|| {
            let mut buf = Vec::new();
            for i in 0..EVENTS {
                ts += 125;
                seq += 1;
                buf.clear();
                Event::MouseMove {
                    ts_us: ts,
                    x: (i % 1920) as i32,
                    y: (i % 1080) as i32,
                }
                .encode_into(&mut buf);
                raw.insert(seq.to_be_bytes(), buf.as_slice()).unwrap();
            }
            raw.flush().unwrap();
        })
    });
    g.finish();

    let mut g = c.benchmark_group("screenshots (1.5 MB incompressible)");
    let shot: Vec<u8> = (0..1_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    g.throughput(Throughput::Bytes(shot.len() as u64 * 20));
    g.sample_size(10);
    g.bench_function("vault append + flush", |b| {
        b.iter(|| {
            for _ in 0..20 {
                ts += 1_000_000;
                let _ = vault
                    .append_screenshot(ts, 1920, 1080, "png", &shot)
                    .unwrap();
            }
            vault.flush().unwrap();
        })
    });
    g.finish();
    let st = vault.status().unwrap();
    eprintln!(
        "vault: {} records, {} stored bytes, {} bytes on disk",
        st.records, st.stored_bytes, st.disk_bytes
    );
    // The vault's keys would otherwise stay in the kernel keyring, against the user's key
    // quota, until reboot.
    vault.erase_open().unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);
