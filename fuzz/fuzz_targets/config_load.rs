//! The configuration loader on any text: never a panic — a bad file is an
//! error naming a key, whatever it holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::config::{Config, Mode};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::from_yaml(text, "fuzz.yaml", Mode::Normal);
    }
});
