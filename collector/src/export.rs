//! `export`: opens the stored bundles with the collector identity and writes their
//! events as JSON Lines, per (device, stream) in chain order.
//!
//! A bundle's events are written only after all of its checks pass: the blob is the
//! one indexed (its SHA-256 is the digest), the device's pin comes from its verified
//! enrollment record, the bundle's header names the indexed device, stream and
//! sequence and is signed by the pinned key, it opens with the identity (HPKE, payload
//! checks), and it links to the bundle before it when that one is present. A missing
//! predecessor (a gap) is reported as an integrity failure; the bundles after it are
//! still released, since their signature under the pinned key proves them authentic.
//! The chain report goes to stderr.

use std::io::Write;

use serde::Serialize;

use crate::db::{BundleRow, Db};
use crate::error::ApiError;
use crate::store::{BlobStore, StoredBlob};
use capvault_format::{DevicePins, EnrollmentRecord, Identity, OpenedBundle, PinVerdict};

/// One finding of the export.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Issue {
    /// The device's enrollment record does not verify or does not match its row.
    BadEnrollment,
    /// Bundles of the device are stored but the device is not enrolled.
    Unenrolled,
    /// The index names a blob that is not in the store.
    BlobMissing {
        /// Sequence number.
        seq: u64,
    },
    /// The index row or the stored file cannot be what the store wrote (a location or
    /// digest that does not parse, a link, a FIFO, a read error).
    BlobUnreadable {
        /// Sequence number.
        seq: u64,
        /// What was found.
        error: String,
    },
    /// The blob's bytes do not hash to the indexed digest.
    BlobCorrupt {
        /// Sequence number.
        seq: u64,
    },
    /// The bundle did not open or verify.
    OpenFailed {
        /// Sequence number.
        seq: u64,
        /// Why.
        error: String,
    },
    /// The header disagrees with the index row, or the signer is not the pinned key.
    NotPinned {
        /// Sequence number.
        seq: u64,
    },
    /// The bundle does not name the previous bundle's digest.
    PrevDigestMismatch {
        /// Sequence number.
        seq: u64,
    },
    /// Bundles `from..=to` are not stored.
    MissingBundles {
        /// First missing.
        from: u64,
        /// Last missing.
        to: u64,
    },
    /// The record range does not continue the previous bundle's.
    RecordGap {
        /// Sequence number.
        seq: u64,
        /// Expected first record.
        expected: u64,
        /// First record found.
        found: u64,
    },
}

/// The chain report of one (device, stream).
#[derive(Clone, Debug, Default, Serialize)]
pub struct StreamReport {
    /// Hex device id.
    pub device_id: String,
    /// Hex stream id.
    pub stream_id: String,
    /// Bundles whose events were written.
    pub bundles_exported: u64,
    /// Events written.
    pub events: u64,
    /// First and last sequence number exported.
    pub seq_range: Option<(u64, u64)>,
    /// Integrity findings (any makes the export exit 3).
    pub issues: Vec<Issue>,
}

/// What the whole export found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ExportReport {
    /// One entry per (device, stream), in order.
    pub streams: Vec<StreamReport>,
    /// Findings not tied to a stream (enrollment records).
    pub devices: Vec<(String, Issue)>,
}

impl ExportReport {
    /// True when nothing failed.
    pub fn is_clean(&self) -> bool {
        self.devices.is_empty() && self.streams.iter().all(|s| s.issues.is_empty())
    }

    /// Human-readable lines for stderr.
    pub fn write_text<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        for (d, i) in &self.devices {
            writeln!(w, "device {d}: {i:?}")?;
        }
        for s in &self.streams {
            let range = s
                .seq_range
                .map_or_else(|| "none".to_string(), |(a, b)| format!("{a}..={b}"));
            writeln!(
                w,
                "device {} stream {}: {} bundles (seq {range}), {} events, {}",
                s.device_id,
                s.stream_id,
                s.bundles_exported,
                s.events,
                if s.issues.is_empty() {
                    "chain ok"
                } else {
                    "INTEGRITY FAILURE"
                }
            )?;
            for i in &s.issues {
                writeln!(w, "  {}", serde_json::to_string(i).unwrap_or_default())?;
            }
        }
        Ok(())
    }
}

struct Link {
    seq: u64,
    digest: [u8; 32],
    last_record: u64,
}

