//! The scale tier: two replicas sharing a PostgreSQL state database and one blob store
//! (a shared directory, or S3). Runs only when `CAPVAULT_TEST_POSTGRES_URL` is set, for
//! example `postgres://capv:capv@127.0.0.1/capv`; each run makes a database of its own
//! there (the user needs CREATEDB): one database is one collector, with one receipt
//! key and one store. With `CAPVAULT_TEST_S3_URL` (`s3://bucket/prefix`, endpoint and
//! credentials from the `AWS_*` variables) the blobs go to S3 as well.

mod common;

use std::sync::{Arc, Barrier};

use common::*;

#[test]
fn two_replicas_on_postgres_store_one_copy_and_answer_one_receipt() {
    let Ok(server_url) = std::env::var("CAPVAULT_TEST_POSTGRES_URL") else {
        eprintln!("skipped: set CAPVAULT_TEST_POSTGRES_URL to run the PostgreSQL tier");
        return;
    };
    let db = new_database(&server_url);
    let tmp = tempfile::tempdir().unwrap();
    let store = std::env::var("CAPVAULT_TEST_S3_URL").unwrap_or_else(|_| {
        tmp.path()
            .join("shared-bundles")
            .to_string_lossy()
            .into_owned()
    });
    let dir1 = tmp.path().join("r1");
    let dir2 = tmp.path().join("r2");
    let (receipt_key, token) = init_with(&dir1, &["--db", &db, "--store", &store]);
    // Replicas share the receipt signing key, the database and the store.
    std::fs::create_dir(&dir2).unwrap();
    std::fs::copy(
        dir1.join("receipt-signing.key"),
        dir2.join("receipt-signing.key"),
    )
    .unwrap();
    let args = ["--db", db.as_str(), "--store", store.as_str()];
    let r1 = Server::start(&dir1, &args);
    let r2 = Server::start(&dir2, &args);
    assert_eq!(r1.get("/healthz").status, 200);
    assert_eq!(r2.get("/healthz").status, 200);
    let key: capvault_format::ReceiptKey = receipt_key.parse().unwrap();
    let (id, id_path) = identity(tmp.path());
    let mut dev = Device::random();
    assert_eq!(r1.enroll(&token, &dev).status, 201);
    assert_eq!(r2.enroll(&token, &dev).status, 200);

    // Concurrent retries of each bundle to both replicas.
    for _ in 0..5 {
        let b = dev.seal_next(&id.recipient(), 3);
        let barrier = Arc::new(Barrier::new(4));
        let answers: Vec<Resp> = (0..4)
            .map(|i| {
                let addr = if i % 2 == 0 { r1.addr } else { r2.addr };
                let bytes = b.bytes().to_vec();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    request(
                        addr,
                        "POST",
                        "/v1/bundles",
                        "application/octet-stream",
                        &bytes,
                    )
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        for a in &answers {
            assert_eq!(a.status, 200, "{}", text(&a.body));
            assert_eq!(a.json(), answers[0].json());
        }
        let receipt = data_encoding::BASE64
            .decode(answers[0].json()["receipt"].as_str().unwrap().as_bytes())
            .unwrap();
        capvault_format::verify_receipt(&key, b.digest(), &receipt).unwrap();
    }
    // A conflicting bundle and a forged one are refused by either replica.
    let other = dev.seal_at(&id.recipient(), 1, [0; 32], 1);
    assert_eq!(r2.upload(other.bytes()).status, 409);
    let mut impostor = Device::impostor_of(&dev);
    assert_eq!(
        r1.upload(impostor.seal_next(&id.recipient(), 1).bytes())
            .status,
        403
    );
    // Neighbours that do not link, raced to both replicas: never both stored.
    let mut racer = Device::random();
    let t = new_token(&dir1, &["--db", &db]);
    assert_eq!(r1.enroll(&t, &racer).status, 201);
    race_unlinked_neighbours(r1.addr, r2.addr, &mut racer, &id.recipient(), 20);
    drop((r1, r2));

    let (code, lines, report) = export(
        &dir1,
        &id_path,
        &["--db", &db, "--store", &store, "--device", &dev.id_hex()],
    );
    assert_eq!(code, 0, "{report}");
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=15).collect::<Vec<_>>());
}

/// A new, empty database on the server of `url` (same user); its URL.
fn new_database(url: &str) -> String {
    let name = format!("capv_scale_{}", hex(&rand_bytes()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(url)
            .await
            .expect("the test database");
        // `name` is ours: a prefix and hex digits.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .expect("CREATE DATABASE (the test user needs CREATEDB)");
        pool.close().await;
    });
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let server = base.rsplit_once('/').map_or(base, |(s, _)| s);
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

fn rand_bytes() -> [u8; 8] {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    b
}
