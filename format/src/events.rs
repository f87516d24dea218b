//! The event model: what a capture agent records, and its compact binary encoding.
//!
//! Events are encoded with postcard (varint integers, length-prefixed strings), so a
//! mouse move is about 13 bytes. The encoding of one event is its *event bytes*; a frame
//! is a sequence number followed by the event bytes of consecutive events
//! (see docs/FORMAT.md, "Frames").

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::error::{Error, Result};

/// Microseconds since the Unix epoch.
pub type TimestampUs = i64;

/// One captured event. `Debug` prints the type and timestamp only, never content.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize)]
#[non_exhaustive]
pub enum Event {
    /// The pointer moved to (x, y).
    MouseMove {
        /// Capture time.
        ts_us: TimestampUs,
        /// Screen x.
        x: i32,
        /// Screen y.
        y: i32,
    },
    /// A mouse button changed state.
    MouseButton {
        /// Capture time.
        ts_us: TimestampUs,
        /// Button number (1 left, 2 middle, 3 right, ...).
        button: u32,
        /// True when pressed, false when released.
        pressed: bool,
        /// Screen x.
        x: i32,
        /// Screen y.
        y: i32,
    },
    /// A scroll wheel or touchpad scroll.
    Scroll {
        /// Capture time.
        ts_us: TimestampUs,
        /// Horizontal amount.
        dx: i32,
        /// Vertical amount.
        dy: i32,
    },
    /// A key press or release, as far as the keystroke policy lets it be kept.
    Key {
        /// Capture time.
        ts_us: TimestampUs,
        /// True when pressed.
        pressed: bool,
        /// USB HID usage id (keyboard page), kept at the `codes` and `text` levels only.
        key_code: Option<u32>,
        /// Text the key produced, kept at the `text` level only.
        text: Option<String>,
        /// Key category, kept at the `categories` level.
        category: Option<KeyCategory>,
    },
    /// Input focus moved to a window.
    WindowFocus {
        /// Capture time.
        ts_us: TimestampUs,
        /// Application name or bundle id.
        app: String,
        /// Window title.
        title: String,
    },
    /// A screenshot image.
    Screenshot {
        /// Capture time.
        ts_us: TimestampUs,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Image format, for example "png" or "webp".
        format: String,
        /// Encoded image bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// An agent-defined event.
    Custom {
        /// Capture time.
        ts_us: TimestampUs,
        /// Agent-defined kind, for example "clipboard-meta".
        kind: String,
        /// Agent-defined payload.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// A marker written by the vault itself (pause, gaps, losses, policy changes).
    Marker {
        /// Time the vault wrote it.
        ts_us: TimestampUs,
        /// What happened.
        marker: Marker,
    },
}

/// Coarse key classes kept at the `categories` keystroke level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Zeroize)]
#[non_exhaustive]
pub enum KeyCategory {
    /// a-z (any letter).
    Letter,
    /// 0-9.
    Digit,
    /// Space, tab.
    Whitespace,
    /// Punctuation and symbols.
    Punctuation,
    /// Enter / return.
    Enter,
    /// Backspace, delete.
    Editing,
    /// Arrows, home/end, page up/down.
    Navigation,
    /// Shift, control, alt, meta.
    Modifier,
    /// F1-F24.
    Function,
    /// Anything else.
    Other,
}

impl KeyCategory {
    /// Lower-case name used in JSON output.
    pub fn name(self) -> &'static str {
        match self {
            KeyCategory::Letter => "letter",
            KeyCategory::Digit => "digit",
            KeyCategory::Whitespace => "whitespace",
            KeyCategory::Punctuation => "punctuation",
            KeyCategory::Enter => "enter",
            KeyCategory::Editing => "editing",
            KeyCategory::Navigation => "navigation",
            KeyCategory::Modifier => "modifier",
            KeyCategory::Function => "function",
            KeyCategory::Other => "other",
        }
    }
}

/// Vault-written markers. They carry counts and times, never captured content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Zeroize)]
#[non_exhaustive]
pub enum Marker {
    /// Capture paused until the given time.
    PauseStart {
        /// When the pause ends unless resumed earlier.
        until_us: TimestampUs,
    },
    /// Capture resumed; `dropped` events arrived during the pause and were not stored.
    PauseEnd {
        /// Events dropped during the pause.
        dropped: u64,
    },
    /// A deny-listed window had focus; nothing was stored until focus moved.
    DenyListGapStart,
    /// Focus left the deny-listed window.
    DenyListGapEnd {
        /// Events dropped during the gap.
        dropped: u64,
    },
    /// Records were removed before release (retention or byte budget).
    Loss {
        /// Why they were removed.
        reason: LossReason,
        /// Number of records removed.
        records: u64,
        /// Plaintext bytes removed (approximate: ciphertext size less overhead).
        bytes: u64,
    },
    /// The policy changed to this version.
    PolicyChanged {
        /// New policy version.
        version: u32,
    },
    /// A new data-key epoch started.
    KeyRotated {
        /// New epoch number.
        epoch: u32,
    },
}

/// Why records left the vault without being released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Zeroize)]
#[non_exhaustive]
pub enum LossReason {
    /// Older than the retention limit.
    Retention,
    /// Evicted to stay within the byte budget.
    Budget,
}

impl LossReason {
    /// Lower-case name used in JSON output.
    pub fn name(self) -> &'static str {
        match self {
            LossReason::Retention => "retention",
            LossReason::Budget => "budget",
        }
    }
}

