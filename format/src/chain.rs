//! Chain checking: what a collector concludes from a set of bundle headers, and which
//! bundles it may release. Specified in docs/FORMAT.md, "Chain rules".
//!
//! One chain per (device, user stream). Bundle `n + 1` of a stream names bundle `n`'s
//! digest, and continues its record range: `first_record(n+1) = last_record(n) + 1 +
//! records_lost(n+1)`, where `records_lost` is the device's signed statement of
//! records it removed unreleased (budget, retention) in between.
//!
//! Which key may sign for a device id comes from enrollment records
//! ([`DevicePins`]). Without pins nothing proves which key is the device's: a device id
//! that appears under two keys has all its bundles rejected, whatever arrived first.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::bundle::{bundle_id, BundleHeader};
use crate::enrollment::{DevicePins, PinVerdict};
use crate::open::{InspectedBundle, OpenedBundle};

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
    /// The bundle's record range does not continue the previous bundle's, and the
    /// device did not declare the difference as lost records: records were removed
    /// without the vault knowing, or repeated.
    RecordGap {
        /// The bundle whose range does not continue.
        bundle_seq: u64,
        /// The record it should start at.
        expected_first_record: u64,
        /// The record it starts at.
        first_record: u64,
    },
    /// The device declares records it removed unreleased (budget eviction or retention)
    /// before this bundle (informational: the gap is explained).
    RecordsLost {
        /// The bundle that declares them.
        bundle_seq: u64,
        /// How many records.
        records: u64,
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
    /// Different bundles claim the same device, stream and sequence number. None of
    /// them is released.
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
    /// The bundle's previous-digest field does not name the previous bundle (a fork).
    /// It is not released.
    PrevDigestMismatch {
        /// The bundle whose link is wrong.
        bundle_seq: u64,
        /// Id of the bundle it should link to.
        expected_prev_id: String,
    },
    /// A bundle for an enrolled device id is signed by a key other than the enrolled
    /// one: it does not come from that device. It is not released.
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
    /// Pins are in force and this device id has no enrollment record. Not released.
    UnenrolledDevice {
        /// Its sequence number.
        bundle_seq: u64,
        /// Its id.
        id: String,
        /// The key that signed it, hex.
        found_key: String,
    },
    /// Without pins, bundles of this device id are signed by several keys: at most one
    /// is the device's and nothing here says which. None of them is released.
    AmbiguousDeviceKey {
        /// Every key seen for the device id, hex.
        keys: Vec<String>,
        /// How many bundles are affected.
        bundles: usize,
    },
    /// The earliest bundle present links to an earlier one that is not in this set
    /// (informational: the set does not start at the stream's first bundle).
    StartsMidChain {
        /// The earliest sequence number present.
        bundle_seq: u64,
    },
    /// The bundle passed the chain check but could not be opened (not sealed to this
    /// collector's identity, or its payload failed its checks; see
    /// [`ChainChecker::not_opened`]). It is not released. The chain itself is not at
    /// fault: the opener reports why the bundle did not open.
    NotOpened {
        /// Its sequence number.
        bundle_seq: u64,
        /// Its id.
        id: String,
    },
}

impl ChainIssue {
    /// True for findings that mean data is missing or not authentic; false for
    /// harmless retries, arrival order, explained losses and a set that starts
    /// mid-chain.
    pub fn is_integrity_failure(&self) -> bool {
        !matches!(
            self,
            ChainIssue::DuplicateRetry { .. }
                | ChainIssue::Reordered { .. }
                | ChainIssue::StartsMidChain { .. }
                | ChainIssue::RecordsLost { .. }
                | ChainIssue::NotOpened { .. }
        )
    }
}

