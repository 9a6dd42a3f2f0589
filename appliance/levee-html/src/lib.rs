//! HTML as mail carries it, read without a browser.
//!
//! Not a full HTML parser on purpose: mail HTML is often broken, and the filter and the URL
//! checks only need the visible text, the link targets and a few structural facts, in one
//! linear scan with bounded output. Both read character references through the one decoder
//! here ([`decode_entities`]), so a link hidden as `&#x68;ttp` is the same link to both.

/// What a scan of an HTML body found.
#[derive(Debug, Default)]
pub struct HtmlText {
    /// The visible text (tags removed, entities decoded, script/style dropped).
    pub text: String,
    /// Structure markers worth learning from, e.g. `img`, `form`, `a`, `hidden`.
    pub marks: Vec<&'static str>,
    /// `href`/`src`/`action` attribute values.
    pub urls: Vec<String>,
    pub images: usize,
    /// Links as (href, visible text), for link/text mismatch checks.
    pub anchors: Vec<(String, String)>,
    /// The link being read: its href and where its text starts in `text`.
    open_anchor: Option<(String, usize)>,
}

/// Tags whose presence says something about the message's construction.
const MARKED_TAGS: &[&str] = &[
    "a",
    "img",
    "table",
    "font",
    "form",
    "input",
    "script",
    "iframe",
    "style",
    "center",
    "b",
    "map",
    "area",
    "object",
    "embed",
    "base",
    "meta",
    "title",
    "button",
    "svg",
    "blockquote",
    "pre",
    "code",
];

/// Tags that end a visual line: they become whitespace so words do not run together.
const BLOCK_TAGS: &[&str] = &[
    "br",
    "p",
    "div",
    "td",
    "th",
    "tr",
    "li",
    "ul",
    "ol",
    "table",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "title",
    "blockquote",
    "pre",
    "center",
    "body",
    "head",
    "html",
    "span",
    "option",
];

const MAX_URLS: usize = 200;

/// Scans an HTML body once: visible text (tags removed, references decoded, script and style
/// dropped), link targets, images and structure marks.
pub fn strip(html: &str) -> HtmlText {
    let mut out = HtmlText { text: String::with_capacity(html.len() / 2), ..Default::default() };
    let bytes = html.as_bytes();
    let mut i = 0;
    let mut text_start = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'<' => {
                push_text(&mut out.text, &html[text_start..i]);
                i = scan_tag(html, i, &mut out);
                text_start = i;
            }
            _ => i += 1,
        }
    }
    push_text(&mut out.text, &html[text_start..]);
    out.marks.sort_unstable();
    out.marks.dedup();
    out
}

/// Scans the markup starting at `start` (a `<`) and returns where text resumes.
fn scan_tag(html: &str, start: usize, out: &mut HtmlText) -> usize {
    let rest = &html[start..];
    let next = rest.as_bytes().get(1).copied().unwrap_or(b' ');
    if !(next.is_ascii_alphabetic() || next == b'/' || next == b'!') {
        // A '<' in text ("1 < 2"), not markup.
        out.text.push('<');
        return start + 1;
    }
    if rest.starts_with("<!--") {
        out.marks.push("comment");
        return match rest.find("-->") {
            Some(e) => start + e + 3,
            None => html.len(),
        };
    }
    let end = match rest.find('>') {
        Some(e) => start + e + 1,
        None => return html.len(),
    };
    let inner = &html[start + 1..end - 1];
    let closing = inner.starts_with('/');
    let inner = inner.trim_start_matches('/');
    let name_len = inner
        .find(|c: char| c.is_ascii_whitespace() || c == '/' || c == '>')
        .unwrap_or(inner.len());
    let name = inner[..name_len].to_ascii_lowercase();
    if name.is_empty() || !name.as_bytes()[0].is_ascii_alphabetic() {
        if name.is_empty() && !closing && !inner.starts_with('!') {
            // A lone '<' in text: keep it as text.
            out.text.push('<');
            return start + 1;
        }
        return end;
    }
    if let Some(&mark) = MARKED_TAGS.iter().find(|t| **t == name) {
        out.marks.push(mark);
    }
    if BLOCK_TAGS.contains(&name.as_str()) {
        out.text.push(' ');
    }
    if name == "a" {
        if let Some((href, from)) = out.open_anchor.take() {
            if out.anchors.len() < MAX_URLS {
                let text = out.text.get(from..).unwrap_or("").trim().to_owned();
                out.anchors.push((href, text));
            }
        }
        if !closing {
            if let Some(href) = attr(&inner[name_len..], "href") {
                out.open_anchor = Some((link_value(href), out.text.len()));
            }
        }
    }
    if !closing {
        let attrs = &inner[name_len..];
        for key in ["href", "src", "action"] {
            if let Some(v) = attr(attrs, key) {
                if out.urls.len() < MAX_URLS {
                    out.urls.push(link_value(v));
                }
            }
        }
        if name == "img" {
            out.images += 1;
        }
        let lower = attrs.to_ascii_lowercase();
        if lower.contains("display:none") || lower.contains("visibility:hidden") {
            out.marks.push("hidden");
        }
        if tiny_font(&lower) {
            out.marks.push("tiny_font");
        }
        if name == "script" || name == "style" {
            // Their content is code, not text: skip to the closing tag.
            let close = format!("</{name}");
            let after = &html[end..];
            return match find_ci(after, &close) {
                Some(p) => end + p,
                None => html.len(),
            };
        }
    }
    end
}