impl Event {
    /// Capture time of the event.
    pub fn ts_us(&self) -> TimestampUs {
        match self {
            Event::MouseMove { ts_us, .. }
            | Event::MouseButton { ts_us, .. }
            | Event::Scroll { ts_us, .. }
            | Event::Key { ts_us, .. }
            | Event::WindowFocus { ts_us, .. }
            | Event::Screenshot { ts_us, .. }
            | Event::Custom { ts_us, .. }
            | Event::Marker { ts_us, .. } => *ts_us,
        }
    }

    /// The JSON Lines `type` name (SPEC section 9).
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::MouseMove { .. } => "mouse_move",
            Event::MouseButton { .. } => "mouse_button",
            Event::Scroll { .. } => "scroll",
            Event::Key { .. } => "key",
            Event::WindowFocus { .. } => "window_focus",
            Event::Screenshot { .. } => "screenshot",
            Event::Custom { .. } => "custom",
            Event::Marker { .. } => "marker",
        }
    }

    /// A key event as the agent reports it (before the keystroke policy applies).
    pub fn key(ts_us: TimestampUs, key_code: u32, pressed: bool, text: Option<String>) -> Self {
        Event::Key {
            ts_us,
            pressed,
            key_code: Some(key_code),
            text,
            category: None,
        }
    }

    /// Size of the binary payload (screenshot or custom data), 0 for other events.
    pub fn payload_len(&self) -> usize {
        match self {
            Event::Screenshot { data, .. } | Event::Custom { data, .. } => data.len(),
            _ => 0,
        }
    }

    /// Wipes what the event captured (text and payload) in place: the payload at
    /// memset speed (`Zeroize` on a `Vec<u8>` goes one volatile byte at a time), the
    /// rest with `Zeroize`. Pointer events hold nothing on the heap and are left as they
    /// are (every move of one copies it on the stack anyway).
    #[inline]
    pub fn wipe(&mut self) {
        // Inlined down to this test: the pointer events are most appends.
        if !matches!(
            self,
            Event::MouseMove { .. } | Event::MouseButton { .. } | Event::Scroll { .. }
        ) {
            self.wipe_content();
        }
    }

    #[inline(never)]
    fn wipe_content(&mut self) {
        if let Event::Screenshot { data, .. } | Event::Custom { data, .. } = self {
            drop(crate::secret::PlainBuf::new(std::mem::take(data)));
        }
        self.zeroize();
    }

    /// The most bytes [`Event::encode_into`] appends (exact but for the pointer events),
    /// so that a caller can first make room in memory it wipes: a vector that grows while
    /// encoding hands its old allocation back to the allocator as it is.
    #[inline]
    pub fn encoded_len_max(&self) -> usize {
        match self {
            Event::MouseMove { .. } | Event::MouseButton { .. } | Event::Scroll { .. } => {
                POINTER_EVENT_MAX
            }
            // Counting only: strings and byte strings are measured, not copied.
            _ => postcard::experimental::serialized_size(self)
                .expect("postcard sizing of an in-memory event never fails"),
        }
    }

    /// Appends this event's event bytes to `out`.
    #[inline]
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        // The pointer events are most of what is captured (thousands a second), and
        // postcard writes each varint through a slice copy: they are written here,
        // byte for byte what postcard writes (variant index, then the fields in order,
        // signed integers zigzag-encoded; tested against postcard).
        match *self {
            Event::MouseMove { ts_us, x, y } => push_two_i32(out, 0, ts_us, x, y),
            Event::MouseButton {
                ts_us,
                button,
                pressed,
                x,
                y,
            } => {
                out.reserve(POINTER_EVENT_MAX);
                out.push(1);
                push_i64(out, ts_us);
                push_varint(out, u64::from(button));
                out.push(u8::from(pressed));
                push_i32(out, x);
                push_i32(out, y);
            }
            Event::Scroll { ts_us, dx, dy } => push_two_i32(out, 2, ts_us, dx, dy),
            _ => {
                // postcard to an extending Vec cannot fail for these types.
                let bytes = postcard::to_extend(self, std::mem::take(out))
                    .expect("postcard encoding of an in-memory event never fails");
                *out = bytes;
            }
        }
    }

    /// Moves the payload of a screenshot or custom event out, and appends to `head`
    /// the event's encoding up to the payload, its length included: `head` followed by
    /// the payload returned is what [`Event::encode_into`] appends, without the payload
    /// being copied. The event keeps an empty payload. Returns `None`, and leaves the
    /// event and `head` as they were, for an event without a payload field. Room is made
    /// through a wiping reallocation, so `head` may already hold secret bytes.
    pub fn split_payload(&mut self, head: &mut crate::secret::PlainBuf) -> Option<Vec<u8>> {
        let (Event::Screenshot { data, .. } | Event::Custom { data, .. }) = self else {
            return None;
        };
        let payload = std::mem::take(data);
        // The payload is the variant's last field: postcard writes it as a varint length
        // then the bytes, so the encoding with an empty payload ends in the length 0.
        let before = head.len();
        crate::secret::reserve_zeroizing(head, self.encoded_len_max() + 10);
        self.encode_into(head);
        if head.pop() != Some(0) {
            // Not so (a field after the payload): the caller encodes the event whole.
            head.truncate(before);
            if let Event::Screenshot { data, .. } | Event::Custom { data, .. } = self {
                *data = payload;
            }
            return None;
        }
        push_varint(head, payload.len() as u64);
        Some(payload)
    }

    /// Decodes one event from the front of `bytes`, returning it and the rest.
    pub fn decode_from(bytes: &[u8]) -> Result<(Event, &[u8])> {
        postcard::take_from_bytes(bytes)
            .map_err(|_| Error::tampered("an event inside a record does not decode"))
    }
}

