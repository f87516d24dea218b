//! Replays every committed seed corpus file (fuzz/corpus/<target>/) through the checks
//! of its fuzz target (fuzz/src/lib.rs, the same functions the cargo-fuzz binaries
//! call), so the corpora and the checks run on stable in every test run, with or without
//! a nightly toolchain. The fuzzing itself: scripts/fuzz.sh, docs/RELIABILITY.md.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[path = "../fuzz/src/lib.rs"]
mod checks;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// The corpus directories, the checks and the fuzz binaries name the same targets, so
/// no corpus goes unreplayed and no target unfuzzed.
#[test]
fn every_target_has_a_corpus_a_check_and_a_binary() {
    let checks: BTreeSet<String> = checks::TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(names_in(&fuzz_dir().join("corpus")), checks);
    let sources: BTreeSet<String> = names_in(&fuzz_dir().join("fuzz_targets"))
        .into_iter()
        .map(|f| f.trim_end_matches(".rs").to_string())
        .collect();
    assert_eq!(sources, checks);
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let bins: BTreeSet<String> = manifest
        .split("[[bin]]")
        .skip(1)
        .map(|b| {
            let line = b.lines().find(|l| l.starts_with("name = ")).unwrap();
            line.trim_start_matches("name = ")
                .trim_matches('"')
                .to_string()
        })
        .collect();
    assert_eq!(bins, checks);
}

/// Every file of every corpus passes its target's checks, and each corpus has inputs
/// that get past the first decoder (for stored state: past the MAC), so the replay runs
/// the code behind it too.
#[test]
fn every_committed_corpus_file_passes_its_target() {
    let mut failed = Vec::new();
    for (target, check) in checks::TARGETS {
        let dir = fuzz_dir().join("corpus").join(target);
        let files = names_in(&dir);
        assert!(!files.is_empty(), "{target}: empty corpus");
        let mut deep = 0;
        for f in &files {
            let path = dir.join(f);
            let bytes = std::fs::read(&path).unwrap();
            match std::panic::catch_unwind(|| check(&bytes)) {
                Ok(true) => deep += 1,
                Ok(false) => {}
                Err(_) => failed.push(path.display().to_string()),
            }
        }
        assert!(
            deep > 0,
            "{target}: no corpus input gets past the first decoder"
        );
        println!(
            "{target}: {} files, {deep} past the first decoder",
            files.len()
        );
    }
    assert!(failed.is_empty(), "corpus inputs that fail: {failed:#?}");
}
