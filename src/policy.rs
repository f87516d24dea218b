//! The privacy policy, enforced inside the vault: keystroke minimisation, deny lists,
//! screenshots on/off, the pause cap, retention and the byte budget. An agent cannot
//! bypass it: every event passes [`PolicyGate::admit`] before it reaches the framer.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use capvault_format::{Event, KeyCategory, Marker};

/// What is kept of each keystroke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeystrokeLevel {
    /// Keystrokes are not stored at all.
    None,
    /// Only that a key went down or up, and when.
    Timing,
    /// Timing plus a coarse category (letter, digit, punctuation, ...). The default: the
    /// most private level that still records typing activity.
    #[default]
    Categories,
    /// Timing plus the key code (which key), but not the text it produced.
    Codes,
    /// Everything the agent reports, including the text typed.
    Text,
}

/// What happens when the byte budget would be exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BudgetAction {
    /// Evict the oldest unreleased records, leaving a loss marker (default).
    #[default]
    EvictOldest,
    /// Refuse new events with a storage-full error.
    Refuse,
}

/// The policy. Its `version` and `purpose` are bound into every record's associated data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Policy {
    /// Policy version, bound into every record (default 1). Change it when the policy changes.
    pub version: u32,
    /// Why data is captured, bound into every record and bundle (default "activity-capture").
    pub purpose: String,
    /// Keystroke minimisation level (default `categories`).
    pub keystrokes: KeystrokeLevel,
    /// Applications (case-insensitive exact names) during whose focus nothing is stored.
    pub deny_apps: Vec<String>,
    /// Window-title patterns (case-insensitive, `*` matches any run of characters) during
    /// whose focus nothing is stored.
    pub deny_titles: Vec<String>,
    /// Whether screenshots are stored at all (default true).
    pub screenshots: bool,
    /// Longest allowed pause, in seconds (default 1800).
    pub max_pause_secs: u64,
    /// Records older than this many seconds are removed even if never released
    /// (default 30 days; 0 keeps them until released).
    pub retention_secs: u64,
    /// Largest on-disk size of this user's log in bytes (default 0 = no budget).
    pub budget_bytes: u64,
    /// What happens when the budget would be exceeded.
    pub on_budget: BudgetAction,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            version: 1,
            purpose: "activity-capture".into(),
            keystrokes: KeystrokeLevel::default(),
            deny_apps: Vec::new(),
            deny_titles: Vec::new(),
            screenshots: true,
            max_pause_secs: 30 * 60,
            retention_secs: 30 * 24 * 3600,
            budget_bytes: 0,
            on_budget: BudgetAction::default(),
        }
    }
}

impl Policy {
    /// Checks values that types alone cannot express.
    pub fn validate(&self) -> Result<()> {
        if self.version == 0 {
            return Err(Error::invalid("policy.version must be at least 1"));
        }
        if self.purpose.is_empty() || self.purpose.len() > 256 {
            return Err(Error::invalid("policy.purpose must be 1 to 256 bytes"));
        }
        if self.max_pause_secs == 0 || self.max_pause_secs > 7 * 24 * 3600 {
            return Err(Error::invalid(
                "policy.max_pause_secs must be between 1 and 604800",
            ));
        }
        if self.budget_bytes != 0 && self.budget_bytes < 1024 * 1024 {
            return Err(Error::invalid(
                "policy.budget_bytes must be 0 (none) or at least 1048576",
            ));
        }
        Ok(())
    }

    fn denies(&self, app: &str, title: &str) -> bool {
        self.deny_apps.iter().any(|a| a.eq_ignore_ascii_case(app))
            || self.deny_titles.iter().any(|p| glob_match(p, title))
    }
}

/// What the gate decided about one event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Store the (possibly minimised) event, after these markers.
    Store(Vec<Marker>),
    /// Store only these markers (possibly none); the event itself is dropped.
    Drop(Vec<Marker>),
}

/// Applies a policy to a stream of events, remembering deny-list focus.
#[derive(Debug)]
pub(crate) struct PolicyGate {
    policy: Policy,
    in_denied_window: bool,
    dropped_in_gap: u64,
}

impl PolicyGate {
    pub(crate) fn new(policy: Policy) -> Self {
        PolicyGate {
            policy,
            in_denied_window: false,
            dropped_in_gap: 0,
        }
    }

