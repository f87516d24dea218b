//! The collector side: open and verify bundles, check each device's chain of bundles,
//! and write events as JSON Lines.
//!
//! Opening a bundle proves that it is intact and was signed by the device key *in its
//! header*; it does not prove which device that is. [`ChainChecker`] pins one key per
//! device id (the first one it sees, or one given with [`ChainChecker::pin_device_key`])
//! and reports any bundle under that device id signed by another key.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::Serialize;
use zeroize::Zeroize;

use crate::audit::AuditEntry;
use crate::bundle::{bundle_id, parse_and_open, parse_bundle, BundleHeader};
use crate::error::{Error, Result};
use crate::events::{Event, Marker, SeqEvent};
use crate::recipient::Identity;

/// A bundle opened and verified by [`open_bundle`]. Its event content is zeroized when
/// it is dropped.
pub struct OpenedBundle {
    /// The clear header.
    pub header: BundleHeader,
    /// The data subject (travels only inside the ciphertext).
    pub user: String,
    /// The events, in increasing sequence order, all within the header's event range.
    pub events: Vec<SeqEvent>,
    /// Audit ledger entries released with the events.
    pub audit: Vec<AuditEntry>,
    /// SHA-256 of the bundle bytes (what a receipt signs).
    pub digest: [u8; 32],
    /// The bundle id.
    pub id: String,
}

impl Drop for OpenedBundle {
    fn drop(&mut self) {
        self.user.zeroize();
        for e in &mut self.events {
            e.event.zeroize();
        }
    }
}

impl std::fmt::Debug for OpenedBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OpenedBundle({}, device {}, seq {}, {} events)",
            self.id,
            self.header.device_id_hex(),
            self.header.bundle_seq(),
            self.events.len()
        )
    }
}

/// A bundle whose framing and device signature were checked, without decrypting it
/// (no identity needed). Enough for [`ChainChecker`].
#[derive(Clone, Debug)]
pub struct InspectedBundle {
    /// The clear header.
    pub header: BundleHeader,
    /// SHA-256 of the bundle bytes.
    pub digest: [u8; 32],
    /// The bundle id.
    pub id: String,
}

/// Checks a bundle's structure and device signature and decodes its header.
///
/// Errors as for [`open_bundle`] up to and including the signature check.
pub fn inspect_bundle(bytes: &[u8]) -> Result<InspectedBundle> {
    let p = parse_bundle(bytes)?;
    Ok(InspectedBundle {
        id: bundle_id(&p.digest),
        digest: p.digest,
        header: p.header,
    })
}

/// Parses, verifies and decrypts a bundle.
///
/// Checks, in order (the first failure is returned, never partial plaintext):
///
/// | input | error |
/// |---|---|
/// | not a bundle (bad magic) | `InvalidArgument`: "not a capvault bundle" |
/// | unknown format version | `InvalidArgument`: "unsupported bundle format version" |
/// | truncated, lengths that do not add up | `Tampered`: "truncated" |
/// | bytes after the signature | `Tampered`: "trailing bytes" |
/// | any changed byte (header, enc, ciphertext, signature) | `Tampered`: "device signature does not verify" |
/// | unknown HPKE suite | `InvalidArgument`: "unsupported HPKE suite" |
/// | bundle suite differs from the identity's | `InvalidArgument`: "sealed to an … recipient, but the identity is an …" |
/// | sealed to another recipient | `NotFound`: "this bundle is not sealed to this identity" |
/// | header swapped and re-signed by another key | `Tampered`: "the header does not belong to this payload" |
/// | payload that does not decode, events outside the header's range | `Tampered` |
pub fn open_bundle(bytes: &[u8], identity: &Identity) -> Result<OpenedBundle> {
    let (header, digest, payload) = parse_and_open(bytes, identity)?;
    let h = &header;
    let ev = &payload.events;
    let in_range = ev.len() as u64 == h.event_count()
        && ev.windows(2).all(|w| w[0].seq < w[1].seq)
        && match (ev.first(), ev.last()) {
            (Some(f), Some(l)) => f.seq == h.first_event() && l.seq == h.last_event(),
            _ => true,
        };
    if !in_range {
        // `payload` is dropped here; its event content is in the zeroized buffer's
        // decoded copies, which we scrub explicitly.
        let mut payload = payload;
        for e in &mut payload.events {
            e.event.zeroize();
        }
        payload.user.zeroize();
        return Err(Error::tampered(
            "the payload's events do not match the header's event range",
        ));
    }
    let mut payload = payload;
    Ok(OpenedBundle {
        header,
        user: std::mem::take(&mut payload.user),
        events: std::mem::take(&mut payload.events),
        audit: std::mem::take(&mut payload.audit),
        id: bundle_id(&digest),
        digest,
    })
}

