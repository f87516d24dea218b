//! Identities (collector secret keys, `CVSECRET-...`) never leave the CLI by accident:
//! arguments and environment values holding one are refused before anything runs, and
//! every message is redacted as a last line of defence.

/// The start of every identity (collector secret key) in text form.
pub const IDENTITY_PREFIX: &str = "CVSECRET-";

/// True when `s` holds an identity (a secret), in any letter case.
pub fn holds_identity(s: &str) -> bool {
    s.to_ascii_uppercase().contains(IDENTITY_PREFIX)
}

/// The suite labels that follow [`IDENTITY_PREFIX`] (`CVSECRET-X25519-1<key>`). The
/// prefix with a bare label and no key after it is a format hint, not a secret.
const IDENTITY_SUITES: [&str; 2] = ["X25519-1", "XWING-1"];

/// True when `s` holds an identity with key material: the prefix followed by more than
/// a bare suite label (what [`redact`] would replace).
pub fn holds_secret(s: &str) -> bool {
    redact(s) != s
}

/// `s` with every identity replaced by `CVSECRET-<redacted>`: the last line of defence
/// for anything the CLI echoes (errors, clap's usage messages). The library's own hints
/// ("it must start with CVSECRET-X25519-1 or CVSECRET-XWING-1") carry no key and stay
/// as they are.
pub fn redact(s: &str) -> String {
    let upper = s.to_ascii_uppercase();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while let Some(at) = upper[i..].find(IDENTITY_PREFIX) {
        let start = i + at;
        let after = start + IDENTITY_PREFIX.len();
        // The identity runs on over its suite name and base32 body.
        let rest = &s[after..];
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(rest.len());
        let run = &rest[..len];
        let bare = run.is_empty() || IDENTITY_SUITES.iter().any(|l| run.eq_ignore_ascii_case(l));
        out.push_str(&s[i..start]);
        if bare {
            out.push_str(&s[start..after + len]);
        } else {
            out.push_str("CVSECRET-<redacted>");
        }
        i = after + len;
    }
    out.push_str(&s[i..]);
    out
}

/// Why an identity given as `what` (a flag, an environment variable, "an argument") is
/// refused, never quoting it.
pub fn refused(what: &str) -> String {
    format!(
        "{what}: this is an identity (a collector's secret key), so nothing was done and it \
         is not repeated here; identities belong in a file only you can read, given with \
         --identity FILE (or `--identity -` and stdin), and devices and uploads take its \
         recipient, which `capvault recipient show --identity FILE` prints (a command line is \
         visible to other users and kept in shell history: consider this identity exposed)"
    )
}

/// Refuses any command-line argument or environment setting that holds an identity,
/// before the command runs: no command takes one there, and anything it printed on
/// success (a path, a user name, a URL) would repeat it.
pub fn check_args(
    args: impl IntoIterator<Item = std::ffi::OsString>,
    env: &[(&str, Option<std::ffi::OsString>)],
) -> Result<(), String> {
    let args: Vec<String> = args
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    for (i, arg) in args.iter().enumerate() {
        if !holds_secret(arg) {
            continue;
        }
        let flag = match arg.split_once('=') {
            Some((f, _)) if f.starts_with("--") => Some(f.to_string()),
            _ => i
                .checked_sub(1)
                .map(|p| &args[p])
                .filter(|p| p.starts_with('-') && p.len() > 1 && !p.contains('='))
                .cloned(),
        };
        return Err(match flag.as_deref() {
            Some("--identity" | "-i") => "--identity takes the identity file, and this is the \
                identity itself (a secret, now in your shell history): put it in a file only \
                you can read, or pass `-` and give it on stdin"
                .to_string(),
            Some(f) => refused(f),
            None => refused("an argument"),
        });
    }
    for (name, value) in env {
        if value
            .as_ref()
            .is_some_and(|v| holds_secret(&v.to_string_lossy()))
        {
            return Err(refused(name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_redacted_wherever_they_occur() {
        let id = "CVSECRET-X25519-1ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let r = redact(&format!("invalid value '{id}' for '--to <R>': x"));
        assert_eq!(r, "invalid value 'CVSECRET-<redacted>' for '--to <R>': x");
        let lower = id.to_ascii_lowercase();
        assert!(!redact(&format!("{lower} and {id}")).contains("abcdefgh"));
        assert!(!redact(&format!("{lower} and {id}")).contains("ABCDEFGH"));
        assert_eq!(redact("cvrecip-x25519-1abc"), "cvrecip-x25519-1abc");
        assert!(holds_identity(&lower));
        assert!(holds_secret(&lower) && holds_secret(id));
    }

    #[test]
    fn format_hints_stay_readable() {
        let hint = "this is not a capvault identity: it must start with CVSECRET-X25519-1 or \
                    CVSECRET-XWING-1; CVSECRET-... is the prefix";
        assert_eq!(redact(hint), hint);
        assert!(!holds_secret(hint));
        // A key right after the label is still a key, and so is anything else.
        assert_eq!(
            redact("x CVSECRET-X25519-1A y CVSECRET-XWING-2 z"),
            "x CVSECRET-<redacted> y CVSECRET-<redacted> z"
        );
    }

    #[test]
    fn arguments_holding_an_identity_are_refused_without_echo() {
        let id = "CVSECRET-X25519-1ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let args = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        let e = check_args(args(&["capvault", "init", "--vault", id]), &[]).unwrap_err();
        assert!(
            e.starts_with("--vault: this is an identity") && !e.contains("ABCDEFGH"),
            "{e}"
        );
        let e = check_args(args(&["capvault", &format!("--token={id}")]), &[]).unwrap_err();
        assert!(e.starts_with("--token:"), "{e}");
        let e = check_args(args(&["capvault", "ack", &format!("/tmp/{id}")]), &[]).unwrap_err();
        assert!(e.starts_with("an argument:"), "{e}");
        let env = [("CAPVAULT_USER", Some(id.to_ascii_lowercase().into()))];
        let e = check_args(args(&["capvault", "status"]), &env).unwrap_err();
        assert!(e.starts_with("CAPVAULT_USER:"), "{e}");
        // Hints that name the prefix are no identity.
        check_args(args(&["capvault", "x", "CVSECRET-X25519-1"]), &[]).unwrap();
    }
}
