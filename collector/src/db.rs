//! The state database: devices, enrollment tokens and the bundle index, in SQLite (the
//! embedded default) or PostgreSQL (shared by replicas), with one schema and one code
//! path through sqlx's `Any` driver.
//!
//! Portability rules: ids and digests are lower-case hex `TEXT`, numbers `BIGINT`,
//! parameters `$1, $2, …` (both engines accept them), and "insert unless present" is
//! `ON CONFLICT DO NOTHING`.
//!
//! Schema (version 2):
//!
//! ```sql
//! tokens  (hash TEXT PRIMARY KEY, uses_left BIGINT, expires_us BIGINT NULL, created_us BIGINT)
//! devices (device_id TEXT PRIMARY KEY, device_key TEXT, record TEXT, enrolled_us BIGINT,
//!          revoked_us BIGINT NULL)
//! bundles (device_id TEXT, stream_id TEXT, seq BIGINT, digest TEXT, prev_digest TEXT,
//!          size BIGINT, received_us BIGINT, location TEXT NULL,
//!          PRIMARY KEY (device_id, stream_id, seq))
//! ```
//!
//! `location` (version 2) is where the blob store put the bytes when the digest alone
//! does not name them (the directory store's segments); version 1 had no such column.
//!
//! The primary key of `bundles` is the unique key on (device, stream, sequence) that
//! makes concurrent retries to two replicas store one row. Index rows are inserted
//! together with their chain check (the stored neighbours must link) in one
//! transaction that holds the stream's write lock, so replicas cannot store
//! neighbours that do not link.

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use tokio::sync::{mpsc, oneshot};

use crate::error::ApiError;

/// The schema version this code writes.
const SCHEMA_VERSION: i64 = 4;

const SCHEMA_V1: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tokens (
        hash TEXT PRIMARY KEY,
        uses_left BIGINT NOT NULL,
        expires_us BIGINT,
        created_us BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS devices (
        device_id TEXT PRIMARY KEY,
        device_key TEXT NOT NULL,
        record TEXT NOT NULL,
        enrolled_us BIGINT NOT NULL,
        revoked_us BIGINT)",
    "CREATE TABLE IF NOT EXISTS bundles (
        device_id TEXT NOT NULL,
        stream_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        digest TEXT NOT NULL,
        prev_digest TEXT NOT NULL,
        size BIGINT NOT NULL,
        received_us BIGINT NOT NULL,
        PRIMARY KEY (device_id, stream_id, seq))",
];

/// From version 1 to 2: the blob location.
const SCHEMA_V2: &[&str] = &["ALTER TABLE bundles ADD COLUMN location TEXT"];

/// From version 2 to 3: what every replica on this database must share (the receipt
/// key, where the blobs are), bound by the first to start.
const SCHEMA_V3: &[&str] =
    &["CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)"];

/// From version 3 to 4: the token each device enrolled with (its hash), so that the
/// devices a leaked token let in can be found.
const SCHEMA_V4: &[&str] = &["ALTER TABLE devices ADD COLUMN token_hash TEXT"];

/// Which engine a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// `sqlite://PATH`
    Sqlite,
    /// `postgres://…` or `postgresql://…`
    Postgres,
}

/// The SQLite file of a collector directory.
pub const DEFAULT_FILE: &str = "collector.db";

/// The default database URL for a collector directory.
pub fn default_url(dir: &Path) -> String {
    // The URL's path is percent-decoded by the driver: `%`, `?` and `#` in a directory
    // name are escaped so that it names that directory.
    let path = dir.join(DEFAULT_FILE).to_string_lossy().into_owned();
    let escaped = path
        .replace('%', "%25")
        .replace('?', "%3F")
        .replace('#', "%23");
    format!("sqlite://{escaped}?mode=rwc")
}

/// The file a `sqlite:` URL names, percent-decoded as the driver reads it; `None` for
/// one in memory.
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    // As the driver reads it: the path ends at `?`, nowhere else.
    let raw = rest.split('?').next().unwrap_or(rest);
    if raw.is_empty() || raw == ":memory:" {
        return None;
    }
    let mut bytes = Vec::with_capacity(raw.len());
    let mut rest = raw.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b, tail) {
            (b'%', [h, l, more @ ..]) if hex(*h).is_some() && hex(*l).is_some() => {
                bytes.push((hex(*h)? * 16 + hex(*l)?) as u8);
                rest = more;
            }
            _ => {
                bytes.push(b);
                rest = tail;
            }
        }
    }
    Some(std::path::PathBuf::from(
        String::from_utf8_lossy(&bytes).into_owned(),
    ))
}

