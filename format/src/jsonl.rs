//! Events as JSON Lines (SPEC section 9): one object per event and line.

use std::io::Write;
use std::path::Path;

use zeroize::Zeroize;

use crate::error::{Error, Result};
use crate::events::{Event, Marker, SeqEvent};
use crate::open::OpenedBundle;

fn marker_fields(m: &Marker) -> (&'static str, Vec<(&'static str, serde_json::Value)>) {
    use serde_json::Value;
    match m {
        Marker::PauseStart { until_us } => {
            ("pause_start", vec![("until_us", Value::from(*until_us))])
        }
        Marker::PauseEnd { dropped } => ("pause_end", vec![("dropped", Value::from(*dropped))]),
        Marker::DenyListGapStart => ("deny_list_gap_start", vec![]),
        Marker::DenyListGapEnd { dropped } => (
            "deny_list_gap_end",
            vec![("dropped", Value::from(*dropped))],
        ),
        Marker::Loss {
            reason,
            records,
            bytes,
        } => (
            "loss",
            vec![
                ("reason", Value::from(reason.name())),
                ("records", Value::from(*records)),
                ("bytes", Value::from(*bytes)),
            ],
        ),
        Marker::PolicyChanged { version } => {
            ("policy_changed", vec![("version", Value::from(*version))])
        }
        Marker::KeyRotated { epoch } => ("key_rotated", vec![("epoch", Value::from(*epoch))]),
    }
}

/// A file-name-safe extension for a screenshot format.
fn blob_ext(format: &str) -> String {
    let ext: String = format
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    if ext.is_empty() {
        "bin".into()
    } else {
        ext
    }
}