    /// A gate that starts inside a deny-listed window, as the vault was when it was
    /// last closed: events are dropped until focus moves to a window the policy allows.
    /// A policy without deny lists has nothing to hold back.
    pub(crate) fn resumed(policy: Policy, in_denied_window: bool) -> Self {
        let in_denied_window =
            in_denied_window && !(policy.deny_apps.is_empty() && policy.deny_titles.is_empty());
        PolicyGate {
            in_denied_window,
            ..PolicyGate::new(policy)
        }
    }

    /// Whether focus is in a deny-listed window (what the vault stores across restarts).
    pub(crate) fn in_denied_window(&self) -> bool {
        self.in_denied_window
    }

    /// Decides whether `event` is stored and minimises it in place.
    #[inline]
    pub(crate) fn admit(&mut self, event: &mut Event) -> Admission {
        let mut markers = Vec::new();
        if let Event::WindowFocus { app, title, .. } = event {
            let denied = self.policy.denies(app, title);
            match (self.in_denied_window, denied) {
                (false, true) => {
                    self.in_denied_window = true;
                    self.dropped_in_gap = 0;
                    // The marker notes the gap without naming the app.
                    return Admission::Drop(vec![Marker::DenyListGapStart]);
                }
                (true, true) => {
                    self.dropped_in_gap += 1;
                    return Admission::Drop(Vec::new());
                }
                (true, false) => {
                    self.in_denied_window = false;
                    markers.push(Marker::DenyListGapEnd {
                        dropped: self.dropped_in_gap,
                    });
                }
                (false, false) => {}
            }
        } else if self.in_denied_window {
            self.dropped_in_gap += 1;
            return Admission::Drop(Vec::new());
        }
        match event {
            Event::Screenshot { .. } if !self.policy.screenshots => Admission::Drop(markers),
            Event::Key {
                key_code,
                text,
                category,
                ..
            } => {
                match self.policy.keystrokes {
                    KeystrokeLevel::None => return Admission::Drop(markers),
                    KeystrokeLevel::Timing => {
                        *key_code = None;
                        forget(text);
                        *category = None;
                    }
                    KeystrokeLevel::Categories => {
                        *category = Some(categorize(*key_code, text.as_deref()));
                        *key_code = None;
                        forget(text);
                    }
                    KeystrokeLevel::Codes => forget(text),
                    KeystrokeLevel::Text => {}
                }
                Admission::Store(markers)
            }
            _ => Admission::Store(markers),
        }
    }
}

/// Category of a key from its USB HID usage id (keyboard page 0x07), or from the text it
/// produced when the code is unknown.
pub(crate) fn categorize(key_code: Option<u32>, text: Option<&str>) -> KeyCategory {
    match key_code {
        Some(0x04..=0x1d) => KeyCategory::Letter,
        Some(0x1e..=0x27) | Some(0x59..=0x62) => KeyCategory::Digit,
        Some(0x28) | Some(0x58) => KeyCategory::Enter,
        Some(0x2a) | Some(0x4c) => KeyCategory::Editing,
        Some(0x2b) | Some(0x2c) => KeyCategory::Whitespace,
        Some(0x2d..=0x38) | Some(0x54..=0x57) | Some(0x63) | Some(0x64) => KeyCategory::Punctuation,
        Some(0x3a..=0x45) | Some(0x68..=0x73) => KeyCategory::Function,
        Some(0x4a) | Some(0x4b) | Some(0x4d..=0x52) => KeyCategory::Navigation,
        Some(0xe0..=0xe7) => KeyCategory::Modifier,
        _ => match text.and_then(|t| t.chars().next()) {
            Some(c) if c.is_alphabetic() => KeyCategory::Letter,
            Some(c) if c.is_numeric() => KeyCategory::Digit,
            Some('\n') | Some('\r') => KeyCategory::Enter,
            Some(c) if c.is_whitespace() => KeyCategory::Whitespace,
            Some(c) if c.is_ascii_punctuation() => KeyCategory::Punctuation,
            _ => KeyCategory::Other,
        },
    }
}

