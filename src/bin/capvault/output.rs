//! Errors with exit codes, value parsers, human formatting and progress bars.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Exit code for operational failures.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for usage errors (also what clap uses).
pub const EXIT_USAGE: u8 = 2;
/// Exit code for integrity failures (tampering, broken chains).
pub const EXIT_INTEGRITY: u8 = 3;

/// An error to print as one line on stderr, with the process exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

pub type CliResult<T> = Result<T, CliError>;

impl CliError {
    pub fn failure(message: impl Into<String>) -> Self {
        CliError {
            code: EXIT_FAILURE,
            message: message.into(),
        }
    }
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
    pub fn integrity(message: impl Into<String>) -> Self {
        CliError {
            code: EXIT_INTEGRITY,
            message: message.into(),
        }
    }
    /// Exit with a code but print nothing more (the report was already printed).
    pub fn silent(code: u8) -> Self {
        CliError {
            code,
            message: String::new(),
        }
    }
}

/// Maps a library error to an exit code and a message that says what to do.
impl From<capvault::Error> for CliError {
    fn from(e: capvault::Error) -> Self {
        use capvault::Error as E;
        match &e {
            E::Tampered(_) => CliError::integrity(format!(
                "{}; keep a copy of the vault or bundle for investigation and do not use it further",
                describe(&e)
            )),
            E::InUse => CliError::failure(
                "the vault is in use by another process (a capture agent?); stop it and retry \
                 (status, keys, pause, resume and erase work through its hand-off)",
            ),
            _ => CliError::failure(describe(&e)),
        }
    }
}

impl From<capvault_format::Error> for CliError {
    fn from(e: capvault_format::Error) -> Self {
        capvault::Error::from(e).into()
    }
}

/// A library error as a person reads it: the library's kind prefixes ("invalid
/// argument:", "storage error:") name internal categories, not what went wrong, so the
/// CLI leaves them out; integrity failures keep theirs (it is the verdict).
pub fn describe(e: &capvault::Error) -> String {
    use capvault::Error as E;
    match e {
        E::InvalidArgument(m) | E::Storage(m) | E::NotFound(m) => m.clone(),
        E::Keychain(m) => format!("keychain: {m}"),
        E::StorageFull(m) => format!("the disk is full or the vault's byte budget is used up: {m}"),
        other => other.to_string(),
    }
}

/// An I/O error as a person reads it: what happened, without Rust's " (os error N)"
/// suffix ("cannot read --options x.json: it does not exist").
pub fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => "it does not exist".into(),
        K::PermissionDenied => "permission denied".into(),
        K::IsADirectory => "it is a directory".into(),
        K::NotADirectory => "a part of the path is not a directory".into(),
        K::AlreadyExists => "it already exists".into(),
        _ => lowercase_first(&plain(&e.to_string())),
    }
}

