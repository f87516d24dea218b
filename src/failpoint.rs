//! Named failure points for crash-safety tests. With the `test-hooks` feature a test can
//! arm a point; the next time the code reaches it, the operation fails there as if the
//! process had died. Without the feature every point is a no-op.

use crate::error::Result;

#[cfg(feature = "test-hooks")]
static ARMED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Fails with a storage error if `name` is armed (and disarms it).
#[inline]
pub(crate) fn hit(name: &str) -> Result<()> {
    #[cfg(feature = "test-hooks")]
    {
        let mut armed = ARMED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = armed.iter().position(|a| a == name) {
            armed.remove(i);
            return Err(crate::error::Error::Storage(format!(
                "injected failure at {name}"
            )));
        }
    }
    let _ = name;
    Ok(())
}

/// Arms failure point `name` (test builds only).
#[cfg(feature = "test-hooks")]
pub fn arm(name: &str) {
    ARMED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(name.to_string());
}