/// Case-insensitive glob with `*` only.
fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    // Classic two-pointer wildcard match with backtracking to the last star.
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Drops key text the policy does not keep, wiping it first.
fn forget(text: &mut Option<String>) {
    if let Some(mut t) = text.take() {
        zeroize::Zeroize::zeroize(&mut t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: u32, text: &str) -> Event {
        Event::key(1, code, true, Some(text.into()))
    }

    #[test]
    fn each_keystroke_level_keeps_exactly_what_it_promises() {
        let cases = [
            (KeystrokeLevel::Timing, None, None, None),
            (
                KeystrokeLevel::Categories,
                None,
                None,
                Some(KeyCategory::Letter),
            ),
            (KeystrokeLevel::Codes, Some(0x04), None, None),
            (
                KeystrokeLevel::Text,
                Some(0x04),
                Some("a".to_string()),
                None,
            ),
        ];
        for (level, want_code, want_text, want_cat) in cases {
            let mut gate = PolicyGate::new(Policy {
                keystrokes: level,
                ..Policy::default()
            });
            let mut ev = key(0x04, "a");
            assert_eq!(gate.admit(&mut ev), Admission::Store(vec![]));
            let Event::Key {
                key_code,
                text,
                category,
                ..
            } = ev
            else {
                panic!()
            };
            assert_eq!(
                (key_code, text, category),
                (want_code, want_text, want_cat),
                "{level:?}"
            );
        }
        let mut gate = PolicyGate::new(Policy {
            keystrokes: KeystrokeLevel::None,
            ..Policy::default()
        });
        assert_eq!(gate.admit(&mut key(0x04, "a")), Admission::Drop(vec![]));
    }

    #[test]
    fn deny_listed_focus_drops_everything_until_focus_moves() {
        let policy = Policy {
            deny_apps: vec!["Signal".into()],
            deny_titles: vec!["*payroll*".into()],
            ..Policy::default()
        };
        let mut gate = PolicyGate::new(policy);
        let focus = |app: &str, title: &str| Event::WindowFocus {
            ts_us: 1,
            app: app.into(),
            title: title.into(),
        };
        assert_eq!(
            gate.admit(&mut focus("editor", "a.txt")),
            Admission::Store(vec![])
        );
        assert_eq!(
            gate.admit(&mut focus("signal", "chat")),
            Admission::Drop(vec![Marker::DenyListGapStart])
        );
        let mut shot = Event::Screenshot {
            ts_us: 2,
            width: 1,
            height: 1,
            format: "png".into(),
            data: vec![1],
        };
        assert_eq!(gate.admit(&mut shot), Admission::Drop(vec![]));
        assert_eq!(gate.admit(&mut key(0x04, "a")), Admission::Drop(vec![]));
        assert_eq!(
            gate.admit(&mut focus("browser", "Q3 Payroll - Sheets")),
            Admission::Drop(vec![])
        );
        assert_eq!(
            gate.admit(&mut focus("editor", "a.txt")),
            Admission::Store(vec![Marker::DenyListGapEnd { dropped: 3 }])
        );
        assert_eq!(gate.admit(&mut shot), Admission::Store(vec![]));
    }

    #[test]
    fn screenshots_off_drops_screenshots() {
        let mut gate = PolicyGate::new(Policy {
            screenshots: false,
            ..Policy::default()
        });
        let mut shot = Event::Screenshot {
            ts_us: 2,
            width: 1,
            height: 1,
            format: "png".into(),
            data: vec![1],
        };
        assert_eq!(gate.admit(&mut shot), Admission::Drop(vec![]));
    }

    #[test]
    fn glob() {
        assert!(glob_match("*bank*", "My BANK account"));
        assert!(glob_match("exact", "EXACT"));
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match("a*b*c", "a123b456c"));
        assert!(!glob_match("a*b*c", "a123b456"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn categories_from_codes_and_text() {
        assert_eq!(categorize(Some(0x1e), None), KeyCategory::Digit);
        assert_eq!(categorize(Some(0xe1), None), KeyCategory::Modifier);
        assert_eq!(categorize(None, Some("é")), KeyCategory::Letter);
        assert_eq!(categorize(None, Some("!")), KeyCategory::Punctuation);
        assert_eq!(categorize(None, None), KeyCategory::Other);
    }
}
