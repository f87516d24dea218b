//! `POST /v1/bundles`: verify, store, receipt. Never decrypts.
//!
//! Order of checks (the first failure answers; nothing is stored before all pass):
//!
//! 1. declared size (413, before the body is read), load (429), then the body while the
//!    client keeps up (408; see `body`) and at most the size limit (413);
//! 2. framing and the device signature (400);
//! 3. the device named in the header is enrolled with the key that signed the bundle,
//!    and not revoked (403); a revoked device's identical retry of a bundle stored
//!    before the revocation still gets its receipt (200);
//! 4. chain position: the same (device, stream, sequence) already stored with the same
//!    digest is a retry (200, same receipt), with another digest a conflict (409); a
//!    stored predecessor must be the bundle named by the header's previous digest
//!    (409), and so must a stored successor name this bundle (409);
//! 5. the blob is written (never overwritten) and made durable, then the index row
//!    (with the blob's location) is inserted and made durable; the chain position is checked again inside the
//!    insert transaction, serialized per stream, so concurrent uploads of a position
//!    or of neighbours that do not link, on one replica or many, store one consistent
//!    chain (the others get 409);
//! 6. the receipt, a deterministic Ed25519 signature over the digest, is the same from
//!    every replica and for every retry.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use capvault_format::IncomingBundle;
use serde::Serialize;

use super::AppState;
use crate::db::{BundleRow, Inserted};
use crate::error::ApiError;

#[derive(Serialize)]
struct Accepted {
    id: String,
    receipt: String,
}

/// The handler: times the upload and counts its outcome.
pub async fn upload(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let start = Instant::now();
    let result = ingest(&s, &headers, body).await;
    s.metrics.observe(start.elapsed());
    match result {
        Ok(a) => Json(a).into_response(),
        Err(e) => {
            s.metrics.rejected(e.code());
            e.into_response()
        }
    }
}

/// Reads the whole body, at most `max_bundle_bytes`, while the client keeps up
/// ([`super::body`]): one that stalls or drips is answered 408 and gives its upload slot
/// back.
///
/// The body is hashed as it arrives and lands in one buffer, pre-sized to the declared
/// length and laid out by the store (a large bundle is written from it as it is):
/// neither a second pass over it nor a copy of all its frames into a new buffer at the
/// end. Returns the bundle and where it starts in the buffer.
async fn read_body(
    s: &AppState,
    declared: Option<u64>,
    body: Body,
) -> Result<(IncomingBundle, usize), ApiError> {
    let limit = s.max_bundle_bytes;
    let capacity = declared
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n <= limit)
        .unwrap_or(0);
    let buffer = s.store.receive_buffer(capacity);
    let start = buffer.len();
    let mut incoming = IncomingBundle::after_prefix(buffer);
    // Hashing one frame (what one socket read gave, at most hyper's read buffer) costs
    // about what decrypting it off a TLS connection already costs on this task.
    super::body::read_paced(body, limit, s.body_timeout, s.min_upload_rate, |data| {
        incoming.push(data)
    })
    .await?;
    Ok((incoming, start))
}

