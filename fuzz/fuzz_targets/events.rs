//! Event decoder (format crate) and the reader's assembler of frames and chunks.
//! Whatever decodes re-encodes to bytes that decode to the same events.
#![no_main]

use capvault_format::{Event, SeqEvent};
use capvault_fuzz::parts;
use libfuzzer_sys::fuzz_target;

fn round_trips(event: &Event) {
    let mut bytes = Vec::new();
    event.encode_into(&mut bytes);
    let (again, rest) = Event::decode_from(&bytes).expect("an encoded event decodes");
    assert!(rest.is_empty());
    assert_eq!(&again, event);
}

fn check_events(events: &[SeqEvent]) {
    for e in events {
        round_trips(&e.event);
    }
}

fuzz_target!(|data: &[u8]| {
    // The raw input as consecutive event bytes.
    let mut rest = data;
    while let Ok((event, r)) = Event::decode_from(rest) {
        assert!(r.len() < rest.len(), "an event decoded from no bytes");
        round_trips(&event);
        rest = r;
    }
    // The input as decrypted records: each part is kind || flags || plaintext.
    let records: Vec<(u8, u8, &[u8])> = parts(data)
        .into_iter()
        .filter(|p| p.len() >= 2)
        .map(|p| (p[0], p[1], &p[2..]))
        .collect();
    if let Ok(events) = capvault::fuzzing::assemble(&records) {
        check_events(&events);
    }
});