/// `s` without the " (os error N)" suffixes that Rust adds to system errors (the
/// library's storage messages carry them): the words before it say the same.
pub fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find(" (os error ") {
        let after = &rest[at + " (os error ".len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with(')') {
            out.push_str(&rest[..at]);
            rest = &after[digits + 1..];
        } else {
            out.push_str(&rest[..at + 1]);
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        // "No space left on device" reads as part of a sentence; "IO" stays.
        Some(f) if f.is_uppercase() && c.clone().next().is_some_and(char::is_lowercase) => {
            f.to_lowercase().chain(c).collect()
        }
        _ => s.to_string(),
    }
}

/// Like [`describe`], for the formats crate's errors.
pub fn describe_format(e: &capvault_format::Error) -> String {
    describe(&capvault::Error::from(e.clone()))
}

/// Writing JSON Lines failed: stdout, or a payload file in `--blobs-dir`.
pub fn write_events_error(
    what: &str,
    blobs_dir: Option<&std::path::Path>,
    e: &capvault::Error,
) -> CliError {
    CliError::failure(match blobs_dir {
        Some(d) => format!(
            "cannot write the {what} to stdout or their payloads to {}: {}",
            d.display(),
            describe(e)
        ),
        None => format!("cannot write the {what} to stdout: {}", describe(e)),
    })
}

/// "1 record", "2 records", "no records".
pub fn count(n: u64, what: &str) -> String {
    match n {
        0 => format!("no {what}s"),
        1 => format!("1 {what}"),
        _ => format!("{n} {what}s"),
    }
}

/// "record 4", "records 4..=9", or "no records" for an empty range.
pub fn record_range(first: u64, last: u64) -> String {
    if first == 0 && last == 0 || last < first {
        "no records".into()
    } else if first == last {
        format!("record {first}")
    } else {
        format!("records {first}..={last}")
    }
}

/// Parses durations like `30s`, `15m`, `1h`, `1h30m`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("'{s}' is not a duration: use a number and a unit, e.g. 30s, 15m, 1h");
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" | "sec" | "secs" => Duration::from_secs(n),
            "m" | "min" | "mins" => Duration::from_secs(n.saturating_mul(60)),
            "h" | "hour" | "hours" => Duration::from_secs(n.saturating_mul(3600)),
            "d" | "day" | "days" => Duration::from_secs(n.saturating_mul(86400)),
            _ => return Err(bad()),
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// Parses byte sizes like `1048576`, `512K`, `16M`, `16MiB`, `1G` (powers of 1024).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let bad = || format!("'{s}' is not a size: use bytes or K, M, G (e.g. 16M)");
    let t = s.trim().to_ascii_uppercase();
    let t = t
        .strip_suffix("IB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(&t);
    let (num, shift) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let v = n.checked_mul(1u64 << shift).ok_or_else(bad)?;
    if v == 0 {
        return Err("the size must be at least 1 byte".into());
    }
    usize::try_from(v).map_err(|_| bad())
}

/// `1.5 MiB`-style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Microseconds since the Unix epoch as `2025-11-24 09:30:00 UTC`.
pub fn human_time(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Now in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// Prints a JSON value as one pretty document on stdout.
pub fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON values serialize")
    );
}

/// True when progress bars may be drawn: stderr is a terminal. Bars only ever go to
/// stderr, so stdout (JSON Lines, JSON, a file) stays clean whatever it is.
pub fn interactive() -> bool {
    std::io::stderr().is_terminal()
}

/// A progress bar on stderr for `len` steps (hidden when not interactive).
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), draw_target());
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb.tick();
    pb
}

/// A spinner on stderr for work of unknown length (hidden when not interactive).
pub fn spinner(what: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(None, draw_target());
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"),
    );
    pb.set_message(what.to_string());
    pb.tick();
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Prints a line on stderr above a progress bar (or plainly when there is none).
pub fn note_above(pb: &ProgressBar, line: &str) {
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}

fn draw_target() -> ProgressDrawTarget {
    if interactive() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["30x", "30", "", "m", "1.5h", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("16M").unwrap(), 16 << 20);
        assert_eq!(parse_size("2KiB").unwrap(), 2048);
        assert_eq!(parse_size("100b").unwrap(), 100);
        assert!(parse_size("0").is_err());
        assert!(parse_size("12Q").is_err());
    }

    #[test]
    fn system_errors_read_without_os_error_numbers() {
        let e = std::io::Error::from_raw_os_error(28);
        assert_eq!(io_reason(&e), "no space left on device");
        let e = std::io::Error::from_raw_os_error(2);
        assert_eq!(io_reason(&e), "it does not exist");
        assert_eq!(
            plain("cannot write x: No space left on device (os error 28); retry (os error x)"),
            "cannot write x: No space left on device; retry (os error x)"
        );
    }

    #[test]
    fn counts_and_ranges_read_as_english() {
        assert_eq!(count(0, "record"), "no records");
        assert_eq!(count(1, "record"), "1 record");
        assert_eq!(count(2, "bundle"), "2 bundles");
        assert_eq!(record_range(0, 0), "no records");
        assert_eq!(record_range(3, 3), "record 3");
        assert_eq!(record_range(1, 5), "records 1..=5");
    }

    #[test]
    fn times() {
        assert_eq!(human_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(human_time(1_700_000_000_000_000), "2023-11-14 22:13:20 UTC");
    }
}