// ----- chain checking -----

/// One finding of [`ChainChecker`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChainIssue {
    /// Bundle sequence numbers `from..=to` are missing.
    MissingBundles {
        /// First missing sequence number.
        from: u64,
        /// Last missing sequence number.
        to: u64,
    },
    /// The bundle's record range does not continue the previous bundle's (records
    /// skipped or repeated; a loss marker in the events explains a deliberate skip).
    RecordGap {
        /// The bundle whose range does not continue.
        bundle_seq: u64,
        /// The record it should start at.
        expected_first_record: u64,
        /// The record it starts at.
        first_record: u64,
    },
    /// The same bundle arrived more than once (an idempotent retry; harmless).
    DuplicateRetry {
        /// Its sequence number.
        bundle_seq: u64,
        /// Its id.
        id: String,
        /// How many copies arrived.
        copies: usize,
    },
    /// Different bundles claim the same device and sequence number.
    Conflict {
        /// The sequence number.
        bundle_seq: u64,
        /// The ids of the conflicting bundles.
        ids: Vec<String>,
    },
    /// Bundles arrived out of sequence order (informational).
    Reordered {
        /// The late bundle.
        bundle_seq: u64,
        /// The highest sequence number that arrived before it.
        arrived_after_seq: u64,
    },
    /// The bundle's previous-digest field does not name the previous bundle.
    PrevDigestMismatch {
        /// The bundle whose link is wrong.
        bundle_seq: u64,
        /// Id of the bundle it should link to.
        expected_prev_id: String,
    },
    /// A bundle for this device id is signed by a key other than the device's.
    DeviceKeyChanged {
        /// Its sequence number.
        bundle_seq: u64,
        /// Its id.
        id: String,
        /// The device's key, hex.
        expected_key: String,
        /// The key that signed it, hex.
        found_key: String,
    },
    /// The earliest bundle present links to an earlier one that is not in this set
    /// (informational: the set does not start at the device's first bundle).
    StartsMidChain {
        /// The earliest sequence number present.
        bundle_seq: u64,
    },
}

impl ChainIssue {
    /// True for findings that mean data is missing or not authentic; false for
    /// harmless retries, arrival order and a set that starts mid-chain.
    pub fn is_integrity_failure(&self) -> bool {
        !matches!(
            self,
            ChainIssue::DuplicateRetry { .. }
                | ChainIssue::Reordered { .. }
                | ChainIssue::StartsMidChain { .. }
        )
    }
}

impl std::fmt::Display for ChainIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainIssue::MissingBundles { from, to } if from == to => {
                write!(f, "bundle {from} is missing")
            }
            ChainIssue::MissingBundles { from, to } => write!(f, "bundles {from}..={to} are missing"),
            ChainIssue::RecordGap { bundle_seq, expected_first_record, first_record } => write!(
                f,
                "bundle {bundle_seq} starts at record {first_record}, expected {expected_first_record}"
            ),
            ChainIssue::DuplicateRetry { bundle_seq, id, copies } => {
                write!(f, "bundle {bundle_seq} ({id}) arrived {copies} times (retry, harmless)")
            }
            ChainIssue::Conflict { bundle_seq, ids } => write!(
                f,
                "conflict: {} different bundles claim sequence {bundle_seq}: {}",
                ids.len(),
                ids.join(", ")
            ),
            ChainIssue::Reordered { bundle_seq, arrived_after_seq } => write!(
                f,
                "bundle {bundle_seq} arrived after bundle {arrived_after_seq}"
            ),
            ChainIssue::PrevDigestMismatch { bundle_seq, expected_prev_id } => write!(
                f,
                "bundle {bundle_seq} does not link to the previous bundle {expected_prev_id}"
            ),
            ChainIssue::DeviceKeyChanged { bundle_seq, id, expected_key, found_key } => write!(
                f,
                "bundle {bundle_seq} ({id}) is signed by key {found_key}, not by this device's key \
                 {expected_key}: it comes from another device"
            ),
            ChainIssue::StartsMidChain { bundle_seq } => write!(
                f,
                "bundle {bundle_seq} links to earlier bundles that are not in this set"
            ),
        }
    }
}

