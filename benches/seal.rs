//! P4: seal + open throughput of one bundle with ~64 MB of plaintext (mixed small events
//! and 1.5 MB screenshots). Run with `cargo bench --bench seal --features test-hooks`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use capvault::test_hooks::{seal_bundle, BundleInput};
use capvault::{open_bundle, Event, Identity, SeqEvent, Suite};

fn events() -> Vec<SeqEvent> {
    let mut out = Vec::new();
    let mut seq = 0u64;
    let mut push = |event: Event, out: &mut Vec<SeqEvent>| {
        seq += 1;
        out.push(SeqEvent { seq, event });
    };
    // Incompressible-looking screenshot bytes.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut shot = vec![0u8; 1_500_000];
    for b in shot.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    for s in 0..40 {
        for i in 0..5_000i32 {
            let ts_us = 1_764_000_000_000_000 + (s * 5_000 + i as i64) * 125;
            push(
                Event::MouseMove {
                    ts_us,
                    x: i % 1920,
                    y: i % 1080,
                },
                &mut out,
            );
            if i % 50 == 0 {
                push(Event::key(ts_us, 4, true, None), &mut out);
            }
        }
        push(
            Event::Screenshot {
                ts_us: 1_764_000_000_000_000 + s * 1_000_000,
                width: 1920,
                height: 1080,
                format: "webp".into(),
                data: shot.clone(),
            },
            &mut out,
        );
    }
    out
}

fn bench(c: &mut Criterion) {
    let events = events();
    let plain = postcard::to_allocvec(&events).unwrap().len();
    let mut g = c.benchmark_group("seal_open_64mb");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(plain as u64));
    for suite in [Suite::X25519, Suite::XWing] {
        let id = Identity::generate(suite);
        let recipient = id.recipient();
        let input = BundleInput {
            device_id: [1; 16],
            stream_id: [0x22; 16],
            records_lost: 0,
            bundle_seq: 1,
            first_record: 1,
            last_record: 1000,
            prev_digest: [0; 32],
            created_us: 1_764_000_000_000_000,
            purpose: "benchmark",
            user: "bench-user",
            events: &events,
            audit: &[],
        };
        g.bench_function(format!("{suite}/seal+open"), |b| {
            b.iter(|| {
                let sealed = seal_bundle(&input, &recipient, &[7; 32]).unwrap();
                let opened = open_bundle(sealed.bytes(), &id).unwrap();
                assert_eq!(opened.events.len(), events.len());
            })
        });
        let sealed = seal_bundle(&input, &recipient, &[7; 32]).unwrap();
        g.bench_function(format!("{suite}/seal"), |b| {
            b.iter(|| seal_bundle(&input, &recipient, &[7; 32]).unwrap())
        });
        g.bench_function(format!("{suite}/open"), |b| {
            b.iter(|| open_bundle(sealed.bytes(), &id).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
