//! The log against a model: random sequences of appends, flushes, close and reopen,
//! sealing (acknowledged or not), data-key and key-encryption-key rotation. After every
//! step the events still in the vault, after those released through acknowledged
//! bundles, must be exactly the events appended, in order, with consecutive sequence
//! numbers, and the vault must verify. (Appends are checked at the next other step: the
//! check itself flushes.)
mod common;

use capvault::{
    open_bundle, ChainChecker, Event, Identity, KeyStoreKind, SeqEvent, Suite, Vault, VaultOptions,
};
use common::options;
use proptest::prelude::*;
use proptest::test_runner::Config;

const USER: &str = "alice";
const SHOT_BYTES: usize = 5_000;

fn vault_options() -> VaultOptions {
    let mut o = options(KeyStoreKind::Keyutils);
    // Small frames and chunks: a few events already span several records, and a
    // screenshot is several chunks.
    o.frame_max_bytes = 256;
    o.chunk_bytes = 1024;
    o
}

fn shot(len: usize, seed: i64) -> Vec<u8> {
    let mut x = (seed as u64) ^ 0xA076_1D64_78BD_642F | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

#[derive(Clone, Debug)]
enum Op {
    /// Appends `n` mouse moves, then a screenshot if `shot`.
    Append {
        n: u16,
        shot: bool,
    },
    Flush,
    /// close() and Vault::open again.
    Reopen,
    /// Seals the next bundle and acknowledges it.
    SealAck {
        max_bytes: usize,
    },
    /// Seals the next bundle and drops it (the acknowledgement never arrives).
    SealOnly {
        max_bytes: usize,
    },
    RotateDek,
    RotateKek,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (1u16..120, prop::bool::weighted(0.2)).prop_map(|(n, shot)| Op::Append { n, shot }),
        2 => Just(Op::Flush),
        2 => Just(Op::Reopen),
        3 => (1_024usize..16_384).prop_map(|max_bytes| Op::SealAck { max_bytes }),
        1 => (1_024usize..16_384).prop_map(|max_bytes| Op::SealOnly { max_bytes }),
        1 => Just(Op::RotateDek),
        1 => Just(Op::RotateKek),
    ]
}

fn is_marker(e: &Event) -> bool {
    matches!(e, Event::Marker { .. })
}

