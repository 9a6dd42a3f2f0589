//! A strict allowlist HTML sanitiser for the quarantine's safe view.
//!
//! It does not repair the input; it *re-writes* it: text is re-escaped, an allowed tag
//! is emitted fresh with only the attributes we generate ourselves, and every other tag,
//! comment and declaration is dropped. Nothing from the input reaches the output except
//! escaped text, so a parser differential cannot smuggle markup through. Content of
//! `script`, `style` and similar elements is dropped entirely. Links lose their target
//! (shown as text instead); images survive only as inline `data:` images, so nothing
//! remote is ever fetched. The page is then shown in a sandboxed iframe under a CSP
//! that forbids scripts and remote loads anyway: two independent walls.

/// Elements kept (without their attributes).
const ALLOWED: &[&str] = &[
    "p",
    "br",
    "div",
    "span",
    "b",
    "strong",
    "i",
    "em",
    "u",
    "s",
    "strike",
    "sub",
    "sup",
    "small",
    "big",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "ul",
    "ol",
    "li",
    "dl",
    "dt",
    "dd",
    "table",
    "thead",
    "tbody",
    "tfoot",
    "tr",
    "td",
    "th",
    "caption",
    "blockquote",
    "pre",
    "code",
    "hr",
    "center",
    "a",
    "img",
    "font",
    "tt",
    "abbr",
    "address",
    "cite",
    "q",
];
const VOID: &[&str] = &["br", "hr", "img"];
/// Elements open at once; deeper ones are dropped.
const MAX_OPEN: usize = 100;
/// Elements whose whole content is dropped.
const DROP_CONTENT: &[&str] = &[
    "script",
    "style",
    "head",
    "title",
    "noscript",
    "iframe",
    "frame",
    "frameset",
    "object",
    "embed",
    "applet",
    "template",
    "svg",
    "math",
    "textarea",
    "select",
    "xmp",
    "plaintext",
    "noembed",
    "noframes",
    "audio",
    "video",
    "canvas",
    "form",
];

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Decodes the few entities attribute values in mail use, enough to read a URL.
fn decode_entities(s: &str) -> String {
    s.replace("&amp;", "&")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

/// Text is escaped, except well-formed character references, which stay as they are:
/// in text they decode to characters, never to markup.
fn push_text(out: &mut String, text: &str) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < text.len() {
        let c = text[i..].chars().next().unwrap_or('\u{FFFD}');
        if c == '&' {
            let rest = &b[i + 1..];
            let len = rest.iter().take(32).position(|&x| x == b';');
            let ok = len.is_some_and(|n| {
                let name = &rest[..n];
                n > 0
                    && (name.iter().all(|x| x.is_ascii_alphanumeric())
                        || (name[0] == b'#'
                            && n > 1
                            && (name[1..].iter().all(|x| x.is_ascii_digit())
                                || (n > 2
                                    && (name[1] == b'x' || name[1] == b'X')
                                    && name[2..].iter().all(|x| x.is_ascii_hexdigit())))))
            });
            if ok {
                out.push('&');
            } else {
                out.push_str("&amp;");
            }
        } else {
            match c {
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str("&#39;"),
                '\0' => {}
                c => out.push(c),
            }
        }
        i += c.len_utf8();
    }
}

struct Tag {
    name: String,
    closing: bool,
    attrs: Vec<(String, String)>,
    /// Byte offset just past the tag.
    end: usize,
}