async fn ingest(s: &AppState, headers: &HeaderMap, body: Body) -> Result<Accepted, ApiError> {
    // Oversized before anything else: no slot, no read.
    let declared = super::body::declared_length(headers, s.max_bundle_bytes)?;
    // The slot bounds the memory held by bodies (max_in_flight x max_bundle_bytes): it
    // is taken once the headers are in and given back with the body, once the store
    // has written it (or the upload ended first: refused, cut at the body-read
    // deadline, or given up by its client; a body still queued for the segment writer
    // keeps its slot until it is written).
    let slot = s
        .in_flight
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Busy)?;
    let (incoming, start) = read_body(s, declared, body).await?;

    // What is left once the body is in (framing, the last 64 bytes of the digest, one
    // Ed25519 verification) takes tens of microseconds whatever the size: done in
    // place, a hop to the blocking pool would cost more.
    let (inspected, buffer) = incoming
        .inspect()
        .map_err(|e| ApiError::MalformedBundle(e.to_string()))?;
    // The buffer becomes the stored blob as it is, without a copy.
    let blob = s.store.received(buffer, start).holding(slot);
    let size = blob.len() as u64;
    let h = &inspected.header;
    let hex = |b: &[u8]| data_encoding::HEXLOWER.encode(b);
    let device_id = h.device_id_hex();
    let stream_id = h.stream_id_hex();
    let seq = h.bundle_seq();
    if seq == 0 {
        // A device numbers each stream's bundles from 1; 0 would stand before the
        // stream's first bundle, which names no predecessor.
        return Err(ApiError::MalformedBundle(
            "bundle sequence numbers start at 1".into(),
        ));
    }
    let digest = hex(&inspected.digest);

    // Enrollment and pinning: a forged bundle is never stored.
    let (device, near) =
        s.db.device_and_neighbours(&device_id, &stream_id, seq)
            .await?
            .ok_or_else(|| ApiError::UnknownDevice(device_id.clone()))?;
    if device.device_key != hex(h.device_key()) {
        // Anyone can cause this line: paced, like refused enrollments.
        if let Some(skipped) = s.refusal_log.allow() {
            tracing::warn!(device_id = %device_id, seq, skipped, "bundle signed by a key other than the enrolled one");
        }
        return Err(ApiError::WrongDeviceKey(device_id));
    }

    let accepted = |retry: bool| {
        if retry {
            s.metrics.retry();
        }
        Accepted {
            id: inspected.id.clone(),
            receipt: data_encoding::BASE64.encode(&s.signer.receipt_for(&inspected.digest)),
        }
    };
    if device.revoked_us.is_some() {
        // A bundle stored before the revocation is still answered with its receipt
        // (signed by the enrolled key, same position, same digest): otherwise the
        // device keeps, and keeps retrying, data the collector already holds.
        return match s.db.digest_at(&device_id, &stream_id, seq).await? {
            Some((d, _)) if d == digest => Ok(accepted(true)),
            _ => Err(ApiError::RevokedDevice(device_id)),
        };
    }
    let conflict = || {
        ApiError::Conflict(format!(
            "bundle {seq} of device {device_id} stream {stream_id} is already stored with another digest"
        ))
    };

    // Chain position: this sequence number and its stored neighbours.
    let at = |n: u64| near.iter().find(|(q, _, _)| *q == n);
    match at(seq) {
        Some((_, d, _)) if *d == digest => return Ok(accepted(true)),
        Some(_) => return Err(conflict()),
        None => {}
    }
    if let Some((_, prev, _)) = seq.checked_sub(1).and_then(at) {
        if *prev != hex(h.prev_digest()) {
            return Err(ApiError::Conflict(format!(
                "bundle {seq} of device {device_id} stream {stream_id} does not link to the stored bundle {}",
                seq - 1
            )));
        }
    }
    // A successor that arrived first must name this bundle as its predecessor.
    if let Some((_, _, next_prev)) = seq.checked_add(1).and_then(at) {
        if *next_prev != digest {
            return Err(ApiError::Conflict(format!(
                "the stored bundle {} of device {device_id} stream {stream_id} does not link to this bundle",
                seq + 1
            )));
        }
    }

    // Blob first, then the index row.
    let location = s.store.put(&digest, blob).await?;
    let row = BundleRow {
        device_id: device_id.clone(),
        stream_id: stream_id.clone(),
        seq,
        digest: digest.clone(),
        prev_digest: hex(h.prev_digest()),
        size,
        location,
    };
    match s.db.insert_bundle(&row, crate::config::now_us()).await? {
        Inserted::New => {
            s.metrics.accepted(size);
            tracing::info!(device_id = %device_id, stream_id = %stream_id, seq, id = %inspected.id, bytes = size, "bundle stored");
            Ok(accepted(false))
        }
        Inserted::Existing(d) if d == digest => Ok(accepted(true)),
        Inserted::Existing(_) => Err(conflict()),
        // Stored by another upload (or replica) since the check above.
        Inserted::PrevMismatch => Err(ApiError::Conflict(format!(
            "bundle {seq} of device {device_id} stream {stream_id} does not link to the stored bundle {}",
            seq - 1
        ))),
        Inserted::Revoked => Err(ApiError::RevokedDevice(device_id)),
        Inserted::NextMismatch => Err(ApiError::Conflict(format!(
            "the stored bundle {} of device {device_id} stream {stream_id} does not link to this bundle",
            seq + 1
        ))),
    }
}
