//! Config TOML parse and validation (`levee.toml`, also written by the console's editor).
//!
//! Invariant: no panic, whatever the text; an error names a line and column inside the text.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match levee_config::Config::parse(text, "fuzz.toml") {
        Ok(config) => {
            let _ = format!("{config:?}");
        }
        Err(e) => {
            if let levee_config::ConfigError::Invalid { line, .. } = &e {
                assert!(*line >= 1 && *line <= text.lines().count().max(1) + 1, "line {line}: {e}");
            }
            let _ = e.to_string();
        }
    }
});
