//! Keys: the OS keychain backends, and the key hierarchy
//! (KEK -> DEK epochs).
pub(crate) mod hierarchy;
pub(crate) mod keystore;
pub(crate) mod mark;