/// Parses a tag starting at `s[0] == '<'`; `None` if this `<` does not start one (then
/// it is text).
fn parse_tag(s: &str) -> Option<Tag> {
    let b = s.as_bytes();
    let mut i = 1;
    let closing = b.get(1) == Some(&b'/');
    if closing {
        i += 1;
    }
    let start = i;
    while i < b.len() && (b[i].is_ascii_alphanumeric()) {
        i += 1;
    }
    if i == start || !b[start].is_ascii_alphabetic() {
        return None;
    }
    let name = s[start..i].to_ascii_lowercase();
    let mut attrs = Vec::new();
    loop {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        if i >= b.len() {
            // Unterminated: the rest is swallowed as this tag (a browser would do the same).
            return Some(Tag { name, closing, attrs, end: b.len() });
        }
        if b[i] == b'>' {
            return Some(Tag { name, closing, attrs, end: i + 1 });
        }
        let an = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && !matches!(b[i], b'=' | b'>' | b'/') {
            i += 1;
        }
        let attr = s[an..i].to_ascii_lowercase();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let q = b[i];
                let vs = i + 1;
                let ve = b[vs..].iter().position(|&x| x == q).map(|p| vs + p).unwrap_or(b.len());
                value = s[vs..ve].to_string();
                i = (ve + 1).min(b.len());
            } else {
                let vs = i;
                while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'>' {
                    i += 1;
                }
                value = s[vs..i].to_string();
            }
        }
        if !attr.is_empty() {
            attrs.push((attr, decode_entities(&value)));
        }
    }
}

fn attr<'a>(t: &'a Tag, name: &str) -> Option<&'a str> {
    t.attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Inline images only, and only raster formats (an SVG can carry script).
fn safe_data_image(src: &str) -> bool {
    let l = src.trim().to_ascii_lowercase();
    [
        "data:image/png;base64,",
        "data:image/gif;base64,",
        "data:image/jpeg;base64,",
        "data:image/webp;base64,",
    ]
    .iter()
    .any(|p| l.starts_with(p))
        && l.bytes().all(|c| c.is_ascii_alphanumeric() || b"+/=:;,-".contains(&c))
}

fn digits(v: &str) -> Option<&str> {
    (!v.is_empty() && v.len() <= 3 && v.bytes().all(|c| c.is_ascii_digit())).then_some(v)
}

/// Sanitises an HTML body into a fragment that is safe to put in a page.
pub fn sanitize_html(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    let mut open: Vec<String> = Vec::new();
    // Links whose target is shown after their text when they close.
    let mut hrefs: Vec<Option<String>> = Vec::new();
    let mut i = 0;
    while i < input.len() {
        let rest = &input[i..];
        let Some(lt) = rest.find('<') else {
            push_text(&mut out, rest);
            break;
        };
        push_text(&mut out, &rest[..lt]);
        i += lt;
        let rest = &input[i..];
        if let Some(comment) = rest.strip_prefix("<!--") {
            i += comment.find("-->").map(|p| p + 7).unwrap_or(rest.len());
            continue;
        }
        if rest.starts_with("<!") || rest.starts_with("<?") || rest.starts_with("</!") {
            i += rest.find('>').map(|p| p + 1).unwrap_or(rest.len());
            continue;
        }
        let Some(tag) = parse_tag(rest) else {
            out.push_str("&lt;");
            i += 1;
            continue;
        };
        i += tag.end;
        let name = tag.name.as_str();
        if DROP_CONTENT.contains(&name) {
            if !tag.closing {
                // Skip to the matching close tag (case-insensitive), or to the end. Searched
                // in place: a lowercased copy of the rest per tag made `<svg></svg>` repeated
                // quadratic.
                let rest = &input.as_bytes()[i..];
                let close = format!("</{name}");
                i += find_ci(rest, close.as_bytes())
                    .map(|p| {
                        let after = &rest[p..];
                        p + after.iter().position(|&c| c == b'>').map_or(after.len(), |q| q + 1)
                    })
                    .unwrap_or(rest.len());
            }
            continue;
        }
        if !ALLOWED.contains(&name) {
            continue;
        }
        if tag.closing {
            if VOID.contains(&name) {
                continue;
            }
            if let Some(pos) = open.iter().rposition(|t| t == name) {
                while open.len() > pos {
                    let t = open.pop().unwrap_or_default();
                    if t == "a" {
                        close_link(&mut out, hrefs.pop().flatten());
                    } else {
                        out.push_str(&format!("</{t}>"));
                    }
                }
            }
            continue;
        }
        if !VOID.contains(&name) && open.len() >= MAX_OPEN {
            // Deeper than any real mail: dropped (its text stays), so a close tag's search
            // of the open elements is bounded.
            continue;
        }
        match name {
            "img" => {
                let src = attr(&tag, "src").unwrap_or("");
                let alt = attr(&tag, "alt").unwrap_or("");
                if safe_data_image(src) {
                    out.push_str(&format!(
                        "<img src=\"{}\" alt=\"{}\">",
                        escape(src.trim()),
                        escape(alt)
                    ));
                } else {
                    out.push_str(&format!(
                        "<span class=\"blocked\">[remote image blocked{}{}]</span>",
                        if alt.is_empty() { "" } else { ": " },
                        escape(alt)
                    ));
                }
            }
            "a" => {
                out.push_str("<span class=\"link\">");
                open.push("a".into());
                hrefs.push(
                    attr(&tag, "href").map(|h| h.trim().to_string()).filter(|h| !h.is_empty()),
                );
            }
            "td" | "th" => {
                out.push('<');
                out.push_str(name);
                for a in ["colspan", "rowspan"] {
                    if let Some(v) = attr(&tag, a).and_then(digits) {
                        out.push_str(&format!(" {a}=\"{v}\""));
                    }
                }
                out.push('>');
                open.push(name.into());
            }
            _ => {
                out.push_str(&format!("<{name}>"));
                if !VOID.contains(&name) {
                    open.push(name.into());
                }
            }
        }
    }
    while let Some(t) = open.pop() {
        if t == "a" {
            close_link(&mut out, hrefs.pop().flatten());
        } else {
            out.push_str(&format!("</{t}>"));
        }
    }
    out
}

