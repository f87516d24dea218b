//! `capvault-collector`: the ingest service for capvault bundles and the offline export
//! (SPEC 12.6-12.8).
//!
//! The service verifies each uploaded bundle (framing, device signature, enrollment,
//! key pin, chain position), stores it (blob first, then an index row), and answers
//! with a receipt: the collector's Ed25519 signature over the bundle digest. It never
//! holds a key that decrypts bundles; only [`export`](crate::run) with `--identity`
//! opens them.
//!
//! Embedded default: SQLite in the collector directory and blobs under `DIR/bundles`.
//! Fleet scale: `--db postgres://…` and `--store s3://bucket/prefix`; see README.md.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod api;
mod cli;
mod config;
mod copy;
mod db;
mod error;
mod export;
mod metrics;
mod plaintext_out;
mod private;
mod server;
mod store;
mod tokens;

pub use cli::{run, Cli};
pub use error::ApiError;
