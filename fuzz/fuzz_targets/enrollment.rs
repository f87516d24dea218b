//! Enrollment records. An accepted record carries a valid signature and prints to the
//! one canonical line, which parses to the same record.
#![no_main]

use capvault_format::{verify_ed25519, EnrollmentRecord};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rec) = EnrollmentRecord::from_json(text) else {
        return;
    };
    let line = rec.to_json();
    let again = EnrollmentRecord::from_json(&line).expect("printed record parses");
    assert_eq!(again.to_json(), line);
    assert_eq!(
        (again.device_id(), again.device_key(), again.created_us()),
        (rec.device_id(), rec.device_key(), rec.created_us())
    );
    // The signature in the canonical line verifies over the documented message.
    let j: serde_json::Value = serde_json::from_str(&line).unwrap();
    let sig = hex(j["signature"].as_str().unwrap());
    let mut msg = b"capvault enrollment v1\0".to_vec();
    msg.extend_from_slice(&rec.device_id());
    msg.extend_from_slice(&rec.device_key());
    msg.extend_from_slice(&rec.created_us().to_be_bytes());
    verify_ed25519(&rec.device_key(), &msg, &sig).expect("accepted signature verifies");
});

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