/// Where `needle` (ASCII) first occurs in `hay`, ignoring ASCII case.
fn find_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w.eq_ignore_ascii_case(needle))
}

fn close_link(out: &mut String, href: Option<String>) {
    out.push_str("</span>");
    if let Some(h) = href {
        out.push_str(&format!(" <span class=\"href\">[{}]</span>", escape(&h)));
    }
}

/// The document shown inside the sandboxed iframe.
pub fn safe_document(fragment: &str) -> String {
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><style>\
         body{{font-family:sans-serif;font-size:14px;margin:8px;word-wrap:break-word}}\
         .blocked,.href{{color:#a00;font-size:12px}}.link{{color:#00c;text-decoration:underline}}\
         img{{max-width:100%}}</style></head><body>{fragment}</body></html>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing executable or remote may survive: no `<script`, no event handler
    /// attribute, no `javascript:` URL in an attribute, no remote src.
    fn assert_inert(out: &str) {
        let l = out.to_ascii_lowercase();
        for bad in [
            "<script",
            "<iframe",
            "<object",
            "<embed",
            "<svg",
            "<style",
            "<link",
            "<meta",
            "<form",
            "<base",
            "src=\"http",
            "src=\"//",
            "href=",
            "style=",
            "srcset",
            "<math",
            "<input",
            "<button",
        ] {
            assert!(!l.contains(bad), "{bad} in {out}");
        }
        // Every `<` in the output starts a tag we wrote.
        for (i, _) in out.match_indices('<') {
            let t = &l[i + 1..];
            let t = t.trim_start_matches('/');
            let name: String = t.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
            assert!(ALLOWED.contains(&name.as_str()), "tag {name:?} in {out}");
        }
        // No attribute other than ours: names are what precedes `="` inside a tag.
        for (i, _) in out.match_indices('<') {
            let tag = &out[i..i + out[i..].find('>').expect("closed tag")];
            let mut rest = tag;
            while let Some(eq) = rest.find("=\"") {
                let name = rest[..eq].rsplit(' ').next().unwrap_or("");
                assert!(
                    ["src", "alt", "colspan", "rowspan", "class"].contains(&name),
                    "attr {name} in {out}"
                );
                let after = &rest[eq + 2..];
                rest = &after[after.find('"').expect("quoted") + 1..];
            }
        }
    }

    #[test]
    fn hostile_html_is_neutralised() {
        let cases = [
            "<script>window.__pwned=1</script>hello",
            "<SCRIPT SRC=http://evil/x.js></SCRIPT>",
            "<img src=x onerror=window.__pwned=1>",
            "<img src=\"http://evil.example/t.png\">",
            "<a href=\"javascript:window.__pwned=1\">click</a>",
            "<svg><script>alert(1)</script></svg>",
            "<iframe src=\"http://evil\"></iframe>",
            "<div style=\"background:url(http://evil/x)\">x</div>",
            "<p onclick='x()' onmouseover=\"y()\">t</p>",
            "<<script>script>alert(1)<</script>/script>",
            "<scr<script>ipt>alert(1)</script>",
            "<!--<script>alert(1)</script>-->",
            "<img src=`x`onerror=alert(1)>",
            "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
            "<noscript><p title=\"</noscript><img src=x onerror=alert(1)>\">",
            "<a href=x title='\"><script>alert(1)</script>'>t</a>",
            "<meta http-equiv=refresh content=\"0;url=http://evil\">",
            "<link rel=stylesheet href=http://evil/x.css>",
            "<base href=http://evil/>",
            "<form action=http://evil><input name=x></form>",
            "<body onload=alert(1)>",
            "<img src=\"data:image/svg+xml;base64,PHN2Zz4=\">",
            "<img src='data:image/png;base64,AAAA\" onerror=\"alert(1)'>",
            "<td colspan=\"2 onmouseover=alert(1)\">x</td>",
            "<style>@import 'http://evil/x.css';</style>",
            "<object data=http://evil></object><embed src=http://evil>",
            "<x onclick=alert(1)>unknown</x>",
            "</p></div></table><script>1</script>",
            "<img/src=x/onerror=alert(1)>",
            "<textarea><script>alert(1)</script></textarea>",
        ];
        for c in cases {
            let out = sanitize_html(c);
            assert_inert(&out);
            assert!(!out.to_ascii_lowercase().contains("alert(1)</"), "{c} -> {out}");
        }
    }

    #[test]
    fn benign_html_keeps_its_shape() {
        let out =
            sanitize_html("<P>Hello <b>world</b> &amp; <i>friends</i><br>bye &#x263A; a&b <3</p>");
        assert_eq!(
            out,
            "<p>Hello <b>world</b> &amp; <i>friends</i><br>bye &#x263A; a&amp;b &lt;3</p>"
        );
        let out = sanitize_html("<a href=\"https://ex.test/?a=1&amp;b=2\">Go</a>");
        assert_eq!(out, "<span class=\"link\">Go</span> <span class=\"href\">[https://ex.test/?a=1&amp;b=2]</span>");
        let out = sanitize_html("<table><tr><td colspan=2>x</td></tr></table><div>unclosed");
        assert_eq!(out, "<table><tr><td colspan=\"2\">x</td></tr></table><div>unclosed</div>");
        let out = sanitize_html("<img src=\"data:image/png;base64,iVBORw0KGgo=\" alt=\"logo\">");
        assert_eq!(out, "<img src=\"data:image/png;base64,iVBORw0KGgo=\" alt=\"logo\">");
        let out = sanitize_html("<img src=\"https://t.example/p.gif\" alt=\"pixel\">");
        assert_eq!(out, "<span class=\"blocked\">[remote image blocked: pixel]</span>");
        assert_eq!(sanitize_html("<style>p{}</style>text<script>x</script>"), "text");
        assert_eq!(sanitize_html("a<SVG>x</svG >b<svg>c</sv"), "ab");
    }

    /// Hostile shapes that were quadratic: every dropped element copied the rest of the
    /// input, and every stray close tag searched all open elements. A few MB of either took
    /// hours; now it is linear (milliseconds, the bound only catches a regression).
    #[test]
    fn hostile_shapes_stay_linear() {
        let n = 200_000;
        let mut html = "<svg></svg>".repeat(n);
        html.push_str(&"<b>".repeat(n));
        html.push_str(&"</i>x".repeat(n));
        let t = std::time::Instant::now();
        let out = sanitize_html(&html);
        assert!(t.elapsed() < std::time::Duration::from_secs(10), "took {:?}", t.elapsed());
        assert_eq!(out.matches("<b>").count(), MAX_OPEN);
        assert_eq!(out.matches("</b>").count(), MAX_OPEN);
        assert_eq!(out.matches('x').count(), n);
    }
}
