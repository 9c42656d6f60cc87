//! Configuration loading on arbitrary text: a clear error or a config, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = passerelle_config::load_str(Some(text), None, &Default::default());
});