impl std::fmt::Display for ChainIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainIssue::MissingBundles { from, to } if from == to => {
                write!(f, "bundle {from} is missing")
            }
            ChainIssue::MissingBundles { from, to } => {
                write!(f, "bundles {from} to {to} are missing")
            }
            ChainIssue::RecordGap {
                bundle_seq,
                expected_first_record,
                first_record,
            } => write!(
                f,
                "bundle {bundle_seq} starts at record {first_record}, expected \
                 {expected_first_record}: records are missing without a loss record"
            ),
            ChainIssue::RecordsLost {
                bundle_seq,
                records,
            } => write!(
                f,
                "bundle {bundle_seq}: the device removed {records} record(s) unreleased before \
                 it (budget or retention; see the loss markers)"
            ),
            ChainIssue::DuplicateRetry {
                bundle_seq,
                id,
                copies,
            } => {
                write!(
                    f,
                    "bundle {bundle_seq} ({id}) arrived {copies} times (retry, harmless)"
                )
            }
            ChainIssue::Conflict { bundle_seq, ids } => write!(
                f,
                "conflict: {} different bundles claim sequence {bundle_seq}: {}; none is released",
                ids.len(),
                ids.join(", ")
            ),
            ChainIssue::Reordered {
                bundle_seq,
                arrived_after_seq,
            } => write!(
                f,
                "bundle {bundle_seq} arrived after bundle {arrived_after_seq}"
            ),
            ChainIssue::PrevDigestMismatch {
                bundle_seq,
                expected_prev_id,
            } => write!(
                f,
                "bundle {bundle_seq} does not link to the previous bundle {expected_prev_id}; \
                 it is not released"
            ),
            ChainIssue::DeviceKeyChanged {
                bundle_seq,
                id,
                expected_key,
                found_key,
            } => write!(
                f,
                "bundle {bundle_seq} ({id}) is signed by key {found_key}, not by the enrolled \
                 key {expected_key}: it does not come from this device and is not released"
            ),
            ChainIssue::UnenrolledDevice {
                bundle_seq,
                id,
                found_key,
            } => write!(
                f,
                "bundle {bundle_seq} ({id}) comes from a device with no enrollment record \
                 (key {found_key}); it is not released"
            ),
            ChainIssue::AmbiguousDeviceKey { keys, bundles } => write!(
                f,
                "{} keys sign bundles for this device id ({}); without its enrollment record \
                 none of the {bundles} bundle(s) is released",
                keys.len(),
                keys.join(", ")
            ),
            ChainIssue::StartsMidChain { bundle_seq } => write!(
                f,
                "bundle {bundle_seq} links to earlier bundles that are not in this set"
            ),
            ChainIssue::NotOpened { bundle_seq, id } => write!(
                f,
                "bundle {bundle_seq} ({id}) could not be opened; it is not released"
            ),
        }
    }
}

/// The chain of one user stream of one device.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceChain {
    /// The device id, hex.
    pub device_id: String,
    /// The user stream id, hex (all zero for version 1 bundles).
    pub stream_id: String,
    /// The key accepted for the device, hex (empty when none is).
    pub device_key: String,
    /// Distinct bundles accepted for release (duplicates counted once).
    pub bundles: usize,
    /// Distinct bundles rejected (see the issues).
    pub rejected: usize,
    /// Lowest accepted bundle sequence number (0 when none).
    pub first_seq: u64,
    /// Highest accepted bundle sequence number (0 when none).
    pub last_seq: u64,
    /// Findings, in sequence order.
    pub issues: Vec<ChainIssue>,
}

/// What [`ChainChecker::report`] found.
#[derive(Clone, Debug, Serialize)]
pub struct ChainReport {
    /// True when device keys were checked against enrollment records.
    pub pinned: bool,
    /// One entry per (device, stream), ordered by device id then stream id.
    pub devices: Vec<DeviceChain>,
    #[serde(skip)]
    rejected: BTreeSet<[u8; 32]>,
}

impl ChainReport {
    /// True when no chain has an integrity failure.
    pub fn is_clean(&self) -> bool {
        self.devices
            .iter()
            .all(|d| d.issues.iter().all(|i| !i.is_integrity_failure()))
    }

    /// True when the bundle with this digest may be released: its key is accepted and
    /// its chain position is not in conflict. (Gaps elsewhere in its chain are reported
    /// but do not hold back an authentic bundle.)
    pub fn accepts(&self, digest: &[u8; 32]) -> bool {
        !self.rejected.contains(digest)
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
    arrival: usize,
    seq: u64,
    key: [u8; 32],
    first_record: u64,
    last_record: u64,
    records_lost: u64,
    prev_digest: [u8; 32],
    digest: [u8; 32],
}

type StreamKey = ([u8; 16], [u8; 16]);

/// Collects bundle headers in arrival order (any order is fine) and reports, per
/// (device, stream): rejected signers, missing bundles, record ranges that do not
/// continue, duplicates (retries) and conflicts, reordering and broken links; and
/// which bundles may be released ([`ChainReport::accepts`]).
#[derive(Default)]
pub struct ChainChecker {
    seen: BTreeMap<StreamKey, Vec<Seen>>,
    pins: Option<DevicePins>,
    arrivals: usize,
    /// Digests of bundles that could not be opened after the chain check.
    not_opened: BTreeSet<[u8; 32]>,
}

fn hex(b: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(b)
}

impl ChainChecker {
    /// A checker without pins: device keys are not checked against enrollment records
    /// (the report says so), and a device id seen under several keys is rejected.
    pub fn new() -> Self {
        Self::default()
    }

