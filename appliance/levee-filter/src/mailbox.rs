//! Messages out of the containers people keep mail in: an mbox file, a Maildir, a zip of a
//! Maildir or of `.eml` files, or one file per message. Pure (bytes in, messages out); the
//! CLI walks folders itself and the console hands over the uploaded bytes, so both read
//! the same formats the same way.

use std::io::Read;

/// Bounds on what one upload may turn into. Work is bounded by the input's size: a zip may
/// not expand past `max_ratio` times its own length, nor past `max_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Messages in one upload.
    pub max_messages: usize,
    /// Total bytes after decompression.
    pub max_bytes: u64,
    /// Decompressed bytes per compressed byte of the archive (text mail deflates ~3-10x).
    pub max_ratio: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_messages: 200_000, max_bytes: 2 << 30, max_ratio: 100 }
    }
}

/// Why an upload could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MailboxError {
    #[error("more than {0} messages")]
    TooManyMessages(usize),
    #[error("expands to more than {0} bytes (a zip bomb, or too big for one upload)")]
    TooLarge(u64),
    #[error("not a readable zip archive: {0}")]
    Zip(String),
}

/// Does this look like an mbox file (it starts with a `From ` separator line)?
pub fn is_mbox(data: &[u8]) -> bool {
    data.starts_with(b"From ")
}

/// Does this look like a zip archive (a local file header or an empty archive's end record)?
pub fn is_zip(data: &[u8]) -> bool {
    data.starts_with(b"PK\x03\x04") || data.starts_with(b"PK\x05\x06")
}

/// Splits an mbox file at its `From ` separator lines (which are dropped); lines quoted as
/// `>From ` (mboxrd, and mboxo's unambiguous case) lose one `>`.
pub fn split_mbox(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"From ") {
            if let Some(m) = current.take() {
                out.push(m);
            }
            current = Some(Vec::new());
            continue;
        }
        // Text before the first separator is not a message of this mbox.
        let Some(m) = current.as_mut() else { continue };
        let quoted = line.iter().take_while(|&&b| b == b'>').count();
        if quoted > 0 && line[quoted..].starts_with(b"From ") {
            m.extend_from_slice(&line[1..]);
        } else {
            m.extend_from_slice(line);
        }
    }
    out.extend(current);
    // The blank line that separates messages belongs to the mbox, not to the message.
    for m in &mut out {
        if m.ends_with(b"\r\n\r\n") {
            m.truncate(m.len() - 2);
        } else if m.ends_with(b"\n\n") {
            m.truncate(m.len() - 1);
        }
    }
    out.retain(|m| !m.iter().all(u8::is_ascii_whitespace));
    out
}

/// Should a file of this path inside a folder or archive be read as mail? Maildir's `tmp/`
/// (messages still being written), hidden files, macOS resource forks and the IMAP servers'
/// bookkeeping files are not mail.
pub fn is_mail_path(path: &str) -> bool {
    let parts: Vec<&str> = path.split(['/', '\\']).filter(|p| !p.is_empty()).collect();
    let Some((name, dirs)) = parts.split_last() else { return false };
    if dirs.iter().any(|d| *d == "tmp" || *d == "__MACOSX" || d.starts_with('.')) {
        return false;
    }
    let lower = name.to_ascii_lowercase();
    !(name.starts_with('.')
        || lower.starts_with("dovecot")
        || lower.starts_with("courierimap")
        || matches!(lower.as_str(), "maildirfolder" | "subscriptions" | "cur" | "new"))
}

/// The messages of one uploaded file: a zip (Maildir or `.eml` files; an mbox inside is split
/// too), an mbox, or else a single message.
pub fn read_upload(data: &[u8], limits: &Limits) -> Result<Vec<Vec<u8>>, MailboxError> {
    let messages = if is_zip(data) {
        read_zip(data, limits)?
    } else if is_mbox(data) {
        split_mbox(data)
    } else if data.iter().all(u8::is_ascii_whitespace) {
        Vec::new()
    } else {
        vec![data.to_vec()]
    };
    if messages.len() > limits.max_messages {
        return Err(MailboxError::TooManyMessages(limits.max_messages));
    }
    Ok(messages)
}

