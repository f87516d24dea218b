//! Sealed upload: collector keys as text, the bundle format (HPKE + device signature)
//! and receipts. The format is specified in docs/FORMAT.md, "Bundles".

pub(crate) mod bundle;
pub(crate) mod receipt;
pub(crate) mod recipient;

#[allow(unused_imports)]
pub(crate) use bundle::seal_bundle;
#[cfg(feature = "test-hooks")]
pub use bundle::BundleInput;
pub use bundle::{bundle_id, BundleHeader, SealedBundle};

#[cfg(test)]
mod tests;
pub use receipt::{verify_receipt, RECEIPT_LEN};
pub use recipient::{Identity, ReceiptKey, Recipient, Suite};
