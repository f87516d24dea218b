//! Files the CLI writes and reads: atomic 0600 output files, `-` for stdin and stdout,
//! and errors that name the path they are about.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use zeroize::Zeroizing;

use crate::output::{io_reason, CliError, CliResult};

/// True when a path argument is `-` (stdin or stdout).
pub fn is_dash(p: &Path) -> bool {
    p.as_os_str() == "-"
}

/// An output file being written: a new temporary file (0600) in the destination
/// directory, renamed to its final name only once its bytes are on disk. Removed again
/// when dropped without [`Staged::commit`]. Creating it first lets a command find out
/// that the directory is unusable before it changes anything.
pub struct Staged {
    dir: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
}

impl Staged {
    /// Creates `.capvault-<pid>-<n>.tmp` in `dir`, never reusing an existing file.
    pub fn create_in(dir: &Path) -> std::io::Result<Staged> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let tmp = dir.join(format!(".capvault-{}-{n}.tmp", std::process::id()));
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            match opts.open(&tmp) {
                Ok(f) => {
                    return Ok(Staged {
                        dir: dir.to_path_buf(),
                        tmp,
                        file: Some(f),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes `bytes`, syncs them and renames the file to `dir/name` (replacing a file
    /// of that name), then syncs the directory so the name survives a crash too.
    pub fn commit(mut self, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
        let mut f = self.file.take().expect("a staged file is committed once");
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        let dest = self.dir.join(name);
        std::fs::rename(&self.tmp, &dest)?;
        self.tmp = PathBuf::new();
        #[cfg(unix)]
        File::open(&self.dir)?.sync_all()?;
        Ok(dest)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Makes sure `dir` (given as `flag`) is a directory, creating it (and missing parents)
/// 0700 when it does not exist: what goes in it is the user's data or bundles.
pub fn ensure_dir(dir: &Path, flag: &str) -> CliResult<()> {
    let d = dir.display();
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(CliError::failure(format!(
            "{flag} {d} is a file, not a directory"
        ))),
        Err(_) => {
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                b.mode(0o700);
            }
            b.create(dir).map_err(|e| {
                CliError::failure(format!("cannot create {flag} {d}: {}", io_reason(&e)))
            })
        }
    }
}

/// The directory part of an output path (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `bytes` to `path` atomically (0600), or to stdout for `-`. `what` names the
/// content in errors ("the receipts"). Returns the path written, `-` for stdout.
pub fn write_out(path: &Path, what: &str, bytes: &[u8]) -> CliResult<PathBuf> {
    if is_dash(path) {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes)
            .and_then(|()| out.flush())
            .map_err(|e| {
                CliError::failure(format!("cannot write {what} to stdout: {}", io_reason(&e)))
            })?;
        return Ok(path.to_path_buf());
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| CliError::usage(format!("{} does not name a file", path.display())))?;
    if path.is_dir() {
        return Err(CliError::failure(format!(
            "cannot write {what} to {}: it is a directory",
            path.display()
        )));
    }
    let dir = parent_dir(path);
    Staged::create_in(&dir)
        .and_then(|s| s.commit(name, bytes))
        .map_err(|e| {
            CliError::failure(format!(
                "cannot write {what} to {}: {}",
                path.display(),
                io_reason(&e)
            ))
        })
}

/// Reads stdin to the end for `flag` (`--identity -`, a `-` bundle), refusing when stdin
/// is a terminal: the command would otherwise wait for input nobody knows to type.
pub fn read_stdin(flag: &str) -> CliResult<Zeroizing<Vec<u8>>> {
    if std::io::stdin().is_terminal() {
        return Err(CliError::usage(format!(
            "{flag} reads from stdin, but stdin is a terminal: pipe or redirect the input \
             (e.g. `< FILE`)"
        )));
    }
    let mut buf = Zeroizing::new(Vec::new());
    std::io::stdin().lock().read_to_end(&mut buf).map_err(|e| {
        CliError::failure(format!("cannot read {flag} from stdin: {}", io_reason(&e)))
    })?;
    Ok(buf)
}

/// Reads a file named on the command line; the error names the path and what it is.
pub fn read_file(path: &Path, what: &str) -> CliResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| read_error(path, what, &e))
}

/// "cannot read the bundle x.cvb: it does not exist" and the like.
pub fn read_error(path: &Path, what: &str, e: &std::io::Error) -> CliError {
    let why = match e.kind() {
        std::io::ErrorKind::NotFound => "it does not exist".to_string(),
        _ if path.is_dir() => "it is a directory".to_string(),
        _ => io_reason(e),
    };
    CliError::failure(format!("cannot read {what} {}: {why}", path.display()))
}

/// Before plaintext (or a secret) goes to stdout
/// ([`capvault_format::stdout_not_private`]): refused before anything is written.
pub fn private_stdout() -> CliResult<()> {
    match capvault_format::stdout_not_private() {
        Err(e) => Err(CliError::failure(format!("cannot check stdout: {e}"))),
        Ok(None) => Ok(()),
        Ok(Some(problem)) => Err(CliError::failure(format!(
            "stdout is a file that {problem}: what is written is for you only; redirect \
             with `umask 077` set, or to a new file of your own, or pipe it"
        ))),
    }
}