/// The messages of a zip archive, in archive order.
pub fn read_zip(data: &[u8], limits: &Limits) -> Result<Vec<Vec<u8>>, MailboxError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(data))
        .map_err(|e| MailboxError::Zip(e.to_string()))?;
    // Each central directory entry takes at least 46 bytes, so the entry count is already
    // bounded by the size; this refuses early what could not fit anyway.
    if archive.len() > limits.max_messages {
        return Err(MailboxError::TooManyMessages(limits.max_messages));
    }
    let budget =
        limits.max_bytes.min((data.len() as u64).saturating_mul(limits.max_ratio)).max(4096);
    let mut used = 0u64;
    let mut out = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| MailboxError::Zip(e.to_string()))?;
        // A name that is not valid text is still a member; read it under a neutral name.
        let name = entry.name().map(|n| n.into_owned()).unwrap_or_else(|_| "member".to_owned());
        if entry.is_dir() || !is_mail_path(&name) {
            continue;
        }
        // The header's size may lie; read at most what is left of the budget plus one byte.
        let left = budget - used;
        let mut bytes = Vec::new();
        (&mut entry)
            .take(left + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| MailboxError::Zip(e.to_string()))?;
        used += bytes.len() as u64;
        if used > budget {
            return Err(MailboxError::TooLarge(budget));
        }
        if is_mbox(&bytes) && name.to_ascii_lowercase().ends_with(".mbox") {
            out.extend(split_mbox(&bytes));
        } else if !bytes.iter().all(u8::is_ascii_whitespace) {
            out.push(bytes);
        }
        if out.len() > limits.max_messages {
            return Err(MailboxError::TooManyMessages(limits.max_messages));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zip_of(files: &[(&str, &[u8])], method: zip::CompressionMethod) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        for (name, data) in files {
            if name.ends_with('/') {
                w.add_directory(*name, opts).unwrap();
            } else {
                w.start_file(*name, opts).unwrap();
                w.write_all(data).unwrap();
            }
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn mbox_splits_on_from_lines_and_unquotes() {
        let mbox = b"From a@x Mon Jan  1 00:00:00 2024\nSubject: one\n\nbody\n>From here\n\n\
From b@y Mon Jan  1 00:00:01 2024\nSubject: two\n\nbody two\n";
        let m = split_mbox(mbox);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0], b"Subject: one\n\nbody\nFrom here\n");
        assert_eq!(m[1], b"Subject: two\n\nbody two\n");
        assert!(split_mbox(b"").is_empty());
        assert!(split_mbox(b"From x\n\n").is_empty());
    }

    #[test]
    fn upload_kinds() {
        let limits = Limits::default();
        assert_eq!(read_upload(b"Subject: x\r\n\r\nhi\r\n", &limits).unwrap().len(), 1);
        assert_eq!(
            read_upload(b"From a\nS: 1\n\nx\nFrom b\nS: 2\n\ny\n", &limits).unwrap().len(),
            2
        );
        assert!(read_upload(b"  \n", &limits).unwrap().is_empty());
        let maildir = zip_of(
            &[
                ("Inbox/", b""),
                ("Inbox/cur/1:2,S", b"Subject: a\n\nA\n"),
                ("Inbox/new/2", b"Subject: b\n\nB\n"),
                ("Inbox/tmp/3", b"Subject: half written\n"),
                ("Inbox/dovecot-uidlist", b"3 V1 N4\n"),
                ("__MACOSX/Inbox/._1", b"junk"),
                ("box.mbox", b"From a\nS: 1\n\nx\nFrom b\nS: 2\n\ny\n"),
            ],
            zip::CompressionMethod::Deflated,
        );
        let m = read_upload(&maildir, &limits).unwrap();
        assert_eq!(m.len(), 4, "{m:?}");
        assert_eq!(m[0], b"Subject: a\n\nA\n");
    }

    #[test]
    fn limits_hold() {
        let files: Vec<(String, Vec<u8>)> =
            (0..5).map(|i| (format!("{i}.eml"), format!("Subject: {i}\n\nx\n").into())).collect();
        let refs: Vec<(&str, &[u8])> =
            files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
        let z = zip_of(&refs, zip::CompressionMethod::Stored);
        let few = Limits { max_messages: 4, ..Limits::default() };
        assert_eq!(read_upload(&z, &few), Err(MailboxError::TooManyMessages(4)));
        // 8 MiB of one byte deflates to a few KiB: far past the ratio.
        let bomb = zip_of(&[("a.eml", &vec![b'a'; 8 << 20])], zip::CompressionMethod::Deflated);
        assert!(bomb.len() < 100_000);
        assert!(matches!(read_upload(&bomb, &Limits::default()), Err(MailboxError::TooLarge(_))));
        let garbage = b"PK\x03\x04 not really a zip";
        assert!(matches!(read_upload(garbage, &Limits::default()), Err(MailboxError::Zip(_))));
    }

    #[test]
    fn mail_paths() {
        assert!(is_mail_path("Maildir/cur/123:2,S"));
        assert!(is_mail_path("a.eml"));
        assert!(!is_mail_path("Maildir/tmp/123"));
        assert!(!is_mail_path(".DS_Store"));
        assert!(!is_mail_path("Maildir/.Trash/cur/1"));
        assert!(!is_mail_path("dovecot.index"));
    }
}