/// An unsigned LEB128 varint, as postcard writes integers.
#[inline]
fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn push_i64(out: &mut Vec<u8>, v: i64) {
    push_varint(out, zigzag64(v));
}

#[inline]
fn push_i32(out: &mut Vec<u8>, v: i32) {
    push_varint(out, u64::from(zigzag32(v)));
}

/// The longest pointer event: variant, timestamp varint, button varint, a bool and two
/// coordinate varints.
const POINTER_EVENT_MAX: usize = 1 + 10 + 5 + 1 + 5 + 5;

/// A variant of a timestamp and two `i32` (a move, a scroll), with its index. Built in
/// a local buffer and appended in one fixed-size copy (then cut to length): a `push`
/// per byte stores the vector's length back to memory each time.
#[inline(always)]
fn push_two_i32(out: &mut Vec<u8>, variant: u8, ts_us: i64, a: i32, b: i32) {
    let mut buf = [0u8; 1 + 10 + 5 + 5];
    buf[0] = variant;
    let n = put_varint(&mut buf, 1, zigzag64(ts_us));
    let n = put_varint(&mut buf, n, u64::from(zigzag32(a)));
    let n = put_varint(&mut buf, n, u64::from(zigzag32(b)));
    let len = out.len();
    out.extend_from_slice(&buf);
    out.truncate(len + n);
}

/// Writes `v` as a varint into `buf` from `at`; returns the position after it.
#[inline(always)]
fn put_varint(buf: &mut [u8; 21], mut at: usize, mut v: u64) -> usize {
    while v >= 0x80 {
        buf[at] = v as u8 | 0x80;
        v >>= 7;
        at += 1;
    }
    buf[at] = v as u8;
    at + 1
}

