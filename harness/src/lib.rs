//! What the harness's benchmarks share.

#![forbid(unsafe_code)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Bytes allocated to the files under `path`: what `du` counts (sparse files and
/// punched holes count for nothing). A file removed meanwhile (sled deletes old
/// snapshots and blobs in the background) counts nothing.
pub fn allocated(path: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(path).unwrap() {
        let e = e.unwrap();
        let Ok(m) = e.metadata() else { continue };
        total += if m.is_dir() {
            allocated(&e.path())
        } else {
            m.blocks() * 512
        };
    }
    total
}