/// The host of a URL-like string (`https://a.example/x`, `www.a.example`), lowercased.
pub fn url_host(s: &str) -> Option<String> {
    let s = s.trim().to_ascii_lowercase();
    let rest = match s.split_once("://") {
        Some((scheme, rest)) if scheme == "http" || scheme == "https" => rest,
        Some(_) => return None,
        None if s.starts_with("www.") => s.as_str(),
        None => return None,
    };
    let end = rest.find(['/', '?', '#', ':', ' ']).unwrap_or(rest.len());
    let host = rest[..end].rsplit('@').next().unwrap_or("").trim_end_matches('.');
    (host.contains('.') && !host.is_empty()).then(|| host.to_owned())
}

/// Whether a tag's (lower-cased) attributes shrink its text below reading size: `font-size`
/// of 0-3px/pt, `xx-small`, or `<font size=1>`. Hidden filler text ("word salad" meant for
/// filters, not readers) is set this way.
fn tiny_font(attrs: &str) -> bool {
    if let Some(p) = attrs.find("font-size") {
        let v = attrs[p + 9..].trim_start_matches([':', ' ']);
        if v.starts_with("xx-small") || v.starts_with("x-small") {
            return true;
        }
        let digits = v.bytes().take_while(u8::is_ascii_digit).count();
        let unit = &v[digits..];
        if let Ok(n) = v[..digits].parse::<u32>() {
            if n == 0 || (n <= 3 && (unit.starts_with("px") || unit.starts_with("pt"))) {
                return true;
            }
        }
    }
    matches!(attr(attrs, "size"), Some("1") | Some("-2") | Some("-3"))
}

/// The value of attribute `key` in a tag's attribute text, quoted or not.
fn attr<'a>(attrs: &'a str, key: &str) -> Option<&'a str> {
    let lower = attrs.to_ascii_lowercase();
    let mut from = 0;
    while let Some(p) = lower[from..].find(key) {
        let at = from + p;
        from = at + key.len();
        let before_ok = at == 0 || !lower.as_bytes()[at - 1].is_ascii_alphanumeric();
        let rest = lower[from..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let vstart = attrs.len() - rest.len() + 1;
        let v = attrs[vstart..].trim_start();
        return Some(match v.chars().next() {
            Some(q @ ('"' | '\'')) => {
                let v = &v[1..];
                &v[..v.find(q).unwrap_or(v.len())]
            }
            _ => &v[..v.find(|c: char| c.is_ascii_whitespace()).unwrap_or(v.len())],
        });
    }
    None
}

