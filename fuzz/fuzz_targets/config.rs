//! Any text as a configuration file: a model or an error naming the key, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate_server::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Paths into device and process files would make the loader read the machine, not the text.
    if text.contains("/dev") || text.contains("/proc") || text.contains("/sys") {
        return;
    }
    match Config::parse(text, "/nonexistent/fuzz.toml") {
        Ok(_) => {}
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