#[inline(always)]
fn zigzag64(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline(always)]
fn zigzag32(v: i32) -> u32 {
    ((v << 1) ^ (v >> 31)) as u32
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Marker { ts_us, marker } => write!(f, "Event::Marker({ts_us}, {marker:?})"),
            other => write!(
                f,
                "Event::{}({}, <content>)",
                other.type_name(),
                other.ts_us()
            ),
        }
    }
}

/// An event with the sequence number the vault gave it. Event sequence numbers increase
/// by one per stored event; a gap means events were removed (see the loss markers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Zeroize)]
pub struct SeqEvent {
    /// Event sequence number within this user's log.
    pub seq: u64,
    /// The event.
    pub event: Event,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn one_of_each() -> Vec<Event> {
        vec![
            Event::MouseMove {
                ts_us: 1,
                x: 10,
                y: -20,
            },
            Event::MouseButton {
                ts_us: 2,
                button: 1,
                pressed: true,
                x: 3,
                y: 4,
            },
            Event::Scroll {
                ts_us: 3,
                dx: 0,
                dy: -120,
            },
            Event::key(4, 0x04, true, Some("a".into())),
            Event::WindowFocus {
                ts_us: 5,
                app: "editor".into(),
                title: "notes.txt".into(),
            },
            Event::Screenshot {
                ts_us: 6,
                width: 2,
                height: 1,
                format: "png".into(),
                data: vec![1, 2, 3],
            },
            Event::Custom {
                ts_us: 7,
                kind: "k".into(),
                data: vec![],
            },
            Event::Marker {
                ts_us: 8,
                marker: Marker::PauseStart { until_us: 9 },
            },
        ]
    }

    /// A wiped event holds nothing of what was captured; a pointer event is left as is.
    #[test]
    fn a_wiped_event_holds_nothing_captured() {
        let secret = "private chat with the doctor";
        let mut evs = vec![
            Event::WindowFocus {
                ts_us: 1,
                app: secret.into(),
                title: secret.into(),
            },
            Event::key(2, 0x04, true, Some(secret.into())),
            Event::Screenshot {
                ts_us: 3,
                width: 1,
                height: 1,
                format: secret.into(),
                data: secret.as_bytes().repeat(1000),
            },
            Event::Custom {
                ts_us: 4,
                kind: secret.into(),
                data: secret.as_bytes().to_vec(),
            },
        ];
        for e in &mut evs {
            e.wipe();
            let mut bytes = Vec::new();
            e.encode_into(&mut bytes);
            assert!(
                !bytes.windows(7).any(|w| w == &secret.as_bytes()[..7]),
                "{e:?}"
            );
            assert_eq!(e.payload_len(), 0);
        }
        let mut mouse = Event::MouseMove {
            ts_us: 5,
            x: 6,
            y: 7,
        };
        mouse.wipe();
        assert_eq!(
            mouse,
            Event::MouseMove {
                ts_us: 5,
                x: 6,
                y: 7
            }
        );
    }

    /// Room for [`Event::encoded_len_max`] bytes is enough: encoding never moves the
    /// buffer (whose old allocation would be freed unwiped).
    #[test]
    fn encoding_fits_in_the_room_made_for_it() {
        let mut evs = one_of_each();
        evs.push(Event::WindowFocus {
            ts_us: i64::MIN,
            app: "a".repeat(70_000),
            title: "\u{1F512}".repeat(40_000),
        });
        evs.push(Event::Screenshot {
            ts_us: i64::MAX,
            width: u32::MAX,
            height: u32::MAX,
            format: "png".into(),
            data: vec![7; 1 << 20],
        });
        for e in &evs {
            for prefix in [0usize, 8, 100] {
                let mut out = Vec::with_capacity(prefix + e.encoded_len_max());
                out.resize(prefix, 0);
                let (at, room) = (out.as_ptr(), out.capacity());
                e.encode_into(&mut out);
                assert_eq!((out.as_ptr(), out.capacity()), (at, room), "{e:?} moved");
                assert!(out.len() - prefix <= e.encoded_len_max());
            }
        }
    }