    /// A checker that accepts, for each device id, only the key pinned by its
    /// enrollment record, and rejects bundles of devices without one.
    pub fn with_pins(pins: DevicePins) -> Self {
        ChainChecker {
            pins: Some(pins),
            ..Self::default()
        }
    }

    /// Adds a bundle (its header and digest) as it arrived.
    pub fn add(&mut self, header: &BundleHeader, digest: &[u8; 32]) {
        self.arrivals += 1;
        self.seen
            .entry((*header.device_id(), *header.stream_id()))
            .or_default()
            .push(Seen {
                arrival: self.arrivals,
                seq: header.bundle_seq(),
                key: *header.device_key(),
                first_record: header.first_record(),
                last_record: header.last_record(),
                records_lost: header.records_lost(),
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

    /// Records that the bundle with this digest, accepted by an earlier report, could
    /// not be opened: later reports count it as rejected (not in `bundles`, nor in
    /// `first_seq..=last_seq`), with a [`ChainIssue::NotOpened`] finding. Its link in the
    /// chain still counts: it is authentic, only not readable here.
    pub fn not_opened(&mut self, digest: &[u8; 32]) {
        self.not_opened.insert(*digest);
    }

    /// The findings so far.
    pub fn report(&self) -> ChainReport {
        // Without pins: the keys each device id was seen with, over all its streams.
        let mut keys_of: BTreeMap<[u8; 16], BTreeSet<[u8; 32]>> = BTreeMap::new();
        for ((device, _), arrivals) in &self.seen {
            keys_of
                .entry(*device)
                .or_default()
                .extend(arrivals.iter().map(|s| s.key));
        }
        let mut rejected = BTreeSet::new();
        let devices = self
            .seen
            .iter()
            .map(|(key, arrivals)| self.stream_report(key, arrivals, &keys_of, &mut rejected))
            .collect();
        ChainReport {
            pinned: self.pins.is_some(),
            devices,
            rejected,
        }
    }

    fn stream_report(
        &self,
        (device_id, stream_id): &StreamKey,
        arrivals: &[Seen],
        keys_of: &BTreeMap<[u8; 16], BTreeSet<[u8; 32]>>,
        rejected: &mut BTreeSet<[u8; 32]>,
    ) -> DeviceChain {
        let mut issues = Vec::new();
        let reject = |s: &Seen, rejected: &mut BTreeSet<[u8; 32]>| {
            rejected.insert(s.digest);
        };
        // 1. Who signed: keep only bundles whose key is accepted for the device id.
        let accepted_key: Option<[u8; 32]> = match &self.pins {
            Some(pins) => pins.key_of(device_id).copied(),
            None => {
                let keys = &keys_of[device_id];
                (keys.len() == 1).then(|| *keys.iter().next().expect("one key"))
            }
        };
        if self.pins.is_none() && accepted_key.is_none() {
            issues.push(ChainIssue::AmbiguousDeviceKey {
                keys: keys_of[device_id].iter().map(|k| hex(k)).collect(),
                bundles: arrivals.len(),
            });
        }
        let mut valid: Vec<&Seen> = Vec::new();
        for s in arrivals {
            let verdict = match (&self.pins, accepted_key) {
                (_, Some(k)) if k == s.key => PinVerdict::Pinned,
                (Some(_), Some(_)) => PinVerdict::WrongKey,
                (Some(_), None) => PinVerdict::Unenrolled,
                (None, _) => PinVerdict::WrongKey, // ambiguous, reported once above
            };
            match verdict {
                PinVerdict::Pinned => valid.push(s),
                PinVerdict::WrongKey => {
                    reject(s, rejected);
                    if let (Some(_), Some(k)) = (&self.pins, accepted_key) {
                        issues.push(ChainIssue::DeviceKeyChanged {
                            bundle_seq: s.seq,
                            id: bundle_id(&s.digest),
                            expected_key: hex(&k),
                            found_key: hex(&s.key),
                        });
                    }
                }
                PinVerdict::Unenrolled => {
                    reject(s, rejected);
                    issues.push(ChainIssue::UnenrolledDevice {
                        bundle_seq: s.seq,
                        id: bundle_id(&s.digest),
                        found_key: hex(&s.key),
                    });
                }
            }
        }
        // 2. Arrival order, retries and conflicts per sequence number.
        let mut max_seq: Option<u64> = None;
        let mut by_seq: BTreeMap<u64, Vec<&Seen>> = BTreeMap::new();
        let mut in_arrival_order = valid.clone();
        in_arrival_order.sort_by_key(|s| s.arrival);
        for s in in_arrival_order {
            if let Some(m) = max_seq.filter(|&m| s.seq < m) {
                issues.push(ChainIssue::Reordered {
                    bundle_seq: s.seq,
                    arrived_after_seq: m,
                });
            }
            max_seq = Some(max_seq.map_or(s.seq, |m| m.max(s.seq)));
            by_seq.entry(s.seq).or_default().push(s);
        }
        // The chain: one bundle per sequence number; a conflicted number holds none.
        let mut chain: Vec<(u64, Option<&Seen>)> = Vec::new();
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
                for d in &distinct {
                    reject(d, rejected);
                }
                issues.push(ChainIssue::Conflict {
                    bundle_seq: *seq,
                    ids: distinct.iter().map(|d| bundle_id(&d.digest)).collect(),
                });
                chain.push((*seq, None));
            } else {
                chain.push((*seq, Some(distinct[0])));
            }
        }
        // 3. Links between neighbours.
        if let Some((seq, Some(first))) = chain.first() {
            if first.prev_digest != [0u8; 32] {
                issues.push(ChainIssue::StartsMidChain { bundle_seq: *seq });
            }
        }
        for w in chain.windows(2) {
            let ((a_seq, a), (b_seq, b)) = (w[0], w[1]);
            if b_seq != a_seq + 1 {
                issues.push(ChainIssue::MissingBundles {
                    from: a_seq + 1,
                    to: b_seq - 1,
                });
                continue;
            }
            let (Some(a), Some(b)) = (a, b) else {
                continue; // a conflicted neighbour: already reported
            };
            if b.prev_digest != a.digest {
                reject(b, rejected);
                issues.push(ChainIssue::PrevDigestMismatch {
                    bundle_seq: b_seq,
                    expected_prev_id: bundle_id(&a.digest),
                });
                continue;
            }
            let expected = a.last_record.wrapping_add(1).wrapping_add(b.records_lost);
            if b.first_record != expected {
                issues.push(ChainIssue::RecordGap {
                    bundle_seq: b_seq,
                    expected_first_record: expected,
                    first_record: b.first_record,
                });
            } else if b.records_lost > 0 {
                issues.push(ChainIssue::RecordsLost {
                    bundle_seq: b_seq,
                    records: b.records_lost,
                });
            }
        }
        // 4. Accepted so far, but not opened.
        for (seq, s) in &chain {
            if let Some(s) = s.filter(|s| self.not_opened.contains(&s.digest)) {
                if rejected.insert(s.digest) {
                    issues.push(ChainIssue::NotOpened {
                        bundle_seq: *seq,
                        id: bundle_id(&s.digest),
                    });
                }
            }
        }
        let accepted: Vec<u64> = chain
            .iter()
            .filter_map(|(seq, s)| s.filter(|s| !rejected.contains(&s.digest)).map(|_| *seq))
            .collect();
        let mut rejected_here: Vec<[u8; 32]> = arrivals
            .iter()
            .map(|s| s.digest)
            .filter(|d| rejected.contains(d))
            .collect();
        rejected_here.sort();
        rejected_here.dedup();
        DeviceChain {
            device_id: hex(device_id),
            stream_id: hex(stream_id),
            device_key: accepted_key.map(|k| hex(&k)).unwrap_or_default(),
            bundles: accepted.len(),
            rejected: rejected_here.len(),
            first_seq: accepted.first().copied().unwrap_or(0),
            last_seq: accepted.last().copied().unwrap_or(0),
            issues,
        }
    }
}