/// The chain of one device.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceChain {
    /// The device id, hex.
    pub device_id: String,
    /// The device's pinned Ed25519 key, hex.
    pub device_key: String,
    /// Distinct bundles from this device (duplicates counted once).
    pub bundles: usize,
    /// Lowest bundle sequence number present.
    pub first_seq: u64,
    /// Highest bundle sequence number present.
    pub last_seq: u64,
    /// Findings, in sequence order.
    pub issues: Vec<ChainIssue>,
}

/// What [`ChainChecker::report`] found, per device.
#[derive(Clone, Debug, Serialize)]
pub struct ChainReport {
    /// One entry per device id, ordered by device id.
    pub devices: Vec<DeviceChain>,
}

impl ChainReport {
    /// True when no device has an integrity failure.
    pub fn is_clean(&self) -> bool {
        self.devices
            .iter()
            .all(|d| d.issues.iter().all(|i| !i.is_integrity_failure()))
    }

    /// Every finding with its device id.
    pub fn issues(&self) -> impl Iterator<Item = (&str, &ChainIssue)> {
        self.devices
            .iter()
            .flat_map(|d| d.issues.iter().map(move |i| (d.device_id.as_str(), i)))
    }
}

#[derive(Clone)]
struct Seen {
    seq: u64,
    key: [u8; 32],
    first_record: u64,
    last_record: u64,
    prev_digest: [u8; 32],
    digest: [u8; 32],
}

/// Collects bundle headers in arrival order (any order is fine) and reports, per
/// device: missing bundles, record ranges that do not continue, duplicates (retries)
/// and conflicts, reordering, broken previous-digest links and bundles signed by a key
/// other than the device's.
#[derive(Default)]
pub struct ChainChecker {
    seen: BTreeMap<[u8; 16], Vec<Seen>>,
    pinned: BTreeMap<[u8; 16], [u8; 32]>,
}

impl ChainChecker {
    /// An empty checker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares the known key of a device. Without it, the key of the first bundle
    /// added for the device is taken as the device's key.
    pub fn pin_device_key(&mut self, device_id: [u8; 16], key: [u8; 32]) {
        self.pinned.insert(device_id, key);
    }

    /// Adds a bundle (its header and digest) as it arrived.
    pub fn add(&mut self, header: &BundleHeader, digest: &[u8; 32]) {
        self.seen
            .entry(*header.device_id())
            .or_default()
            .push(Seen {
                seq: header.bundle_seq(),
                key: *header.device_key(),
                first_record: header.first_record(),
                last_record: header.last_record(),
                prev_digest: *header.prev_digest(),
                digest: *digest,
            });
    }

    /// Adds an opened bundle.
    pub fn add_opened(&mut self, bundle: &OpenedBundle) {
        self.add(&bundle.header, &bundle.digest);
    }

    /// Adds an inspected bundle.
    pub fn add_inspected(&mut self, bundle: &InspectedBundle) {
        self.add(&bundle.header, &bundle.digest);
    }

    /// The findings so far.
    pub fn report(&self) -> ChainReport {
        let devices = self
            .seen
            .iter()
            .map(|(device_id, arrivals)| self.device_report(device_id, arrivals))
            .collect();
        ChainReport { devices }
    }

