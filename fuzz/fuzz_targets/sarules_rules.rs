//! SpamAssassin rule-file text: parse, translate Perl regexes, compile and check one message.
//! Rule files come from `sa-update` and from the console's upload of local rules.
//!
//! The loader reads directories, so each input is written as the one `.cf` file of a
//! per-process directory (on tmpfs in CI this costs microseconds).
//!
//! Invariant: no panic; a load error or a skipped rule is fine, a crash or a hang is not.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use levee_sarules::SaMessage;
use libfuzzer_sys::fuzz_target;

const MESSAGE: &[u8] = b"Received: from a.example (a.example [192.0.2.7])\r\n\tby mx.example; \
Thu, 1 Jan 2026 00:00:00 +0000\r\nFrom: \"Win\" <win@freemail.example>\r\nTo: you@example.test\r\n\
Subject: FREE money!!!\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n\
Click http://win.example/x now\r\n--b\r\nContent-Type: text/html\r\n\r\n\
<p>Click <a href=\"http://win.example/x\">here</a></p>\r\n--b--\r\n";

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("levee-fuzz-sarules-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    std::fs::write(dir.join("fuzz.cf"), data).expect("write rule file");
    let Ok((set, _report)) = levee_sarules::load_dirs(&[dir.as_path()]) else { return };
    let hits = set.check(&SaMessage::parse(MESSAGE));
    assert!(hits.len() <= set.len(), "more hits than rules");
});
