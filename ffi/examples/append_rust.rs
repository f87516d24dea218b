//! The Rust half of the C-path benchmark (scripts/bench-c-vs-rust.sh): THREADS threads
//! append EVENTS small events (mouse moves) in all to one vault through the Rust API,
//! then one durable flush. examples/c/bench_append.c does the same through libcapvault.
//!
//! `append_rust VAULT_DIR THREADS EVENTS` prints `rust: THREADS threads, EVENTS events,
//! SECONDS s, RATE events/s`, then erases the vault. Keys in kernel keyutils; VAULT_DIR
//! must not exist. `append_rust --erase VAULT_DIR` erases the C half's vault.

use std::sync::{Arc, Barrier};
use std::time::Instant;

use capvault_core::{KeyStoreKind, Vault, VaultOptions};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut o = VaultOptions::default();
    o.keystore = KeyStoreKind::Keyutils;
    if args.len() == 3 && args[1] == "--erase" {
        Vault::erase(&args[2], "bench", o).expect("erase");
        return;
    }
    if args.len() != 4 {
        eprintln!("usage: append_rust VAULT_DIR THREADS EVENTS | append_rust --erase VAULT_DIR");
        std::process::exit(2);
    }
    let threads: u64 = args[2].parse().expect("THREADS");
    let events: u64 = args[3].parse().expect("EVENTS");
    let vault = Arc::new(Vault::open(&args[1], "bench", o).expect("open"));
    let start = Arc::new(Barrier::new(threads as usize + 1));
    let per = events / threads;
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (vault, start) = (vault.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for i in 0..per {
                    let n = t * per + i;
                    let ts = 1_764_000_000_000_000 + n as i64 * 125;
                    let _ = vault
                        .append_mouse_move(ts, (n % 1920) as i32, (n % 1080) as i32)
                        .expect("append");
                }
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    for w in workers {
        w.join().expect("worker");
    }
    vault.flush().expect("flush");
    let secs = t0.elapsed().as_secs_f64();
    // Erased, not just closed: the script removes the directory, and the vault's keys
    // would stay in the kernel keyring, against the user's key quota, until reboot.
    Arc::into_inner(vault)
        .expect("sole owner")
        .erase_open()
        .expect("erase");
    let total = per * threads;
    println!(
        "rust: {threads} threads, {total} events, {secs:.3} s, {:.0} events/s",
        total as f64 / secs
    );
}