fn find_ci(hay: &str, needle: &str) -> Option<usize> {
    let n = needle.len();
    hay.as_bytes().windows(n).position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

fn push_text(out: &mut String, raw: &str) {
    if raw.contains('&') {
        out.push_str(&decode_entities(raw));
    } else {
        out.push_str(raw);
    }
}

/// Decodes HTML character references: numeric ones (`&#104;`, `&#x68;`, with or without the
/// `;`, as browsers accept them) and the named ones that matter for text and links. Unknown
/// references stay as written.
pub fn decode_entities(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        match decode_entity(rest) {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// One character reference at the start of `s` ("&#x68;", "&#104", "&amp;") and its length.
fn decode_entity(s: &str) -> Option<(char, usize)> {
    let body = &s[1..];
    if let Some(num) = body.strip_prefix('#') {
        let (digits, radix, skip) = match num.strip_prefix(['x', 'X']) {
            Some(hex) => (hex, 16, 3),
            None => (num, 10, 2),
        };
        let len = digits.bytes().take(8).take_while(|b| (*b as char).is_digit(radix)).count();
        if len == 0 {
            return None;
        }
        let c = char::from_u32(u32::from_str_radix(&digits[..len], radix).ok()?)?;
        // Browsers accept a missing semicolon on numeric references; spammers rely on it.
        let semi = usize::from(digits[len..].starts_with(';'));
        return Some((c, skip + len + semi));
    }
    for (name, c) in [
        ("amp;", '&'),
        ("lt;", '<'),
        ("gt;", '>'),
        ("quot;", '"'),
        ("apos;", '\''),
        ("nbsp;", ' '),
        ("colon;", ':'),
        ("sol;", '/'),
        ("period;", '.'),
        ("commat;", '@'),
    ] {
        // Compared as bytes: the text after `&` may be any UTF-8, and slicing it as a str
        // could split a character.
        if body
            .as_bytes()
            .get(..name.len())
            .is_some_and(|b| b.eq_ignore_ascii_case(name.as_bytes()))
        {
            return Some((c, 1 + name.len()));
        }
    }
    None
}

/// A link target as a browser reads an attribute value: ASCII tabs and line breaks inside it
/// are dropped (mail folds long attributes across lines), surrounding spaces trimmed, then
/// character references decoded.
fn link_value(v: &str) -> String {
    let joined: String = v.chars().filter(|c| !matches!(c, '\t' | '\n' | '\r')).collect();
    decode_entities(joined.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_tags_scripts_and_comments() {
        let h = strip(
            "<html><head><style>p{color:red}</style><script>var x=1;</script></head>\
             <body><p>Hello&nbsp;<b>wor</b>ld</p><!-- hidden --><a href=\"http://evil.example/x\">click</a>\
             <img src='http://img.example/a.png'></body></html>",
        );
        let words: Vec<&str> = h.text.split_whitespace().collect();
        assert_eq!(words, ["Hello", "world", "click"]);
        assert!(h.marks.contains(&"a") && h.marks.contains(&"img") && h.marks.contains(&"comment"));
        assert_eq!(h.urls, ["http://evil.example/x", "http://img.example/a.png"]);
        assert_eq!(h.images, 1);
        assert_eq!(h.anchors, [("http://evil.example/x".to_owned(), "click".to_owned())]);
    }

    #[test]
    fn entities() {
        assert_eq!(decode_entities("a &amp; b &#65;&#x42; &bogus; &"), "a & b AB &bogus; &");
        assert_eq!(
            decode_entities("&gt;\u{a0}\u{a0}\u{a0}\u{a0}\u{a0} x;"),
            ">\u{a0}\u{a0}\u{a0}\u{a0}\u{a0} x;"
        );
    }

    #[test]
    fn references_as_browsers_read_them() {
        // Numeric references without the `;`, and the named forms used to hide a scheme.
        assert_eq!(decode_entities("&#104ttp&#x3a;//a&period;example"), "http://a.example");
        assert_eq!(decode_entities("x&colon;&sol;&sol;y &commat; &AMP;"), "x://y @ &");
        assert_eq!(decode_entities("&#0; &#1114112; &#x;"), "\0 &#1114112; &#x;");
        // Multi-byte text right after `&` is not a reference (and must not split a character).
        assert_eq!(decode_entities("&日本語 &é; &am"), "&日本語 &é; &am");
    }

    #[test]
    fn folded_link_targets_are_joined() {
        let h = strip("<a href=\"http://img.relacio\r\n namentovivo.example/x\">go</a>");
        assert_eq!(h.urls, ["http://img.relacio namentovivo.example/x"]);
        let h = strip("<a href=\" http://a.exam\tple/\n\">go</a><img src='&#x68;ttp://b.example'>");
        assert_eq!(h.urls, ["http://a.example/", "http://b.example"]);
    }

    #[test]
    fn tiny_text_is_marked() {
        for tag in [
            "<p style=\"font-size: xx-small\">",
            "<span style='font-size:1px'>",
            "<div style=\"color:#fff;font-size:0\">",
            "<font size=1>",
        ] {
            assert!(strip(tag).marks.contains(&"tiny_font"), "{tag}");
        }
        for tag in ["<p style=\"font-size: 12px\">", "<font size=3>", "<p style='font-size:10pt'>"]
        {
            assert!(!strip(tag).marks.contains(&"tiny_font"), "{tag}");
        }
    }

    #[test]
    fn broken_markup_does_not_panic() {
        for s in ["<", "<a href=", "<!--", "<script>", "a < b", "<a href='x", "&#xffffffff;"] {
            let _ = strip(s);
        }
        assert!(strip("1 < 2").text.contains('<'));
    }
}
