//! C API for capvault.
