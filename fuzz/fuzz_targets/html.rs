//! HTML as hostile mail carries it: the filter's text extractor (`levee_html`) and the
//! console's safe-view sanitiser, which renders quarantined HTML in the browser.
//!
//! The sanitiser lives in levee-console; its source file is included here as a module (it
//! uses nothing else from that crate) so the target does not build the console's web stack.
//!
//! Invariants: no panic; the sanitiser's output is markup it generated itself: only allowed
//! tags, only the attributes it writes (`src` of a `data:` image, `alt`, `colspan`,
//! `rowspan`, `class`), quoted values without `<`, `>` or `"`, so no `<script`, no `on*=`
//! handler and no remote URL can survive; sanitising is linear enough to meet the timeout.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../appliance/levee-console/src/sanitize.rs"]
mod sanitize;

const TAGS: &[&str] = &[
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
    "img",
    "font",
    "tt",
    "abbr",
    "address",
    "cite",
    "q",
];
const ATTRS: &[&str] = &["src", "alt", "colspan", "rowspan", "class"];

/// Panics unless `out` is text plus tags from the allow list with generated attributes.
fn assert_generated(out: &str) {
    let b = out.as_bytes();
    let mut i = 0;
    while let Some(off) = b[i..].iter().position(|&c| c == b'<') {
        i += off + 1;
        if b.get(i) == Some(&b'/') {
            i += 1;
        }
        let name_len = b[i..].iter().take_while(|c| c.is_ascii_alphanumeric()).count();
        let name = &out[i..i + name_len];
        assert!(TAGS.contains(&name), "tag {name:?} in sanitised output: {out:?}");
        i += name_len;
        loop {
            match b.get(i) {
                Some(b'>') => {
                    i += 1;
                    break;
                }
                Some(b' ') => {
                    i += 1;
                    let n = b[i..].iter().take_while(|c| c.is_ascii_alphabetic()).count();
                    let attr = &out[i..i + n];
                    assert!(
                        ATTRS.contains(&attr),
                        "attribute {attr:?} in sanitised output: {out:?}"
                    );
                    i += n;
                    assert_eq!(&b[i..i + 2], b"=\"", "unquoted attribute in {out:?}");
                    i += 2;
                    let v = b[i..].iter().position(|&c| c == b'"').expect("unterminated value");
                    let value = &out[i..i + v];
                    assert!(!value.contains(['<', '>']), "markup in a value: {out:?}");
                    if attr == "src" {
                        assert!(
                            value.to_ascii_lowercase().starts_with("data:image/"),
                            "remote src in {out:?}"
                        );
                    }
                    i += v + 1;
                }
                _ => panic!("malformed tag at {i} in sanitised output: {out:?}"),
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let html = String::from_utf8_lossy(data);

    let text = levee_html::strip(&html);
    assert!(text.urls.len() <= 200, "url list unbounded");
    for u in &text.urls {
        let _ = levee_html::url_host(u);
    }
    let _ = levee_html::decode_entities(&html);

    let safe = sanitize::sanitize_html(&html);
    assert_generated(&safe);
});
