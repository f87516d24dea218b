//! Keys: the OS keychain backends and the key hierarchy (KEK -> DEK epochs).
pub(crate) mod device;
pub(crate) mod keystore;