/// A token row (the token itself is never stored).
#[derive(Clone, Debug, serde::Serialize)]
pub struct TokenRow {
    /// SHA-256 of the token, hex.
    pub hash: String,
    /// Enrollments it still allows.
    pub uses_left: i64,
    /// When it stops being accepted (µs since the epoch), if ever.
    pub expires_us: Option<i64>,
    /// When it was made (µs since the epoch).
    pub created_us: i64,
}

/// A device row.
#[derive(Clone, Debug)]
pub struct Device {
    /// Hex device id.
    pub device_id: String,
    /// Hex Ed25519 key.
    pub device_key: String,
    /// The enrollment record as received (JSON).
    pub record: String,
    /// Enrollment time.
    pub enrolled_us: i64,
    /// Revocation time, if revoked.
    pub revoked_us: Option<i64>,
}

/// A bundle index row.
#[derive(Clone, Debug)]
pub struct BundleRow {
    /// Hex device id.
    pub device_id: String,
    /// Hex stream id.
    pub stream_id: String,
    /// Bundle sequence number.
    pub seq: u64,
    /// Hex SHA-256 of the bundle bytes (the blob's name).
    pub digest: String,
    /// Hex digest of the previous bundle named in the header.
    pub prev_digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Where the blob store put it, when the digest alone does not say.
    pub location: Option<String>,
}

/// Result of inserting an index row.
#[derive(Debug, PartialEq, Eq)]
pub enum Inserted {
    /// This call stored the row.
    New,
    /// A row for the position already existed, with this digest.
    Existing(String),
    /// The stored predecessor (`seq - 1`) is not the bundle the row names as previous.
    PrevMismatch,
    /// The stored successor (`seq + 1`) does not name this row's bundle as previous.
    NextMismatch,
    /// The device was revoked (after the upload's own check, before its row).
    Revoked,
}

/// Result of an enrollment attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Enrolled {
    /// A new device row (a token use was consumed).
    New,
    /// Already enrolled with the same key (no token use consumed).
    Same,
    /// Already enrolled with another key.
    OtherKey,
    /// The token is unknown, expired or used up.
    BadToken,
}

/// The state database.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    engine: Engine,
    /// SQLite: index rows go through one writer that commits them in batches.
    batcher: Option<mpsc::Sender<PendingRow>>,
}

/// An index row waiting for the batch writer.
#[derive(Debug)]
struct PendingRow {
    row: BundleRow,
    now_us: i64,
    reply: oneshot::Sender<Result<Inserted, String>>,
}

/// Most rows committed in one SQLite transaction.
const MAX_BATCH: usize = 256;

fn seq_to_db(seq: u64) -> Result<i64, ApiError> {
    i64::try_from(seq).map_err(|_| ApiError::MalformedBundle("bundle sequence out of range".into()))
}

