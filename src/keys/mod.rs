//! Keys: the OS keychain backends, the device signing key and the key hierarchy
//! (KEK -> DEK epochs).
pub(crate) mod device;
pub(crate) mod hierarchy;
pub(crate) mod keystore;
