//! The privacy policy enforced by a real vault, checked where it matters: in the stored
//! records and in the bundles a collector opens.
mod common;

use capvault::{
    open_bundle, write_json_lines, Appended, Event, Identity, KeyStoreKind, KeystrokeLevel, Marker,
    Suite, Vault,
};
use common::options;

/// Types "Qz" (HID 0x14, 0x1d) at `level`, seals, opens, returns the JSON Lines.
fn typed_at(level: KeystrokeLevel) -> (Vec<Appended>, String) {
    let d = tempfile::tempdir().unwrap();
    let mut o = options(KeyStoreKind::Keyutils);
    o.policy.keystrokes = level;
    let v = Vault::open(d.path(), "alice", o).unwrap();
    let outcomes = vec![
        v.append_key(1, 0x14, true, Some("Q")).unwrap(),
        v.append_key(2, 0x14, false, Some("Q")).unwrap(),
        v.append_key(3, 0x1d, true, Some("z")).unwrap(),
    ];
    let id = Identity::generate(Suite::X25519);
    let mut out = Vec::new();
    // At level `none` nothing was stored, so there is nothing to seal.
    if let Some(b) = v.seal_next(&id.recipient(), 1 << 20).unwrap() {
        let opened = open_bundle(b.bytes(), &id).unwrap();
        write_json_lines(&opened.events, &mut out, None).unwrap();
    }
    v.close().unwrap();
    (outcomes, String::from_utf8(out).unwrap())
}

#[test]
fn each_keystroke_level_releases_exactly_what_it_promises() {
    let (o, json) = typed_at(KeystrokeLevel::None);
    assert!(o.iter().all(|a| *a == Appended::Filtered));
    assert!(!json.contains("\"key\""), "{json}");

    let (_, json) = typed_at(KeystrokeLevel::Timing);
    assert_eq!(json.matches("\"type\":\"key\"").count(), 3, "{json}");
    assert!(
        !json.contains("key_code") && !json.contains("\"text\"") && !json.contains("category"),
        "{json}"
    );

    let (_, json) = typed_at(KeystrokeLevel::Categories);
    assert_eq!(json.matches("\"category\":\"letter\"").count(), 3, "{json}");
    assert!(
        !json.contains("key_code") && !json.contains("\"Q\"") && !json.contains("\"z\""),
        "{json}"
    );

    let (_, json) = typed_at(KeystrokeLevel::Codes);
    assert!(
        json.contains("\"key_code\":20") && json.contains("\"key_code\":29"),
        "{json}"
    );
    assert!(!json.contains("\"Q\"") && !json.contains("\"z\""), "{json}");

    let (_, json) = typed_at(KeystrokeLevel::Text);
    assert!(
        json.contains("\"text\":\"Q\"") && json.contains("\"key_code\":20"),
        "{json}"
    );
}

#[test]
fn the_default_level_is_categories() {
    assert_eq!(
        capvault::Policy::default().keystrokes,
        KeystrokeLevel::Categories
    );
}

#[test]
fn a_deny_listed_window_stores_nothing_until_focus_moves() {
    let d = tempfile::tempdir().unwrap();
    let mut o = options(KeyStoreKind::Keyutils);
    o.policy.deny_apps = vec!["Signal".into()];
    o.policy.deny_titles = vec!["*payroll*".into()];
    let v = Vault::open(d.path(), "alice", o).unwrap();
    assert_eq!(
        v.append_window_focus(1, "editor", "notes").unwrap(),
        Appended::Stored
    );
    assert_eq!(
        v.append_window_focus(2, "signal", "DENIED-CHAT-TITLE")
            .unwrap(),
        Appended::Filtered
    );
    assert_eq!(v.append_mouse_move(3, 1, 1).unwrap(), Appended::Filtered);
    assert_eq!(
        v.append_screenshot(4, 1, 1, "png", b"DENIED-SHOT").unwrap(),
        Appended::Filtered
    );
    assert_eq!(
        v.append_window_focus(5, "browser", "Q3 Payroll").unwrap(),
        Appended::Filtered
    );
    assert_eq!(
        v.append_window_focus(6, "editor", "notes").unwrap(),
        Appended::Stored
    );
    assert_eq!(v.append_mouse_move(7, 2, 2).unwrap(), Appended::Stored);
    let id = Identity::generate(Suite::X25519);
    let b = v.seal_next(&id.recipient(), 1 << 20).unwrap().unwrap();
    let opened = open_bundle(b.bytes(), &id).unwrap();
    let types: Vec<String> = opened
        .events
        .iter()
        .map(|e| match &e.event {
            Event::Marker { marker, .. } => format!("{marker:?}"),
            other => other.type_name().to_string(),
        })
        .collect();
    assert_eq!(
        types,
        [
            "window_focus",
            &format!("{:?}", Marker::DenyListGapStart),
            &format!("{:?}", Marker::DenyListGapEnd { dropped: 3 }),
            "window_focus",
            "mouse_move"
        ]
    );
    let mut json = Vec::new();
    write_json_lines(&opened.events, &mut json, None).unwrap();
    let json = String::from_utf8(json).unwrap();
    assert!(
        !json.contains("DENIED")
            && !json.to_lowercase().contains("signal")
            && !json.contains("Payroll"),
        "{json}"
    );
    v.close().unwrap();
}

/// A restart while a deny-listed window has focus stores nothing of that window: the
/// vault remembers the gap, and only a focus change to an allowed window ends it.
#[test]
fn a_restart_inside_a_deny_listed_window_keeps_dropping_until_focus_moves() {
    let d = tempfile::tempdir().unwrap();
    let mut o = options(KeyStoreKind::Keyutils);
    o.policy.deny_apps = vec!["Signal".into()];
    let v = Vault::open(d.path(), "alice", o.clone()).unwrap();
    assert_eq!(
        v.append_window_focus(1, "Signal", "a private chat")
            .unwrap(),
        Appended::Filtered
    );
    assert_eq!(v.append_mouse_move(2, 1, 1).unwrap(), Appended::Filtered);
    v.close().unwrap();

    // The agent restarts (a crash would do the same) with the chat still in front.
    let v = Vault::open(d.path(), "alice", o.clone()).unwrap();
    assert_eq!(
        v.append_screenshot(3, 1, 1, "png", b"DENIED-SHOT").unwrap(),
        Appended::Filtered
    );
    assert_eq!(v.append_mouse_move(4, 1, 1).unwrap(), Appended::Filtered);
    assert_eq!(
        v.append_window_focus(5, "editor", "notes").unwrap(),
        Appended::Stored
    );
    assert_eq!(v.append_mouse_move(6, 2, 2).unwrap(), Appended::Stored);
    v.close().unwrap();

    // Out of the gap, a restart stores again at once.
    let v = Vault::open(d.path(), "alice", o.clone()).unwrap();
    assert_eq!(v.append_mouse_move(7, 3, 3).unwrap(), Appended::Stored);
    v.close().unwrap();

    // Back into the gap, then the deny list is removed: nothing is held back.
    let v = Vault::open(d.path(), "alice", o.clone()).unwrap();
    assert_eq!(
        v.append_window_focus(8, "Signal", "another chat").unwrap(),
        Appended::Filtered
    );
    v.close().unwrap();
    let mut o2 = o;
    o2.policy.deny_apps.clear();
    o2.policy.version += 1;
    let v = Vault::open(d.path(), "alice", o2).unwrap();
    assert_eq!(v.append_mouse_move(9, 4, 4).unwrap(), Appended::Stored);
    v.close().unwrap();
}