fn write_blob(dir: &Path, seq: u64, ext: &str, data: &[u8]) -> Result<String> {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let name = format!(
        "{seq}-{}.{ext}",
        data_encoding::HEXLOWER.encode(&d.as_ref()[..8])
    );
    let path = dir.join(&name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(&path)?.write_all(data)?;
    Ok(path.to_string_lossy().into_owned())
}

/// Writes one JSON object per event and line (SPEC section 9): `seq`, `ts_us`, `type`,
/// then the type's fields under their C API names. Absent optional key fields are
/// left out. Binary payloads (screenshot and custom data) are written as `data_b64`,
/// or, with `blobs_dir`, as files in that directory (owner-only, named
/// `<seq>-<sha256 prefix>.<ext>`) referenced by `data_file`.
///
/// This form carries no attribution (the data subject's own view of their vault);
/// released bundles are written with [`write_bundle_json_lines`].
pub fn write_json_lines<W: Write>(
    events: &[SeqEvent],
    out: &mut W,
    blobs_dir: Option<&Path>,
) -> Result<()> {
    write_lines(events, None, out, blobs_dir)
}

/// Writes the events of an opened bundle as [`write_json_lines`] does, each line also
/// carrying `user` (the data subject), `device_id` and `bundle_id`, so events of
/// several users and devices stay attributable when their files are merged.
pub fn write_bundle_json_lines<W: Write>(
    bundle: &OpenedBundle,
    out: &mut W,
    blobs_dir: Option<&Path>,
) -> Result<()> {
    let device = bundle.header.device_id_hex();
    write_lines(
        &bundle.events,
        Some((&bundle.user, &device, &bundle.id)),
        out,
        blobs_dir,
    )
}

fn write_lines<W: Write>(
    events: &[SeqEvent],
    attribution: Option<(&str, &str, &str)>,
    out: &mut W,
    blobs_dir: Option<&Path>,
) -> Result<()> {
    use serde_json::Value;
    let mut line = Vec::with_capacity(256);
    for SeqEvent { seq, event } in events {
        let mut fields: Vec<(&str, Value)> = vec![
            ("seq", Value::from(*seq)),
            ("ts_us", Value::from(event.ts_us())),
            ("type", Value::from(event.type_name())),
        ];
        let mut blob: Option<(&[u8], String)> = None;
        match event {
            Event::MouseMove { x, y, .. } => {
                fields.push(("x", Value::from(*x)));
                fields.push(("y", Value::from(*y)));
            }
            Event::MouseButton {
                button,
                pressed,
                x,
                y,
                ..
            } => {
                fields.push(("button", Value::from(*button)));
                fields.push(("pressed", Value::from(*pressed)));
                fields.push(("x", Value::from(*x)));
                fields.push(("y", Value::from(*y)));
            }
            Event::Scroll { dx, dy, .. } => {
                fields.push(("dx", Value::from(*dx)));
                fields.push(("dy", Value::from(*dy)));
            }
            Event::Key {
                pressed,
                key_code,
                text,
                category,
                ..
            } => {
                fields.push(("pressed", Value::from(*pressed)));
                if let Some(k) = key_code {
                    fields.push(("key_code", Value::from(*k)));
                }
                if let Some(t) = text {
                    fields.push(("text", Value::from(t.as_str())));
                }
                if let Some(c) = category {
                    fields.push(("category", Value::from(c.name())));
                }
            }
            Event::WindowFocus { app, title, .. } => {
                fields.push(("app", Value::from(app.as_str())));
                fields.push(("title", Value::from(title.as_str())));
            }
            Event::Screenshot {
                width,
                height,
                format,
                data,
                ..
            } => {
                fields.push(("width", Value::from(*width)));
                fields.push(("height", Value::from(*height)));
                fields.push(("format", Value::from(format.as_str())));
                blob = Some((data, blob_ext(format)));
            }
            Event::Custom { kind, data, .. } => {
                fields.push(("kind", Value::from(kind.as_str())));
                blob = Some((data, "bin".into()));
            }
            Event::Marker { marker, .. } => {
                let (name, nums) = marker_fields(marker);
                fields.push(("marker", Value::from(name)));
                fields.extend(nums);
            }
        }
        if let Some((data, ext)) = blob {
            match blobs_dir {
                Some(dir) => {
                    fields.push(("data_file", Value::from(write_blob(dir, *seq, &ext, data)?)))
                }
                None => fields.push(("data_b64", Value::from(data_encoding::BASE64.encode(data)))),
            }
        }
        if let Some((user, device, bundle)) = attribution {
            fields.push(("user", Value::from(user)));
            fields.push(("device_id", Value::from(device)));
            fields.push(("bundle_id", Value::from(bundle)));
        }
        line.clear();
        line.push(b'{');
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                line.push(b',');
            }
            serde_json::to_writer(&mut line, k).map_err(|e| Error::Io(e.to_string()))?;
            line.push(b':');
            serde_json::to_writer(&mut line, v).map_err(|e| Error::Io(e.to_string()))?;
        }
        line.extend_from_slice(b"}\n");
        out.write_all(&line)?;
    }
    line.zeroize();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_field_order_and_names() {
        let events = vec![
            SeqEvent {
                seq: 1,
                event: Event::MouseMove {
                    ts_us: 5,
                    x: 1,
                    y: -2,
                },
            },
            SeqEvent {
                seq: 2,
                event: Event::Key {
                    ts_us: 6,
                    pressed: true,
                    key_code: None,
                    text: None,
                    category: Some(crate::events::KeyCategory::Letter),
                },
            },
            SeqEvent {
                seq: 3,
                event: Event::Marker {
                    ts_us: 7,
                    marker: Marker::PauseEnd { dropped: 4 },
                },
            },
            SeqEvent {
                seq: 4,
                event: Event::Custom {
                    ts_us: 8,
                    kind: "k".into(),
                    data: vec![1, 2, 3],
                },
            },
        ];
        let mut out = Vec::new();
        write_json_lines(&events, &mut out, None).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"seq":1,"ts_us":5,"type":"mouse_move","x":1,"y":-2}"#
        );
        assert_eq!(
            lines[1],
            r#"{"seq":2,"ts_us":6,"type":"key","pressed":true,"category":"letter"}"#
        );
        assert_eq!(
            lines[2],
            r#"{"seq":3,"ts_us":7,"type":"marker","marker":"pause_end","dropped":4}"#
        );
        assert_eq!(
            lines[3],
            r#"{"seq":4,"ts_us":8,"type":"custom","kind":"k","data_b64":"AQID"}"#
        );
    }
}