impl Db {
    /// Connects and brings the schema up to date.
    pub async fn open(url: &str) -> Result<Db, ApiError> {
        sqlx::any::install_default_drivers();
        let engine = if url.starts_with("sqlite:") {
            Engine::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Engine::Postgres
        } else {
            return Err(ApiError::Operational(
                "--db must be a sqlite:// or postgres:// URL".into(),
            ));
        };
        if engine == Engine::Sqlite {
            create_private_sqlite_file(url)?;
        }
        let max = match engine {
            // One writer at a time anyway; a few readers.
            Engine::Sqlite => 8,
            Engine::Postgres => 16,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(5))
            // A pooled SQLite connection is a file handle, not a socket that can drop:
            // a liveness ping before each query would only add a round trip to its
            // worker thread.
            .test_before_acquire(engine == Engine::Postgres)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if engine == Engine::Sqlite {
                        // WAL, and durable commits: a receipt promises the row survives.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = FULL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 5000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(|e| ApiError::Operational(format!("cannot open the database: {e}")))?;
        let mut db = Db {
            pool,
            engine,
            batcher: None,
        };
        db.migrate().await?;
        if engine == Engine::Sqlite {
            // SQLite has one writer and every commit is an fsync: rows that arrive while
            // a commit is under way are committed together (group commit). Each caller
            // still gets its answer only after its row is durable.
            let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
            tokio::spawn(batch_writer(db.pool.clone(), rx));
            db.batcher = Some(tx);
        }
        Ok(db)
    }

    /// The engine in use.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    async fn migrate(&self) -> Result<(), ApiError> {
        let mut conn = self.pool.acquire().await?;
        if self.engine == Engine::Postgres {
            // Replicas starting together migrate one at a time.
            sqlx::query("SELECT pg_advisory_lock(7418526301)")
                .execute(&mut *conn)
                .await?;
        }
        let result = async {
            sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
                .execute(&mut *conn)
                .await?;
            let current: Option<i64> = sqlx::query("SELECT MAX(version) FROM schema_version")
                .fetch_one(&mut *conn)
                .await?
                .try_get(0)?;
            match current {
                Some(v) if v > SCHEMA_VERSION => Err(ApiError::Operational(format!(
                    "the database has schema version {v}, newer than this collector ({SCHEMA_VERSION}); upgrade the collector"
                ))),
                Some(v) if v == SCHEMA_VERSION => Ok(()),
                from => {
                    let steps: &[(i64, &[&'static str])] =
                        &[(1, SCHEMA_V1), (2, SCHEMA_V2), (3, SCHEMA_V3), (4, SCHEMA_V4)];
                    // Each step is one transaction with its version row (a crash leaves
                    // it made or not), taken with the write lock (IMMEDIATE on SQLite;
                    // PostgreSQL: the advisory lock above), and skipped when another
                    // process made it while this one waited.
                    let begin = match self.engine {
                        Engine::Sqlite => "BEGIN IMMEDIATE",
                        Engine::Postgres => "BEGIN",
                    };
                    for (version, stmts) in steps {
                        if from.is_some_and(|v| v >= *version) {
                            continue;
                        }
                        sqlx::query(begin).execute(&mut *conn).await?;
                        let step = async {
                            let now: Option<i64> =
                                sqlx::query("SELECT MAX(version) FROM schema_version")
                                    .fetch_one(&mut *conn)
                                    .await?
                                    .try_get(0)?;
                            if now.is_some_and(|v| v >= *version) {
                                return Ok(());
                            }
                            for stmt in *stmts {
                                sqlx::query(*stmt).execute(&mut *conn).await?;
                            }
                            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                                .bind(*version)
                                .execute(&mut *conn)
                                .await?;
                            Ok::<(), sqlx::Error>(())
                        }
                        .await;
                        let end = if step.is_ok() { "COMMIT" } else { "ROLLBACK" };
                        let ended = sqlx::query(end).execute(&mut *conn).await;
                        step?;
                        ended?;
                    }
                    Ok(())
                }
            }
        }
        .await;
        if self.engine == Engine::Postgres {
            sqlx::query("SELECT pg_advisory_unlock(7418526301)")
                .execute(&mut *conn)
                .await?;
        }
        result
    }

    /// The value bound to `name`: `value` when nothing was bound yet (it is bound now),
    /// else what was bound first (by this or another replica); and whether this call
    /// bound it.
    pub async fn bind_setting(&self, name: &str, value: &str) -> Result<(String, bool), ApiError> {
        let inserted = sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        // Inserted now or before: there is a row (settings are never removed while a
        // command binds one; `unbind` runs only in the `init` that made them).
        let bound = self.setting(name).await?.ok_or_else(|| {
            ApiError::Unavailable(format!("the setting {name:?} vanished as it was bound"))
        })?;
        Ok((bound, inserted))
    }

    /// Removes the bindings named (made by an `init` that then failed).
    pub async fn unbind(&self, names: &[&str]) -> Result<(), ApiError> {
        for name in names {
            sqlx::query("DELETE FROM settings WHERE name = $1")
                .bind(*name)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// The value bound to `name`, if any.
    pub async fn setting(&self, name: &str) -> Result<Option<String>, ApiError> {
        let row = sqlx::query("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// True when the database answers.
    pub async fn ping(&self) -> Result<(), ApiError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // ----- tokens -----

    /// Stores a token hash with its uses and optional expiry.
    pub async fn add_token(
        &self,
        hash: &str,
        uses: u32,
        expires_us: Option<i64>,
        now_us: i64,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "INSERT INTO tokens (hash, uses_left, expires_us, created_us) VALUES ($1, $2, $3, $4)",
        )
        .bind(hash)
        .bind(i64::from(uses))
        .bind(expires_us)
        .bind(now_us)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every token, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRow>, ApiError> {
        let rows = sqlx::query(
            "SELECT hash, uses_left, expires_us, created_us FROM tokens ORDER BY created_us, hash",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenRow {
                    hash: r.try_get(0)?,
                    uses_left: r.try_get(1)?,
                    expires_us: r.try_get(2)?,
                    created_us: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// The devices that enrolled with the token whose hash is `hash`, by id (devices
    /// enrolled before schema version 4 are not known by their token).
    pub async fn enrolled_with(&self, hash: &str) -> Result<Vec<String>, ApiError> {
        let rows =
            sqlx::query("SELECT device_id FROM devices WHERE token_hash = $1 ORDER BY device_id")
                .bind(hash)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Uses up the token whose hash is `hash`: it enrolls no new device from then on.
    /// False when there is none.
    pub async fn revoke_token(&self, hash: &str) -> Result<bool, ApiError> {
        let n = sqlx::query("UPDATE tokens SET uses_left = 0 WHERE hash = $1")
            .bind(hash)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    // ----- devices -----

    /// Looks a device up.
    pub async fn device(&self, device_id: &str) -> Result<Option<Device>, ApiError> {
        let row = sqlx::query(
            "SELECT device_id, device_key, record, enrolled_us, revoked_us FROM devices WHERE device_id = $1",
        )
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| device_from_row(&r)).transpose()
    }

    /// All devices, by id.
    pub async fn devices(&self) -> Result<Vec<Device>, ApiError> {
        let rows = sqlx::query(
            "SELECT device_id, device_key, record, enrolled_us, revoked_us FROM devices ORDER BY device_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(device_from_row).collect()
    }

    /// Whether a token hash was ever issued here: `None` unknown, `Some(true)` usable now
    /// (uses left, not expired), `Some(false)` used up or expired.
    async fn token_state(&self, token_hash: &str, now_us: i64) -> Result<Option<bool>, ApiError> {
        let row = sqlx::query("SELECT uses_left, expires_us FROM tokens WHERE hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let uses: i64 = r.try_get(0)?;
            let expires: Option<i64> = r.try_get(1)?;
            Ok(uses > 0 && expires.is_none_or(|e| e > now_us))
        })
        .transpose()
    }

    /// Enrolls a device with a token, atomically: a token use is consumed only when a
    /// new device row is stored.
    ///
    /// The token is checked before anything about the device is revealed: without a
    /// usable token the answer is [`Enrolled::BadToken`] whether or not the id is
    /// enrolled. The one exception is an exact re-enrollment (same id, same key), which
    /// needs a token this collector issued but not a use of it (a device whose
    /// one-use token is spent may retry); even then an unknown token is `BadToken`.
    pub async fn enroll(
        &self,
        token_hash: &str,
        device_id: &str,
        device_key: &str,
        record: &str,
        now_us: i64,
    ) -> Result<Enrolled, ApiError> {
        let Some(usable) = self.token_state(token_hash, now_us).await? else {
            // An unknown token learns nothing, not even from timing: no device lookup,
            // no transaction (whose write lock uploads would wait for).
            return Ok(Enrolled::BadToken);
        };
        if let Some(d) = self.device(device_id).await? {
            return Ok(match usable {
                _ if d.device_key == device_key => Enrolled::Same,
                true => Enrolled::OtherKey,
                false => Enrolled::BadToken,
            });
        }
        if !usable {
            return Ok(Enrolled::BadToken);
        }
        let mut tx = self.pool.begin().await?;
        let used = sqlx::query(
            "UPDATE tokens SET uses_left = uses_left - 1
             WHERE hash = $1 AND uses_left > 0 AND (expires_us IS NULL OR expires_us > $2)",
        )
        .bind(token_hash)
        .bind(now_us)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if used != 1 {
            tx.rollback().await?;
            return Ok(Enrolled::BadToken);
        }
        let inserted = sqlx::query(
            "INSERT INTO devices (device_id, device_key, record, enrolled_us, token_hash)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(device_id)
        .bind(device_key)
        .bind(record)
        .bind(now_us)
        .bind(token_hash)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            tx.commit().await?;
            return Ok(Enrolled::New);
        }
        // Enrolled concurrently by another request: give the token use back.
        tx.rollback().await?;
        Ok(match self.device(device_id).await? {
            Some(d) if d.device_key == device_key => Enrolled::Same,
            _ => Enrolled::OtherKey,
        })
    }

    /// Marks a device revoked; false if it is not enrolled.
    pub async fn revoke(&self, device_id: &str, now_us: i64) -> Result<bool, ApiError> {
        let n = sqlx::query(
            "UPDATE devices SET revoked_us = COALESCE(revoked_us, $2) WHERE device_id = $1",
        )
        .bind(device_id)
        .bind(now_us)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    // ----- bundles -----

    /// A device and the rows stored at `seq - 1`, `seq` and `seq + 1` of one of its
    /// streams, (sequence, digest, previous digest), in one query (one round trip per
    /// upload instead of two); `None` when the device is not enrolled.
    pub async fn device_and_neighbours(
        &self,
        device_id: &str,
        stream_id: &str,
        seq: u64,
    ) -> Result<Option<(Device, Vec<(u64, String, String)>)>, ApiError> {
        let s = seq_to_db(seq)?;
        let rows = sqlx::query(
            "SELECT d.device_id, d.device_key, d.record, d.enrolled_us, d.revoked_us,
                    b.seq, b.digest, b.prev_digest
             FROM devices d LEFT JOIN bundles b
               ON b.device_id = d.device_id AND b.stream_id = $2 AND b.seq >= $3 AND b.seq <= $4
             WHERE d.device_id = $1",
        )
        .bind(device_id)
        .bind(stream_id)
        .bind(s.saturating_sub(1))
        .bind(s.saturating_add(1))
        .fetch_all(&self.pool)
        .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let device = device_from_row(first)?;
        let mut near = Vec::with_capacity(rows.len());
        for r in &rows {
            if let Some(q) = r.try_get::<Option<i64>, _>(5)? {
                near.push((q as u64, r.try_get(6)?, r.try_get(7)?));
            }
        }
        Ok(Some((device, near)))
    }

    /// The digest and previous digest stored at a chain position, if any.
    pub async fn digest_at(
        &self,
        device_id: &str,
        stream_id: &str,
        seq: u64,
    ) -> Result<Option<(String, String)>, ApiError> {
        let row = sqlx::query(
            "SELECT digest, prev_digest FROM bundles WHERE device_id = $1 AND stream_id = $2 AND seq = $3",
        )
        .bind(device_id)
        .bind(stream_id)
        .bind(seq_to_db(seq)?)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?)))
            .transpose()?)
    }

    /// Inserts an index row unless its position is taken or it does not link to its
    /// stored neighbours; returns once it is durable. The neighbour check and the
    /// insert are one transaction, serialized per (device, stream) across replicas
    /// (SQLite: `BEGIN IMMEDIATE`, one writer; PostgreSQL: a transaction-scoped
    /// advisory lock on the stream), so two replicas cannot store a position and a
    /// neighbour that does not link to it.
    pub async fn insert_bundle(&self, b: &BundleRow, now_us: i64) -> Result<Inserted, ApiError> {
        seq_to_db(b.seq)?;
        match &self.batcher {
            Some(tx) => {
                let (reply, answer) = oneshot::channel();
                let pending = PendingRow {
                    row: b.clone(),
                    now_us,
                    reply,
                };
                let gone = || ApiError::Unavailable("the index writer stopped".into());
                tx.send(pending).await.map_err(|_| gone())?;
                answer
                    .await
                    .map_err(|_| gone())?
                    .map_err(ApiError::Unavailable)
            }
            None => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(stream_lock_key(&b.device_id, &b.stream_id))
                    .execute(&mut *tx)
                    .await?;
                let outcome = check_and_insert(&mut tx, b, now_us).await?;
                if outcome == Inserted::New {
                    tx.commit().await?;
                } else {
                    tx.rollback().await?;
                }
                Ok(outcome)
            }
        }
    }

    /// Every index row, optionally of one device, in (device, stream, seq) order.
    pub async fn bundles(&self, device_id: Option<&str>) -> Result<Vec<BundleRow>, ApiError> {
        let rows = match device_id {
            Some(d) => sqlx::query(
                "SELECT device_id, stream_id, seq, digest, prev_digest, size, location FROM bundles
                     WHERE device_id = $1 ORDER BY device_id, stream_id, seq",
            )
            .bind(d)
            .fetch_all(&self.pool)
            .await?,
            None => sqlx::query(
                "SELECT device_id, stream_id, seq, digest, prev_digest, size, location FROM bundles
                     ORDER BY device_id, stream_id, seq",
            )
            .fetch_all(&self.pool)
            .await?,
        };
        rows.iter()
            .map(|r| {
                Ok(BundleRow {
                    device_id: r.try_get(0)?,
                    stream_id: r.try_get(1)?,
                    seq: r.try_get::<i64, _>(2)? as u64,
                    digest: r.try_get(3)?,
                    prev_digest: r.try_get(4)?,
                    size: r.try_get::<i64, _>(5)? as u64,
                    location: r.try_get(6)?,
                })
            })
            .collect()
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn insert_row<'e, E>(exec: E, b: &BundleRow, now_us: i64) -> Result<u64, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    Ok(sqlx::query(
        "INSERT INTO bundles (device_id, stream_id, seq, digest, prev_digest, size, received_us, location)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
    )
    .bind(&b.device_id)
    .bind(&b.stream_id)
    .bind(b.seq as i64)
    .bind(&b.digest)
    .bind(&b.prev_digest)
    .bind(b.size as i64)
    .bind(now_us)
    .bind(b.location.as_deref())
    .execute(exec)
    .await?
    .rows_affected())
}

/// The advisory lock key of a (device, stream): the first 8 bytes of the SHA-256 of
/// both ids.
fn stream_lock_key(device_id: &str, stream_id: &str) -> i64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"capvault-collector stream lock\0");
    ctx.update(device_id.as_bytes());
    ctx.update(b"\0");
    ctx.update(stream_id.as_bytes());
    let d = ctx.finish();
    let mut k = [0u8; 8];
    k.copy_from_slice(&d.as_ref()[..8]);
    i64::from_be_bytes(k)
}

/// Inside a transaction that holds the stream's write lock: the row is inserted unless
/// its position is taken or a stored neighbour does not link to it. The common case is
/// one statement; when nothing was inserted, [`classify_and_insert`] says why.
async fn check_and_insert(
    conn: &mut sqlx::AnyConnection,
    b: &BundleRow,
    now_us: i64,
) -> Result<Inserted, sqlx::Error> {
    let s = b.seq as i64;
    let n = sqlx::query(
        "INSERT INTO bundles (device_id, stream_id, seq, digest, prev_digest, size, received_us, location)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8
         WHERE NOT EXISTS (SELECT 1 FROM bundles WHERE device_id = $1 AND stream_id = $2
             AND ((seq = $9 AND digest <> $5) OR (seq = $10 AND prev_digest <> $4)))
         AND NOT EXISTS (SELECT 1 FROM devices WHERE device_id = $1 AND revoked_us IS NOT NULL)
         ON CONFLICT DO NOTHING",
    )
    .bind(&b.device_id)
    .bind(&b.stream_id)
    .bind(s)
    .bind(&b.digest)
    .bind(&b.prev_digest)
    .bind(b.size as i64)
    .bind(now_us)
    .bind(b.location.as_deref())
    .bind(s.saturating_sub(1))
    .bind(s.saturating_add(1))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if n == 1 {
        return Ok(Inserted::New);
    }
    classify_and_insert(conn, b, now_us).await
}

/// The position and its neighbours are checked one by one, then the row inserted
/// (unless a check fails).
async fn classify_and_insert(
    conn: &mut sqlx::AnyConnection,
    b: &BundleRow,
    now_us: i64,
) -> Result<Inserted, sqlx::Error> {
    let s = b.seq as i64;
    let rows = sqlx::query(
        "SELECT seq, digest, prev_digest FROM bundles
         WHERE device_id = $1 AND stream_id = $2 AND seq >= $3 AND seq <= $4",
    )
    .bind(&b.device_id)
    .bind(&b.stream_id)
    .bind(s.saturating_sub(1))
    .bind(s.saturating_add(1))
    .fetch_all(&mut *conn)
    .await?;
    for r in &rows {
        let q: i64 = r.try_get(0)?;
        let digest: String = r.try_get(1)?;
        let prev: String = r.try_get(2)?;
        if q == s {
            return Ok(Inserted::Existing(digest));
        }
        // Checked: a sequence number at either end of i64 has no neighbour there.
        if s.checked_sub(1) == Some(q) && digest != b.prev_digest {
            return Ok(Inserted::PrevMismatch);
        }
        if s.checked_add(1) == Some(q) && prev != b.digest {
            return Ok(Inserted::NextMismatch);
        }
    }
    // A revocation that came while the upload was being received and stored: nothing
    // new from the device from then on (a stored bundle's retry was answered above).
    let revoked =
        sqlx::query("SELECT 1 FROM devices WHERE device_id = $1 AND revoked_us IS NOT NULL")
            .bind(&b.device_id)
            .fetch_optional(&mut *conn)
            .await?;
    if revoked.is_some() {
        return Ok(Inserted::Revoked);
    }
    if insert_row(&mut *conn, b, now_us).await? == 1 {
        Ok(Inserted::New)
    } else {
        // Only if another writer got past the lock: report what it stored.
        let r = sqlx::query(
            "SELECT digest FROM bundles WHERE device_id = $1 AND stream_id = $2 AND seq = $3",
        )
        .bind(&b.device_id)
        .bind(&b.stream_id)
        .bind(s)
        .fetch_one(&mut *conn)
        .await?;
        Ok(Inserted::Existing(r.try_get(0)?))
    }
}

/// Commits index rows in batches: everything queued while the previous commit ran.
async fn batch_writer(pool: AnyPool, mut rx: mpsc::Receiver<PendingRow>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let result = async {
            // IMMEDIATE: the write lock is taken before the neighbour checks, so another
            // process on the same file cannot insert between check and insert.
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            let mut flags = Vec::with_capacity(batch.len());
            for p in &batch {
                // Later rows of the batch see the earlier ones.
                flags.push(check_and_insert(&mut tx, &p.row, p.now_us).await?);
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(flags)
        }
        .await;
        match result {
            Ok(flags) => {
                for (p, f) in batch.into_iter().zip(flags) {
                    let _ = p.reply.send(Ok(f));
                }
            }
            Err(e) => {
                let msg = crate::error::db_error_text(&e);
                for p in batch {
                    let _ = p.reply.send(Err(msg.clone()));
                }
            }
        }
    }
}

/// Creates the SQLite file of `url` owner-only (0600) when it does not exist yet, so
/// that SQLite opens it rather than creating it with the umask's permissions (its WAL
/// and shared-memory files take the database file's permissions).
fn create_private_sqlite_file(url: &str) -> Result<(), ApiError> {
    let Some(path) = sqlite_file(url) else {
        return Ok(());
    };
    if path.exists() {
        return Ok(());
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        // The parent directory may not exist; let SQLite report it as before.
        Err(_) => Ok(()),
    }
}

fn device_from_row(r: &AnyRow) -> Result<Device, ApiError> {
    Ok(Device {
        device_id: r.try_get(0)?,
        device_key: r.try_get(1)?,
        record: r.try_get(2)?,
        enrolled_us: r.try_get(3)?,
        revoked_us: r.try_get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: u64, digest: &str, prev: &str, location: Option<&str>) -> BundleRow {
        BundleRow {
            device_id: "d".into(),
            stream_id: "s".into(),
            seq,
            digest: digest.into(),
            prev_digest: prev.into(),
            size: 5,
            location: location.map(str::to_string),
        }
    }

    /// The file made owner-only before the driver opens it is the file the driver
    /// opens: percent escapes decoded the same way, in the default URL too.
    #[tokio::test]
    async fn a_sqlite_url_names_the_same_file_for_us_and_for_the_driver() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("odd %25 ?# dir");
        std::fs::create_dir(&dir).unwrap();
        let db = Db::open(&default_url(&dir)).await.unwrap();
        db.close().await;
        let file = dir.join(DEFAULT_FILE);
        assert!(
            file.is_file(),
            "{:?}",
            std::fs::read_dir(&dir).unwrap().collect::<Vec<_>>()
        );
        assert_eq!(
            std::fs::read_dir(&dir)
                .unwrap()
                .filter(|e| e
                    .as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "db"))
                .count(),
            1
        );
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let url = format!("sqlite://{}/a%25b.db?mode=rwc", tmp.path().display());
        let db = Db::open(&url).await.unwrap();
        db.close().await;
        assert!(tmp.path().join("a%b.db").is_file());
        assert!(!tmp.path().join("a%25b.db").exists());
        assert_eq!(sqlite_file("sqlite::memory:"), None);
    }

    /// A database at `url` made by the schema `steps` of an older version.
    async fn old_database(url: &str, steps: &[&[&'static str]]) -> AnyPool {
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .unwrap();
        sqlx::query("CREATE TABLE schema_version (version BIGINT NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        for (i, stmts) in steps.iter().enumerate() {
            for stmt in *stmts {
                sqlx::query(*stmt).execute(&pool).await.unwrap();
            }
            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                .bind(i as i64 + 1)
                .execute(&pool)
                .await
                .unwrap();
        }
        pool
    }

    #[tokio::test]
    async fn a_version_1_database_is_upgraded_in_place_and_keeps_its_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", tmp.path().join("c.db").display());
        sqlx::any::install_default_drivers();
        {
            let pool = old_database(&url, &[SCHEMA_V1]).await;
            sqlx::query(
                "INSERT INTO bundles (device_id, stream_id, seq, digest, prev_digest, size, received_us)
                 VALUES ('d', 's', 1, 'aa', '00', 5, 1)",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let db = Db::open(&url).await.unwrap();
        let version: i64 = sqlx::query("SELECT MAX(version) FROM schema_version")
            .fetch_one(&db.pool)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        // The old row reads back without a location (the digest names its file).
        let rows = db.bundles(None).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].location, None);

        // New rows keep their location; the chain rules hold across old and new rows.
        let b2 = row(2, "bb", "aa", Some("x.seg:48:5"));
        assert_eq!(db.insert_bundle(&b2, 2).await.unwrap(), Inserted::New);
        let other = row(2, "cc", "aa", Some("x.seg:101:5"));
        assert_eq!(
            db.insert_bundle(&other, 3).await.unwrap(),
            Inserted::Existing("bb".into())
        );
        let unlinked = row(3, "dd", "zz", Some("x.seg:154:5"));
        assert_eq!(
            db.insert_bundle(&unlinked, 4).await.unwrap(),
            Inserted::PrevMismatch
        );
        // A successor stored first must name the bundle before it.
        let b5 = row(5, "ff", "ee", None);
        assert_eq!(db.insert_bundle(&b5, 5).await.unwrap(), Inserted::New);
        let not_named = row(4, "ed", "gg", None);
        assert_eq!(
            db.insert_bundle(&not_named, 6).await.unwrap(),
            Inserted::NextMismatch
        );
        let rows = db.bundles(None).await.unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].location.as_deref(), Some("x.seg:48:5"));

        // A device revoked while its upload was in flight (after the handler's check):
        // the row is refused, and a retry of a stored bundle is still answered.
        db.add_token("t", 1, None, 1).await.unwrap();
        assert_eq!(
            db.enroll("t", "e", "key", "{}", 1).await.unwrap(),
            Enrolled::New
        );
        let e1 = BundleRow {
            device_id: "e".into(),
            ..row(1, "e1", "00", None)
        };
        assert_eq!(db.insert_bundle(&e1, 7).await.unwrap(), Inserted::New);
        assert!(db.revoke("e", 8).await.unwrap());
        let e2 = BundleRow {
            device_id: "e".into(),
            ..row(2, "e2", "e1", None)
        };
        assert_eq!(db.insert_bundle(&e2, 9).await.unwrap(), Inserted::Revoked);
        assert_eq!(
            db.insert_bundle(&e1, 10).await.unwrap(),
            Inserted::Existing("e1".into())
        );
        assert_eq!(db.bundles(Some("e")).await.unwrap().len(), 1);
        db.close().await;

        // Two processes opening a database of an older version at once: both open, the
        // steps made once.
        let old = tmp.path().join("v2.db");
        let old_url = format!("sqlite://{}?mode=rwc", old.display());
        old_database(&old_url, &[SCHEMA_V1, SCHEMA_V2])
            .await
            .close()
            .await;
        let (a, b) = tokio::join!(Db::open(&old_url), Db::open(&old_url));
        let (a, b) = (a.unwrap(), b.unwrap());
        let versions: Vec<i64> = sqlx::query("SELECT version FROM schema_version ORDER BY version")
            .fetch_all(&a.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get(0).unwrap())
            .collect();
        assert_eq!(versions, [1, 2, 3, 4]);
        a.close().await;
        b.close().await;

        // Opening again does not migrate again.
        let db = Db::open(&url).await.unwrap();
        let versions: i64 = sqlx::query("SELECT COUNT(*) FROM schema_version")
            .fetch_one(&db.pool)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert_eq!(versions, 4);
        db.close().await;
    }
}