    fn device_report(&self, device_id: &[u8; 16], arrivals: &[Seen]) -> DeviceChain {
        let hex = |b: &[u8]| data_encoding::HEXLOWER.encode(b);
        let key = self
            .pinned
            .get(device_id)
            .copied()
            .unwrap_or(arrivals[0].key);
        let mut issues = Vec::new();
        let mut max_seq: Option<u64> = None;
        let mut by_seq: BTreeMap<u64, Vec<&Seen>> = BTreeMap::new();
        for s in arrivals {
            if s.key != key {
                issues.push(ChainIssue::DeviceKeyChanged {
                    bundle_seq: s.seq,
                    id: bundle_id(&s.digest),
                    expected_key: hex(&key),
                    found_key: hex(&s.key),
                });
                continue;
            }
            if let Some(m) = max_seq {
                if s.seq < m {
                    issues.push(ChainIssue::Reordered {
                        bundle_seq: s.seq,
                        arrived_after_seq: m,
                    });
                }
            }
            max_seq = Some(max_seq.map_or(s.seq, |m| m.max(s.seq)));
            by_seq.entry(s.seq).or_default().push(s);
        }
        // Per sequence number: retries and conflicts; pick the bundle that continues
        // the chain for the link checks.
        let mut chain: Vec<&Seen> = Vec::new();
        for (seq, copies) in &by_seq {
            let mut distinct: Vec<&Seen> = Vec::new();
            for c in copies {
                if !distinct.iter().any(|d| d.digest == c.digest) {
                    distinct.push(c);
                }
            }
            for d in &distinct {
                let n = copies.iter().filter(|c| c.digest == d.digest).count();
                if n > 1 {
                    issues.push(ChainIssue::DuplicateRetry {
                        bundle_seq: *seq,
                        id: bundle_id(&d.digest),
                        copies: n,
                    });
                }
            }
            if distinct.len() > 1 {
                issues.push(ChainIssue::Conflict {
                    bundle_seq: *seq,
                    ids: distinct.iter().map(|d| bundle_id(&d.digest)).collect(),
                });
            }
            let prev = chain.last().filter(|p| p.seq + 1 == *seq);
            let pick = prev
                .and_then(|p| distinct.iter().find(|d| d.prev_digest == p.digest))
                .unwrap_or(&distinct[0]);
            chain.push(pick);
        }
        if let Some(first) = chain.first() {
            if first.prev_digest != [0u8; 32] {
                issues.push(ChainIssue::StartsMidChain {
                    bundle_seq: first.seq,
                });
            }
        }
        for w in chain.windows(2) {
            let (a, b) = (w[0], w[1]);
            if b.seq != a.seq + 1 {
                issues.push(ChainIssue::MissingBundles {
                    from: a.seq + 1,
                    to: b.seq - 1,
                });
                continue;
            }
            if b.prev_digest != a.digest {
                issues.push(ChainIssue::PrevDigestMismatch {
                    bundle_seq: b.seq,
                    expected_prev_id: bundle_id(&a.digest),
                });
            }
            if b.first_record != a.last_record.wrapping_add(1) {
                issues.push(ChainIssue::RecordGap {
                    bundle_seq: b.seq,
                    expected_first_record: a.last_record.wrapping_add(1),
                    first_record: b.first_record,
                });
            }
        }
        DeviceChain {
            device_id: hex(device_id),
            device_key: hex(&key),
            bundles: chain.len()
                + by_seq
                    .values()
                    .map(|c| {
                        let mut d: Vec<[u8; 32]> = c.iter().map(|s| s.digest).collect();
                        d.sort();
                        d.dedup();
                        d.len() - 1
                    })
                    .sum::<usize>(),
            first_seq: chain.first().map_or(0, |s| s.seq),
            last_seq: chain.last().map_or(0, |s| s.seq),
            issues,
        }
    }
}

// ----- JSON Lines -----

fn marker_fields(m: &Marker) -> (&'static str, Vec<(&'static str, serde_json::Value)>) {
    use serde_json::Value;
    match m {
        Marker::PauseStart { until_us } => {
            ("pause_start", vec![("until_us", Value::from(*until_us))])
        }
        Marker::PauseEnd { dropped } => ("pause_end", vec![("dropped", Value::from(*dropped))]),
        Marker::DenyListGapStart => ("deny_list_gap_start", vec![]),
        Marker::DenyListGapEnd { dropped } => (
            "deny_list_gap_end",
            vec![("dropped", Value::from(*dropped))],
        ),
        Marker::Loss {
            reason,
            records,
            bytes,
        } => (
            "loss",
            vec![
                ("reason", Value::from(reason.name())),
                ("records", Value::from(*records)),
                ("bytes", Value::from(*bytes)),
            ],
        ),
        Marker::PolicyChanged { version } => {
            ("policy_changed", vec![("version", Value::from(*version))])
        }
        Marker::KeyRotated { epoch } => ("key_rotated", vec![("epoch", Value::from(*epoch))]),
    }
}

/// A file-name-safe extension for a screenshot format.
fn blob_ext(format: &str) -> String {
    let ext: String = format
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    if ext.is_empty() {
        "bin".into()
    } else {
        ext
    }
}

