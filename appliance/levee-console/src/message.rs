//! What the safe viewer shows of a stored message: a few headers, the text, the HTML
//! (sanitised), and the attachments (by number, for download only).

use mail_parser::{MessageParser, MimeHeaders};

#[derive(Debug, Default)]
pub struct View {
    pub from: String,
    pub to: String,
    pub subject: String,
    pub date: String,
    pub text: Option<String>,
    /// Already sanitised.
    pub html: Option<String>,
    pub attachments: Vec<Attachment>,
}

#[derive(Debug)]
pub struct Attachment {
    pub index: usize,
    pub name: String,
    pub content_type: String,
    pub size: usize,
}

fn addr_list(a: Option<&mail_parser::Address<'_>>) -> String {
    a.map(|a| {
        a.iter()
            .map(|x| match (x.name(), x.address()) {
                (Some(n), Some(e)) => format!("{n} <{e}>"),
                (None, Some(e)) => e.to_string(),
                (Some(n), None) => n.to_string(),
                _ => String::new(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    })
    .unwrap_or_default()
}

pub fn view(raw: &[u8]) -> View {
    let Some(m) = MessageParser::default().parse(raw) else {
        return View { text: Some(String::from_utf8_lossy(raw).into_owned()), ..View::default() };
    };
    let attachments = m
        .attachments()
        .enumerate()
        .map(|(index, p)| Attachment {
            index,
            name: p.attachment_name().unwrap_or("").to_string(),
            content_type: p
                .content_type()
                .map(|c| format!("{}/{}", c.c_type, c.c_subtype.as_deref().unwrap_or("")))
                .unwrap_or_default(),
            size: p.contents().len(),
        })
        .collect();
    let html = m
        .html_part(0)
        .filter(|p| p.is_text_html())
        .and_then(|p| p.text_contents())
        .map(crate::sanitize::sanitize_html);
    View {
        from: addr_list(m.from()),
        to: addr_list(m.to()),
        subject: m.subject().unwrap_or("").to_string(),
        date: m.date().map(|d| d.to_rfc822()).unwrap_or_default(),
        text: m
            .text_part(0)
            .filter(|p| !p.is_text_html())
            .and_then(|p| p.text_contents())
            .map(str::to_string),
        html,
        attachments,
    }
}

/// The bytes of attachment `index`.
pub fn attachment(raw: &[u8], index: usize) -> Option<Vec<u8>> {
    let m = MessageParser::default().parse(raw)?;
    let bytes = m.attachments().nth(index).map(|p| p.contents().to_vec());
    bytes
}

/// A file name safe for a Content-Disposition header and a file system: letters,
/// digits, dot, dash and underscore only, never starting with a dot.
pub fn safe_filename(name: &str, index: usize) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .take(80)
        .collect();
    let cleaned = cleaned.trim_start_matches('.');
    if cleaned.is_empty() {
        format!("attachment-{index}.bin")
    } else {
        cleaned.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"From: \"Eve <script>\" <eve@evil.test>\r\nTo: bob@example.test\r\nSubject: <img src=x onerror=alert(1)>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/html\r\n\r\n<p>Hi<script>window.__pwned=1</script><img src=http://evil.test/t.gif></p>\r\n--B\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"../../evil\\\";.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVpQ\r\n--B--\r\n";

    #[test]
    fn the_view_is_sanitised_and_attachments_are_numbered() {
        let v = view(MSG);
        assert_eq!(v.subject, "<img src=x onerror=alert(1)>", "kept as text; escaped when shown");
        let html = v.html.unwrap();
        assert!(
            html.contains("<p>Hi")
                && !html.contains("script")
                && !html.contains("evil.test/t.gif\""),
            "{html}"
        );
        assert_eq!(v.attachments.len(), 1);
        assert_eq!(attachment(MSG, 0).unwrap(), b"MZP");
        assert!(attachment(MSG, 1).is_none());
        let name = safe_filename(&v.attachments[0].name, 0);
        assert!(!name.contains('/') && !name.contains('"') && !name.starts_with('.'), "{name}");
        assert_eq!(safe_filename("", 3), "attachment-3.bin");
        assert_eq!(safe_filename("...", 3), "attachment-3.bin");
    }
}