/// The model and the real vault side by side.
struct Harness {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    vault: Option<Vault>,
    identity: Identity,
    /// Every event appended (the model of the log; no crashes, so all of it stays).
    appended: Vec<Event>,
    /// Events released through acknowledged bundles, in order.
    released: Vec<SeqEvent>,
    /// Events of the bundle offered and not acknowledged.
    pending: Option<Vec<SeqEvent>>,
    chain: ChainChecker,
    next_x: i64,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault");
        let vault = Vault::open(&path, USER, vault_options()).unwrap();
        Harness {
            _dir: dir,
            path,
            vault: Some(vault),
            identity: Identity::generate(Suite::X25519),
            appended: Vec::new(),
            released: Vec::new(),
            pending: None,
            chain: ChainChecker::new(),
            next_x: 0,
        }
    }

    fn v(&self) -> &Vault {
        self.vault.as_ref().unwrap()
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Append { n, shot: with_shot } => {
                for _ in 0..n {
                    let x = self.next_x;
                    self.next_x += 1;
                    let _ = self
                        .v()
                        .append_mouse_move(x, x as i32, -(x as i32))
                        .unwrap();
                    self.appended.push(Event::MouseMove {
                        ts_us: x,
                        x: x as i32,
                        y: -(x as i32),
                    });
                }
                if with_shot {
                    let ts = self.next_x - 1;
                    let data = shot(SHOT_BYTES, ts);
                    let _ = self
                        .v()
                        .append_screenshot(ts, 64, 48, "raw", &data)
                        .unwrap();
                    self.appended.push(Event::Screenshot {
                        ts_us: ts,
                        width: 64,
                        height: 48,
                        format: "raw".into(),
                        data,
                    });
                }
            }
            Op::Flush => self.v().flush().unwrap(),
            Op::Reopen => {
                self.vault.take().unwrap().close().unwrap();
                self.vault = Some(Vault::open(&self.path, USER, vault_options()).unwrap());
            }
            Op::SealAck { max_bytes } | Op::SealOnly { max_bytes } => {
                let ack = matches!(op, Op::SealAck { .. });
                let Some(b) = self
                    .v()
                    .seal_next(&self.identity.recipient(), max_bytes)
                    .unwrap()
                else {
                    let left = self.v().test_read_all().unwrap();
                    prop_assert!(
                        left.is_empty(),
                        "nothing to seal, yet {} events",
                        left.len()
                    );
                    prop_assert!(self.pending.is_none());
                    return Ok(());
                };
                let opened = open_bundle(b.bytes(), &self.identity).unwrap();
                prop_assert!(!opened.events.is_empty());
                if let Some(p) = &self.pending {
                    prop_assert_eq!(
                        &opened.events,
                        p,
                        "an unacknowledged range is offered again"
                    );
                }
                // The bundle holds the oldest stored events.
                let stored = self.v().test_read_all().unwrap();
                prop_assert!(
                    stored.starts_with(&opened.events),
                    "the bundle is not the start of the log"
                );
                if ack {
                    self.v().ack(b.id(), None).unwrap();
                    self.chain.add_opened(&opened);
                    self.released.extend(opened.events.iter().cloned());
                    self.pending = None;
                } else {
                    self.pending = Some(opened.events.clone());
                }
            }
            Op::RotateDek => {
                let _ = self.v().rotate_dek().unwrap();
            }
            Op::RotateKek => {
                let _ = self.v().rotate_kek().unwrap();
            }
        }
        Ok(())
    }

    /// The vault and the model agree.
    fn check(&self) -> Result<(), TestCaseError> {
        let v = self.v();
        let stored = v.test_read_all().unwrap();
        let report = v
            .verify()
            .map_err(|e| TestCaseError::fail(format!("verify: {e}")))?;
        prop_assert_eq!(report.events, stored.len() as u64);
        let all: Vec<&SeqEvent> = self.released.iter().chain(stored.iter()).collect();
        for w in all.windows(2) {
            prop_assert_eq!(
                w[1].seq,
                w[0].seq + 1,
                "event sequence numbers are consecutive across released and stored events"
            );
        }
        let got: Vec<&Event> = all
            .iter()
            .map(|e| &e.event)
            .filter(|e| !is_marker(e))
            .collect();
        let want: Vec<&Event> = self.appended.iter().collect();
        prop_assert_eq!(got.len(), want.len(), "number of events");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            prop_assert_eq!(g, w, "event {} differs", i);
        }
        if let Some(p) = &self.pending {
            prop_assert!(stored.starts_with(p), "the offered range is still stored");
        }
        let chain = self.chain.report();
        prop_assert!(
            chain.issues().next().is_none(),
            "acknowledged bundles chain: {:?}",
            chain
                .issues()
                .map(|(_, i)| i.to_string())
                .collect::<Vec<_>>()
        );
        Ok(())
    }
}

proptest! {
    #![proptest_config(Config {
        cases: 16,
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn the_log_matches_the_model(ops in prop::collection::vec(op(), 1..=20)) {
        let mut h = Harness::new();
        for (i, op) in ops.iter().enumerate() {
            h.apply(op).map_err(|e| TestCaseError::fail(format!("step {i} ({op:?}): {e}")))?;
            // Checking reads the whole log, which first stores everything appended: after
            // an append that would hide a later step (close, say) that forgets to.
            if !matches!(op, Op::Append { .. }) {
                h.check()
                    .map_err(|e| TestCaseError::fail(format!("after step {i} ({op:?}): {e}")))?;
            }
        }
        // Everything still stored survives a final close and reopen, then drains.
        h.apply(&Op::Reopen)?;
        h.check()?;
        for _ in 0..100 {
            if h.v().test_read_all().unwrap().is_empty() {
                break;
            }
            h.apply(&Op::SealAck { max_bytes: 1 << 20 })?;
            h.check()?;
        }
        prop_assert!(h.v().test_read_all().unwrap().is_empty(), "the log drains");
        h.vault.take().unwrap().close().unwrap();
    }
}