fn write_blob(dir: &Path, seq: u64, ext: &str, data: &[u8]) -> Result<String> {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let name = format!(
        "{seq}-{}.{ext}",
        data_encoding::HEXLOWER.encode(&d.as_ref()[..8])
    );
    let path = dir.join(&name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(&path)?.write_all(data)?;
    Ok(path.to_string_lossy().into_owned())
}

/// Writes one JSON object per event and line (SPEC section 9): `seq`, `ts_us`, `type`,
/// then the type's fields under their C API names. Absent optional key fields are
/// left out. Binary payloads (screenshot and custom data) are written as `data_b64`,
/// or, with `blobs_dir`, as files in that directory (owner-only, named
/// `<seq>-<sha256 prefix>.<ext>`) referenced by `data_file`.
pub fn write_json_lines<W: Write>(
    events: &[SeqEvent],
    out: &mut W,
    blobs_dir: Option<&Path>,
) -> Result<()> {
    use serde_json::Value;
    let mut line = Vec::with_capacity(256);
    for SeqEvent { seq, event } in events {
        let mut fields: Vec<(&str, Value)> = vec![
            ("seq", Value::from(*seq)),
            ("ts_us", Value::from(event.ts_us())),
            ("type", Value::from(event.type_name())),
        ];
        let mut blob: Option<(&[u8], String)> = None;
        match event {
            Event::MouseMove { x, y, .. } => {
                fields.push(("x", Value::from(*x)));
                fields.push(("y", Value::from(*y)));
            }
            Event::MouseButton {
                button,
                pressed,
                x,
                y,
                ..
            } => {
                fields.push(("button", Value::from(*button)));
                fields.push(("pressed", Value::from(*pressed)));
                fields.push(("x", Value::from(*x)));
                fields.push(("y", Value::from(*y)));
            }
            Event::Scroll { dx, dy, .. } => {
                fields.push(("dx", Value::from(*dx)));
                fields.push(("dy", Value::from(*dy)));
            }
            Event::Key {
                pressed,
                key_code,
                text,
                category,
                ..
            } => {
                fields.push(("pressed", Value::from(*pressed)));
                if let Some(k) = key_code {
                    fields.push(("key_code", Value::from(*k)));
                }
                if let Some(t) = text {
                    fields.push(("text", Value::from(t.as_str())));
                }
                if let Some(c) = category {
                    fields.push(("category", Value::from(c.name())));
                }
            }
            Event::WindowFocus { app, title, .. } => {
                fields.push(("app", Value::from(app.as_str())));
                fields.push(("title", Value::from(title.as_str())));
            }
            Event::Screenshot {
                width,
                height,
                format,
                data,
                ..
            } => {
                fields.push(("width", Value::from(*width)));
                fields.push(("height", Value::from(*height)));
                fields.push(("format", Value::from(format.as_str())));
                blob = Some((data, blob_ext(format)));
            }
            Event::Custom { kind, data, .. } => {
                fields.push(("kind", Value::from(kind.as_str())));
                blob = Some((data, "bin".into()));
            }
            Event::Marker { marker, .. } => {
                let (name, nums) = marker_fields(marker);
                fields.push(("marker", Value::from(name)));
                fields.extend(nums);
            }
        }
        if let Some((data, ext)) = blob {
            match blobs_dir {
                Some(dir) => {
                    fields.push(("data_file", Value::from(write_blob(dir, *seq, &ext, data)?)))
                }
                None => fields.push(("data_b64", Value::from(data_encoding::BASE64.encode(data)))),
            }
        }
        line.clear();
        line.push(b'{');
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                line.push(b',');
            }
            serde_json::to_writer(&mut line, k).map_err(|e| Error::Io(e.to_string()))?;
            line.push(b':');
            serde_json::to_writer(&mut line, v).map_err(|e| Error::Io(e.to_string()))?;
        }
        line.extend_from_slice(b"}\n");
        out.write_all(&line)?;
    }
    line.zeroize();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_field_order_and_names() {
        let events = vec![
            SeqEvent {
                seq: 1,
                event: Event::MouseMove {
                    ts_us: 5,
                    x: 1,
                    y: -2,
                },
            },
            SeqEvent {
                seq: 2,
                event: Event::Key {
                    ts_us: 6,
                    pressed: true,
                    key_code: None,
                    text: None,
                    category: Some(crate::events::KeyCategory::Letter),
                },
            },
            SeqEvent {
                seq: 3,
                event: Event::Marker {
                    ts_us: 7,
                    marker: Marker::PauseEnd { dropped: 4 },
                },
            },
            SeqEvent {
                seq: 4,
                event: Event::Custom {
                    ts_us: 8,
                    kind: "k".into(),
                    data: vec![1, 2, 3],
                },
            },
        ];
        let mut out = Vec::new();
        write_json_lines(&events, &mut out, None).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"seq":1,"ts_us":5,"type":"mouse_move","x":1,"y":-2}"#
        );
        assert_eq!(
            lines[1],
            r#"{"seq":2,"ts_us":6,"type":"key","pressed":true,"category":"letter"}"#
        );
        assert_eq!(
            lines[2],
            r#"{"seq":3,"ts_us":7,"type":"marker","marker":"pause_end","dropped":4}"#
        );
        assert_eq!(
            lines[3],
            r#"{"seq":4,"ts_us":8,"type":"custom","kind":"k","data_b64":"AQID"}"#
        );
    }
}
