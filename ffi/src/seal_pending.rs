//! Stand-in for `Vault::seal_next` / `Vault::ack` until the core crate exports them.
//! Inherent methods take precedence over these, so once the core has them this module
//! is unused and is deleted.

use capvault_core::{Error, Recipient, Result, SealedBundle, Vault};

pub(crate) trait SealPending {
    fn seal_next(&self, recipient: &Recipient, max_bytes: usize) -> Result<Option<SealedBundle>>;
    fn ack(&self, bundle_id: &str, receipt: Option<&[u8]>) -> Result<()>;
}

impl SealPending for Vault {
    fn seal_next(&self, _: &Recipient, _: usize) -> Result<Option<SealedBundle>> {
        Err(Error::Storage(
            "sealing is not available in this build".into(),
        ))
    }
    fn ack(&self, _: &str, _: Option<&[u8]>) -> Result<()> {
        Err(Error::NotFound(
            "sealing is not available in this build".into(),
        ))
    }
}