/// Exports every stored bundle (or one device's) to `out`.
pub async fn export<W: Write>(
    db: &Db,
    store: &BlobStore,
    identity: &Identity,
    device: Option<&str>,
    out: &mut W,
) -> Result<ExportReport, ApiError> {
    let mut report = ExportReport::default();
    // Pins from the enrollment records, re-verified: an edited key column is caught.
    let mut pins = DevicePins::new();
    for d in db.devices().await? {
        let pinned = match EnrollmentRecord::from_json(&d.record) {
            Ok(r)
                if r.device_id_hex() == d.device_id
                    && data_encoding::HEXLOWER.encode(&r.device_key()) == d.device_key =>
            {
                pins.add(&r).is_ok()
            }
            _ => false,
        };
        if !pinned {
            report.devices.push((d.device_id, Issue::BadEnrollment));
        }
    }
    let device = device.map(str::to_ascii_lowercase);
    let rows = db.bundles(device.as_deref()).await?;
    let mut current: Option<StreamReport> = None;
    let mut prev: Option<Link> = None;
    let op =
        |e: &dyn std::fmt::Display| ApiError::Operational(format!("cannot write the output: {e}"));
    for row in rows {
        let same = current
            .as_ref()
            .is_some_and(|c| c.device_id == row.device_id && c.stream_id == row.stream_id);
        if !same {
            if let Some(c) = current.take() {
                report.streams.push(c);
            }
            current = Some(StreamReport {
                device_id: row.device_id.clone(),
                stream_id: row.stream_id.clone(),
                ..Default::default()
            });
            prev = None;
            if pin_of(&pins, &row.device_id).is_none() {
                current
                    .as_mut()
                    .expect("just set")
                    .issues
                    .push(Issue::Unenrolled);
            }
        }
        let cur = current.as_mut().expect("set above");
        if pin_of(&pins, &row.device_id).is_none() {
            continue;
        }
        match check_one(store, identity, &pins, &row, prev.as_ref()).await? {
            Checked::Released(opened, issues) => {
                capvault_format::write_bundle_json_lines(&opened, out, None).map_err(|e| op(&e))?;
                cur.bundles_exported += 1;
                cur.events += opened.events.len() as u64;
                cur.seq_range = Some(
                    cur.seq_range
                        .map_or((row.seq, row.seq), |(a, _)| (a, row.seq)),
                );
                cur.issues.extend(issues);
                prev = Some(Link {
                    seq: row.seq,
                    digest: opened.digest,
                    last_record: opened.header.last_record(),
                });
            }
            Checked::Rejected(issue) => cur.issues.push(issue),
        }
    }
    if let Some(c) = current.take() {
        report.streams.push(c);
    }
    out.flush().map_err(|e| op(&e))?;
    Ok(report)
}

fn pin_of<'a>(pins: &'a DevicePins, device_hex: &str) -> Option<&'a [u8; 32]> {
    let id: [u8; 16] = data_encoding::HEXLOWER
        .decode(device_hex.as_bytes())
        .ok()?
        .try_into()
        .ok()?;
    pins.key_of(&id)
}

enum Checked {
    Released(Box<OpenedBundle>, Vec<Issue>),
    Rejected(Issue),
}

async fn check_one(
    store: &BlobStore,
    identity: &Identity,
    pins: &DevicePins,
    row: &BundleRow,
    prev: Option<&Link>,
) -> Result<Checked, ApiError> {
    let seq = row.seq;
    // Each row's blob alone: the others are still checked and exported.
    let bytes = match store
        .get_checked(&row.digest, row.location.as_deref())
        .await?
    {
        StoredBlob::Found(bytes) => bytes,
        StoredBlob::Missing => return Ok(Checked::Rejected(Issue::BlobMissing { seq })),
        StoredBlob::Unreadable(error) => {
            return Ok(Checked::Rejected(Issue::BlobUnreadable { seq, error }))
        }
        StoredBlob::Corrupt => return Ok(Checked::Rejected(Issue::BlobCorrupt { seq })),
    };
    let opened = match capvault_format::open_bundle(&bytes, identity) {
        Ok(o) => o,
        Err(e) => {
            return Ok(Checked::Rejected(Issue::OpenFailed {
                seq,
                error: e.to_string(),
            }))
        }
    };
    let h = &opened.header;
    let matches_row = h.device_id_hex() == row.device_id
        && h.stream_id_hex() == row.stream_id
        && h.bundle_seq() == seq
        && pins.check(h) == PinVerdict::Pinned;
    if !matches_row {
        return Ok(Checked::Rejected(Issue::NotPinned { seq }));
    }
    let mut issues = Vec::new();
    match prev {
        // A device starts each stream at 1, naming no previous bundle: a stream stored
        // from a later one misses its start (sent to another collector, or lost here).
        None if seq > 1 => issues.push(Issue::MissingBundles {
            from: 1,
            to: seq - 1,
        }),
        None if h.prev_digest() != &[0u8; 32] => {
            issues.push(Issue::PrevDigestMismatch { seq });
        }
        _ => {}
    }
    if let Some(p) = prev {
        if p.seq + 1 == seq {
            if h.prev_digest() != &p.digest {
                return Ok(Checked::Rejected(Issue::PrevDigestMismatch { seq }));
            }
            // Records removed before release (budget, retention) are declared in the
            // header and by a loss marker among the events.
            let expected = p.last_record.wrapping_add(1).wrapping_add(h.records_lost());
            if h.first_record() != expected {
                issues.push(Issue::RecordGap {
                    seq,
                    expected,
                    found: h.first_record(),
                });
            }
        } else {
            issues.push(Issue::MissingBundles {
                from: p.seq + 1,
                to: seq - 1,
            });
        }
    }
    Ok(Checked::Released(Box::new(opened), issues))
}
