//! The `capvault-collector` command.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    // An identity (the secret key that opens every bundle) typed where a path belongs
    // would be echoed by an error and kept in the shell's history and the process list:
    // refused before anything parses or prints it.
    if let Some(i) = std::env::args_os()
        .skip(1)
        .position(|a| capvault_format::holds_identity(&a.to_string_lossy()))
    {
        eprintln!(
            "capvault-collector: argument {} holds a collector identity (a secret key), \
             not shown: pass --identity the path of the file that holds it; nothing was \
             done (remove it from your shell history)",
            i + 1
        );
        return std::process::ExitCode::from(2);
    }
    // A database named in the environment applies to every command, whatever --dir
    // says: said, so that a staging command does not go to production unnoticed.
    if std::env::var_os("CAPVAULT_COLLECTOR_DB").is_some()
        && !std::env::args().any(|a| a == "--db" || a.starts_with("--db="))
    {
        eprintln!("capvault-collector: using the database named in CAPVAULT_COLLECTOR_DB");
    }
    if password_on_command_line(std::env::args().skip(1)) {
        eprintln!(
            "capvault-collector: warning: --db holds a password, which every local user can \
             read in the process list: give the URL in CAPVAULT_COLLECTOR_DB, or the password \
             in PGPASSWORD or ~/.pgpass"
        );
    }
    std::process::ExitCode::from(capvault_collector::run(capvault_collector::Cli::parse()))
}

/// True when a `--db` argument is a URL with a password (`scheme://user:password@host`).
fn password_on_command_line(mut args: impl Iterator<Item = String>) -> bool {
    while let Some(arg) = args.next() {
        let url = match arg.strip_prefix("--db") {
            Some("") => args.next().unwrap_or_default(),
            Some(rest) if rest.starts_with('=') => rest[1..].to_string(),
            _ => continue,
        };
        let authority = url.split_once("://").map_or("", |(_, rest)| rest);
        let query = authority.split_once('?').map_or("", |(_, q)| q);
        let authority = authority.split(['/', '?']).next().unwrap_or_default();
        if authority
            .rsplit_once('@')
            .is_some_and(|(user, _)| user.contains(':'))
            || query
                .split('&')
                .any(|p| p.to_ascii_lowercase().starts_with("password="))
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_password_in_a_db_url_on_the_command_line_is_seen() {
        let seen =
            |args: &[&str]| super::password_on_command_line(args.iter().map(|s| s.to_string()));
        assert!(seen(&["serve", "--db", "postgres://u:secret@db/c"]));
        assert!(seen(&[
            "serve",
            "--db=postgres://u:p%40ss@db:5432/c?sslmode=require"
        ]));
        assert!(!seen(&["serve", "--db", "postgres://u@db/c"]));
        assert!(!seen(&["serve", "--db", "postgres://db/c?user=a:b"]));
        assert!(seen(&[
            "serve",
            "--db",
            "postgres://u@db/c?sslmode=require&password=x"
        ]));
        assert!(!seen(&[
            "serve",
            "--db",
            "sqlite:///var/c/collector.db?mode=rwc"
        ]));
        assert!(!seen(&[
            "serve",
            "--dir",
            "u:secret@x",
            "--dbx",
            "postgres://u:p@h/c"
        ]));
        assert!(!seen(&["serve", "--db"]));
    }
}
