//! Record decoder: the clear header and the AEAD opening under the key of
//! tests/vectors/records.txt. Input: seq (8) || prev_tag (16) || stored value. A header
//! that parses re-encodes to the same bytes; a record that opens seals back to exactly
//! the stored value and opens nowhere else in the chain.
#![no_main]

use capvault::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 24 {
        return;
    }
    let seq = u64::from_be_bytes(data[..8].try_into().unwrap());
    let prev: [u8; 16] = data[8..24].try_into().unwrap();
    let value = &data[24..];
    let header = fuzzing::record_header(value);
    if let Ok(h) = &header {
        assert_eq!(
            &value[..h.len()],
            &h[..],
            "record header re-encodes differently"
        );
    }
    let Some(plain) = fuzzing::open_record(seq, &prev, value) else {
        return;
    };
    assert!(
        header.is_ok(),
        "a record opened with a header that does not parse"
    );
    assert_eq!(fuzzing::reseal_record(seq, &prev, value, &plain), value);
    assert!(fuzzing::open_record(seq.wrapping_add(1), &prev, value).is_none());
    let mut other = prev;
    other[0] ^= 1;
    assert!(fuzzing::open_record(seq, &other, value).is_none());
    // What opened goes to the assembler as the reader does (frame or chunk).
    let kind = value[1];
    let flags = value[2];
    let _ = fuzzing::assemble(&[(kind, flags, &plain)]);
});
