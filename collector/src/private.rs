//! The collector's own files stay its own, as ssh insists for its keys (StrictModes):
//! whoever else could write the collector directory, its database or its blob directory
//! could mint tokens, swap enrollment records or delete stored bundles, and whoever
//! could read a key file holds the key.
//!
//! `init` only takes a new or empty directory of this user's; every other command
//! checks the directory it is given, and the default database and blob directory in
//! it, before using them.

use std::path::Path;

use capvault_format::effective_uid;

use crate::error::ApiError;

/// What is wrong with `meta` for a file or directory only this user may change:
/// another owner, or write access for group or others.
#[cfg(unix)]
fn not_private(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = meta.permissions().mode() & 0o7777;
    if effective_uid().is_some_and(|me| me != meta.uid()) {
        Some(format!("belongs to another user (uid {})", meta.uid()))
    } else if mode & 0o022 != 0 {
        Some(format!(
            "can be written by group or others (mode {mode:04o})"
        ))
    } else {
        None
    }
}

fn refused(path: &Path, what: &str, why: &str, fix: &str) -> ApiError {
    ApiError::Operational(format!("{what} {} {why}: {fix}", path.display()))
}

/// A key file (the receipt signing key, an identity, a TLS key): this user's and
/// readable by nobody else; or, as PostgreSQL allows, root's and readable by its group
/// at most (the `ssl-cert` group, a container's secret volume).
pub fn check_key_file(path: &Path, what: &str) -> Result<(), ApiError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let Ok(meta) = std::fs::metadata(path) else {
            // Missing or unreadable: reading it says so.
            return Ok(());
        };
        let mode = meta.permissions().mode() & 0o777;
        let me = effective_uid();
        let roots = meta.uid() == 0 && me != Some(0);
        if me.is_some_and(|me| me != meta.uid()) && !roots {
            return Err(refused(
                path,
                what,
                &format!("belongs to another user (uid {})", meta.uid()),
                "use a key file of your own",
            ));
        }
        let open_to = if roots { 0o037 } else { 0o077 };
        if mode & open_to != 0 {
            return Err(refused(
                path,
                what,
                &format!("has permissions {mode:04o}, too open"),
                &format!(
                    "it must be accessible by its owner only (chmod 600 {}; or owned by \
                     root, 640)",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// The directory `init` sets up: created (0700) when missing; an existing one must be
/// an empty directory of this user's (made 0700), never a shared or used one. Returns
/// whether it was created.
pub fn prepare_init_dir(dir: &Path) -> Result<bool, ApiError> {
    let op = |what: String, e: std::io::Error| ApiError::Operational(format!("{what}: {e}"));
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| op(format!("cannot create {}", parent.display()), e))?;
            }
            let mut builder = std::fs::DirBuilder::new();
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                builder.mode(0o700);
            }
            builder
                .create(dir)
                .map_err(|e| op(format!("cannot create {}", dir.display()), e))?;
            Ok(true)
        }
        Err(e) => Err(op(format!("cannot use {}", dir.display()), e)),
        Ok(meta) => {
            let why = if meta.file_type().is_symlink() {
                Some("is a symbolic link".to_string())
            } else if !meta.is_dir() {
                Some("is not a directory".to_string())
            } else if std::fs::read_dir(dir)
                .map_err(|e| op(format!("cannot read {}", dir.display()), e))?
                // A fresh file system's root holds only lost+found.
                .any(|e| e.is_ok_and(|e| e.file_name() != "lost+found"))
            {
                Some(
                    "is not empty (an initialized collector, or a directory others use)"
                        .to_string(),
                )
            } else {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::MetadataExt;
                    effective_uid()
                        .filter(|&me| me != meta.uid())
                        .map(|_| format!("belongs to another user (uid {})", meta.uid()))
                }
                #[cfg(not(unix))]
                None
            };
            if let Some(why) = why {
                return Err(refused(
                    dir,
                    "the collector directory",
                    &why,
                    "give init a new path, or an empty directory of your own",
                ));
            }
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| op(format!("cannot restrict {}", dir.display()), e))?;
            }
            Ok(false)
        }
    }
}

/// Before a command uses collector directory `dir`: it, and the SQLite file and blob
/// directory in it when those are the ones used (`default_db`, `default_store`), are
/// this user's and closed to writes by anyone else; the database is one file with one
/// name, and neither it nor the blob directory is a link to elsewhere.
pub fn check_collector_dir(
    dir: &Path,
    default_db: bool,
    default_store: bool,
) -> Result<(), ApiError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let fix = |p: &Path| {
            format!(
                "the collector's files must be yours and closed to others (chown, then chmod \
                 go-w {})",
                p.display()
            )
        };
        if let Ok(meta) = std::fs::metadata(dir) {
            if let Some(why) = not_private(&meta) {
                return Err(refused(dir, "the collector directory", &why, &fix(dir)));
            }
        }
        let db = dir.join(crate::db::DEFAULT_FILE);
        if let (true, Ok(meta)) = (default_db, std::fs::symlink_metadata(&db)) {
            let why = if !meta.file_type().is_file() {
                Some("is not a regular file (a link, or something else)".to_string())
            } else if meta.nlink() > 1 {
                Some(format!("has {} names (hard links)", meta.nlink()))
            } else {
                not_private(&meta)
            };
            if let Some(why) = why {
                return Err(refused(&db, "the collector database", &why, &fix(&db)));
            }
        }
        let bundles = dir.join("bundles");
        if let (true, Ok(meta)) = (default_store, std::fs::symlink_metadata(&bundles)) {
            if !meta.is_dir() {
                return Err(refused(
                    &bundles,
                    "the blob directory",
                    "is not a directory (a link, or something else)",
                    "to keep the bundles elsewhere, give --store that directory",
                ));
            }
            if let Some(why) = not_private(&meta) {
                return Err(refused(
                    &bundles,
                    "the blob directory",
                    &why,
                    &fix(&bundles),
                ));
            }
        }
    }
    Ok(())
}