    /// The payload moved out after the head is the event's encoding, byte for byte.
    #[test]
    fn a_split_payload_follows_its_head_as_in_the_whole_encoding() {
        let mut evs = one_of_each();
        for len in [0usize, 1, 127, 128, 16_383, 16_384, 1_500_000] {
            evs.push(Event::Screenshot {
                ts_us: -3,
                width: 1920,
                height: u32::MAX,
                format: "webp".into(),
                data: (0..len).map(|i| i as u8).collect(),
            });
            evs.push(Event::Custom {
                ts_us: i64::MAX,
                kind: "k".repeat(len % 300),
                data: vec![0xA5; len],
            });
        }
        let mut split = 0;
        for e in evs {
            let mut whole = vec![9u8; 3];
            e.encode_into(&mut whole);
            let mut taken = e.clone();
            let mut head = crate::secret::PlainBuf::new(vec![9u8; 3]);
            match taken.split_payload(&mut head) {
                Some(payload) => {
                    split += 1;
                    assert_eq!(payload.len(), e.payload_len());
                    head.extend_from_slice(&payload);
                    assert_eq!(*head, whole, "{e:?}");
                    assert_eq!(taken.payload_len(), 0);
                }
                None => {
                    assert_eq!(*head, [9, 9, 9]);
                    assert_eq!(taken, e);
                }
            }
        }
        assert_eq!(split, 16);
    }

    #[test]
    fn every_event_round_trips_back_to_back() {
        let evs = one_of_each();
        let mut buf = Vec::new();
        for e in &evs {
            e.encode_into(&mut buf);
        }
        let mut rest = &buf[..];
        for e in &evs {
            let (d, r) = Event::decode_from(rest).unwrap();
            assert_eq!(&d, e);
            rest = r;
        }
        assert!(rest.is_empty());
    }

    proptest::proptest! {
        /// The hand-written encoding of the pointer events is postcard's, byte for byte.
        #[test]
        fn pointer_events_encode_exactly_as_postcard(
            ts_us: i64, a: i32, b: i32, button: u32, pressed: bool, prefix: Vec<u8>,
        ) {
            for e in [
                Event::MouseMove { ts_us, x: a, y: b },
                Event::MouseButton { ts_us, button, pressed, x: a, y: b },
                Event::Scroll { ts_us, dx: a, dy: b },
            ] {
                let mut ours = prefix.clone();
                e.encode_into(&mut ours);
                let theirs = postcard::to_extend(&e, prefix.clone()).unwrap();
                proptest::prop_assert_eq!(&ours, &theirs);
                proptest::prop_assert!(ours.len() - prefix.len() <= e.encoded_len_max());
                let (back, rest) = Event::decode_from(&ours[prefix.len()..]).unwrap();
                proptest::prop_assert_eq!(back, e);
                proptest::prop_assert!(rest.is_empty());
            }
        }
    }

    #[test]
    fn pointer_events_at_the_integer_limits_encode_as_postcard() {
        for ts_us in [0, 1, -1, 63, 64, -64, -65, i64::MIN, i64::MAX] {
            for v in [0, 1, -1, 63, 64, -64, -65, i32::MIN, i32::MAX] {
                for button in [0, 127, 128, u32::MAX] {
                    for e in [
                        Event::MouseMove {
                            ts_us,
                            x: v,
                            y: v.wrapping_neg(),
                        },
                        Event::MouseButton {
                            ts_us,
                            button,
                            pressed: v > 0,
                            x: v,
                            y: v,
                        },
                        Event::Scroll {
                            ts_us,
                            dx: v,
                            dy: 7,
                        },
                    ] {
                        let mut ours = Vec::new();
                        e.encode_into(&mut ours);
                        assert_eq!(ours, postcard::to_allocvec(&e).unwrap(), "{e:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn mouse_move_is_compact() {
        let mut buf = Vec::new();
        Event::MouseMove {
            ts_us: 1_764_000_000_000_000,
            x: 1919,
            y: 1079,
        }
        .encode_into(&mut buf);
        assert!(buf.len() <= 14, "{}", buf.len());
    }

    #[test]
    fn debug_hides_content() {
        let e = Event::WindowFocus {
            ts_us: 1,
            app: "SecretApp".into(),
            title: "private chat".into(),
        };
        let s = format!("{e:?}");
        assert!(!s.contains("SecretApp") && !s.contains("private"), "{s}");
    }

    #[test]
    fn garbage_does_not_decode_as_an_event() {
        assert!(Event::decode_from(&[0xff, 0xff, 0xff]).is_err());
        assert!(Event::decode_from(&[]).is_err());
    }
}
