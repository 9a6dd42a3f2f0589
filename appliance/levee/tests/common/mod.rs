//! Set-up the binary's integration tests share: scratch directories, a tiny labelled
//! corpus, and output as text.

#![allow(dead_code)] // each test crate uses its own part of this

use std::path::{Path, PathBuf};

/// A scratch directory, removed when the guard drops.
pub struct Dir(pub PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh, empty `levee-{suite}-{name}-{pid}` under the temp dir.
pub fn scratch(suite: &str, name: &str) -> Dir {
    let dir = std::env::temp_dir().join(format!("levee-{suite}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Dir(dir)
}

/// `spam/` with two messages and `ham/` with one.
pub fn corpus(root: &Path) -> (PathBuf, PathBuf) {
    let (spam, ham) = (root.join("spam"), root.join("ham"));
    std::fs::create_dir_all(&spam).unwrap();
    std::fs::create_dir_all(&ham).unwrap();
    std::fs::write(spam.join("1.eml"), "Subject: cheap pills\r\n\r\nbuy cheap pills now\r\n")
        .unwrap();
    std::fs::write(spam.join("2.eml"), "Subject: pills\r\n\r\ncheap pills\r\n").unwrap();
    std::fs::write(ham.join("3.eml"), "Subject: agenda\r\n\r\nmeeting agenda attached\r\n")
        .unwrap();
    (spam, ham)
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
