//! Stand-ins for vault calls that are being added to the library (`seal_next`, `ack`,
//! `subject_access`, `Vault::erase`). Inherent methods take precedence over these trait
//! methods, so once the library provides them this module is deleted and nothing else
//! changes.

use std::path::Path;

use capvault::{Error, Recipient, Result, SealedBundle, SeqEvent, Vault, VaultOptions};

fn missing(what: &str) -> Error {
    Error::InvalidArgument(format!("{what} is not available in this build of capvault"))
}

pub trait PendingVaultApi {
    fn seal_next(&self, to: &Recipient, max_bytes: usize) -> Result<Option<SealedBundle>>;
    fn ack(&self, bundle_id: &str, receipt: Option<&[u8]>) -> Result<()>;
    fn subject_access(&self) -> Result<Vec<SeqEvent>>;
    fn erase(dir: &Path, user: &str, options: VaultOptions) -> Result<()>;
}

impl PendingVaultApi for Vault {
    fn seal_next(&self, _to: &Recipient, _max_bytes: usize) -> Result<Option<SealedBundle>> {
        Err(missing("sealing"))
    }
    fn ack(&self, _bundle_id: &str, _receipt: Option<&[u8]>) -> Result<()> {
        Err(missing("ack"))
    }
    fn subject_access(&self) -> Result<Vec<SeqEvent>> {
        Err(missing("subject access"))
    }
    fn erase(_dir: &Path, _user: &str, _options: VaultOptions) -> Result<()> {
        Err(missing("erase"))
    }
}
