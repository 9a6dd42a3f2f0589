//! The `.cf` reader: lines, comments, conditionals, directives. Produces rule definitions
//! and the settings around them; compiling is [`crate::compile`]'s job.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::meta::{self, Expr};
use crate::perlre::{read_delimited, PerlRe};
use crate::RulesError;

/// The SpamAssassin version `if (version >= X)` compares against (the installed 4.0.1).
pub const SA_VERSION: f64 = 4.000001;

/// Plugins whose rules this crate runs (or knows how to skip rule by rule).
const PLUGINS: &[&str] = &[
    "ReplaceTags",
    "MIMEHeader",
    "HeaderEval",
    "BodyEval",
    "MIMEEval",
    "HTMLEval",
    "FreeMail",
    "WLBLEval",
    "RelayEval",
    "ImageInfo",
    "URIEval",
    "Check",
];

/// Plugins whose rules need the network; their rules are reported as such.
const NET_PLUGINS: &[&str] = &[
    "DNSEval",
    "URIDNSBL",
    "AskDNS",
    "SPF",
    "DKIM",
    "DMARC",
    "Dmarc",
    "Razor2",
    "Pyzor",
    "DCC",
    "ASN",
    "AWL",
    "TxRep",
    "HashBL",
    "AccessDB",
    "AntiVirus",
    "URILocalBL",
    "DecodeShortURLs",
];

/// `can(...)` features we honour.
const FEATURES: &[&str] = &[
    "Mail::SpamAssassin::Conf::feature_bug6558_free",
    "Mail::SpamAssassin::Conf::feature_welcomelist_blocklist",
    "Mail::SpamAssassin::Conf::perl_min_version_5010000",
    "Mail::SpamAssassin::Conf::feature_registryboundaries",
    "Mail::SpamAssassin::Plugin::BodyEval::has_check_body_length",
];

#[derive(Debug, Clone)]
pub struct EvalCall {
    pub func: String,
    pub args: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum Test {
    Re(PerlRe),
    Eval(EvalCall),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct HeaderTarget {
    pub names: Vec<String>,
    pub raw: bool,
    pub addr: bool,
    pub name: bool,
}

#[derive(Debug, Clone)]
pub enum HeaderTest {
    Re { re: PerlRe, neg: bool, unset: Option<String> },
    Exists,
}

#[derive(Debug, Clone)]
pub enum RuleKind {
    Header { target: HeaderTarget, test: HeaderTest },
    Body(Test),
    RawBody(Test),
    Uri(Test),
    Full(Test),
    MimeHeader { target: HeaderTarget, re: PerlRe, neg: bool },
    Eval(EvalCall),
    Meta(Expr),
}

#[derive(Debug, Clone)]
pub struct RuleDef {
    pub name: String,
    pub kind: RuleKind,
}

/// Everything the `.cf` files said, in load order.
#[derive(Debug, Default)]
pub struct Conf {
    pub rules: Vec<RuleDef>,
    pub index: HashMap<String, usize>,
    pub scores: HashMap<String, [f64; 4]>,
    pub describes: HashMap<String, String>,
    pub tflags: HashMap<String, String>,
    pub freemail: HashSet<String>,
    pub replace_tag: HashMap<String, String>,
    pub replace_pre: HashMap<String, String>,
    pub replace_inter: HashMap<String, String>,
    pub replace_post: HashMap<String, String>,
    pub replace_start: Option<String>,
    pub replace_end: Option<String>,
    pub replace_rules: HashSet<String>,
    /// Directives we read past, with how often.
    pub ignored: BTreeMap<String, usize>,
    /// Rules only defined in a branch that is off, with why.
    pub disabled: HashMap<String, String>,
    pub files: usize,
}

struct Cond {
    active: bool,
    reason: String,
    line: usize,
    seen_else: bool,
}

fn perr(file: &Path, line: usize, reason: impl Into<String>) -> RulesError {
    RulesError::Parse { file: file.to_path_buf(), line, reason: reason.into() }
}

/// SA strips `#` comments unless escaped as `\#`.
fn strip_comment(line: &str) -> String {
    let b = line.as_bytes();
    let mut end = b.len();
    for i in 0..b.len() {
        if b[i] == b'#' && (i == 0 || b[i - 1] != b'\\') {
            end = i;
            break;
        }
    }
    line[..end].replace("\\#", "#").trim().to_string()
}

fn plugin_short(name: &str) -> &str {
    name.rsplit("::").next().unwrap_or(name)
}

/// Evaluates an `if` condition: `version`, `perl_version`, `plugin(X)`, `can(X)`, numbers,
/// `!`, `&&`, `||`, comparisons and parentheses.
fn eval_if(expr: &str) -> Result<bool, String> {
    let mut s = String::new();
    let mut rest = expr;
    while !rest.is_empty() {
        let fun = ["plugin(", "can("].into_iter().find(|f| rest.starts_with(f));
        if let Some(f) = fun {
            let close = rest.find(')').ok_or("unbalanced parentheses in if")?;
            let arg = rest[f.len()..close].trim();
            let yes = if f == "can(" {
                FEATURES.contains(&arg)
            } else {
                PLUGINS.contains(&plugin_short(arg))
            };
            s.push_str(if yes { " 1 " } else { " 0 " });
            rest = &rest[close + 1..];
        } else if rest.starts_with("perl_version") {
            s.push_str(" 5.036 ");
            rest = &rest["perl_version".len()..];
        } else if rest.starts_with("version") {
            s.push_str(&format!(" {SA_VERSION} "));
            rest = &rest["version".len()..];
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            s.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    let s = s.replace(" and ", " && ").replace(" or ", " || ").replace("not ", "! ");
    let e = meta::parse(&s)?;
    let mut names = Vec::new();
    e.names(&mut names);
    if let Some(n) = names.first() {
        return Err(format!("unknown condition {n:?} in if"));
    }
    Ok(e.eval(&[]) != 0.0)
}

fn parse_eval(s: &str) -> Result<EvalCall, String> {
    let s = s.trim();
    let open = s.find('(').ok_or("eval without argument list")?;
    let func = s[..open].trim().to_string();
    if func.is_empty() || !func.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("bad eval function name {func:?}"));
    }
    let inner = s[open + 1..].trim_end();
    let inner = inner.strip_suffix(')').ok_or("eval argument list not closed")?;
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in inner.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                any = true;
            }
            None if c == ',' => {
                args.push(std::mem::take(&mut cur).trim().to_string());
                any = false;
            }
            None => {
                cur.push(c);
                if !c.is_whitespace() {
                    any = true;
                }
            }
        }
    }
    if quote.is_some() {
        return Err("unterminated string in eval arguments".into());
    }
    if any || !args.is_empty() {
        args.push(cur.trim().to_string());
    }
    Ok(EvalCall { func, args })
}

fn header_target(spec: &str) -> HeaderTarget {
    let mut t = HeaderTarget::default();
    let mut parts = spec.split(':');
    let names = parts.next().unwrap_or("");
    for m in parts {
        match m {
            "raw" => t.raw = true,
            "addr" => t.addr = true,
            "name" => t.name = true,
            _ => {}
        }
    }
    t.names = names.split('|').map(str::to_string).collect();
    t
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Conf {
    fn define(&mut self, name: &str, kind: RuleKind) {
        let def = RuleDef { name: name.to_string(), kind };
        match self.index.get(name) {
            Some(&i) => self.rules[i] = def,
            None => {
                self.index.insert(name.to_string(), self.rules.len());
                self.rules.push(def);
            }
        }
    }

    /// Reads one `.cf` file's text.
    pub fn read(&mut self, file: &Path, text: &str) -> Result<(), RulesError> {
        self.files += 1;
        let mut conds: Vec<Cond> = Vec::new();
        for (n, raw_line) in text.lines().enumerate() {
            let line_no = n + 1;
            let line = strip_comment(raw_line);
            if line.is_empty() {
                continue;
            }
            let (dir, rest) = match line.find(char::is_whitespace) {
                Some(i) => (&line[..i], line[i..].trim()),
                None => (line.as_str(), ""),
            };
            let dir_lc = dir.to_ascii_lowercase();
            let active = conds.iter().all(|c| c.active);
            match dir_lc.as_str() {
                "ifplugin" => {
                    let p = plugin_short(rest.split_whitespace().next().unwrap_or(""));
                    let yes = PLUGINS.contains(&p);
                    let reason = if p == "Bayes" {
                        "bayes (Levee has its own)".to_string()
                    } else if NET_PLUGINS.contains(&p) {
                        "network".to_string()
                    } else {
                        format!("plugin {p} not available")
                    };
                    conds.push(Cond { active: yes, reason, line: line_no, seen_else: false });
                    continue;
                }
                "if" => {
                    let yes = eval_if(rest).map_err(|e| perr(file, line_no, format!("if: {e}")))?;
                    conds.push(Cond {
                        active: yes,
                        reason: format!("condition false: if {rest}"),
                        line: line_no,
                        seen_else: false,
                    });
                    continue;
                }
                "else" => {
                    let c =
                        conds.last_mut().ok_or_else(|| perr(file, line_no, "else without if"))?;
                    if c.seen_else {
                        return Err(perr(file, line_no, "second else for one if"));
                    }
                    c.seen_else = true;
                    c.active = !c.active;
                    c.reason = "condition false: else".into();
                    continue;
                }
                "endif" => {
                    conds.pop().ok_or_else(|| perr(file, line_no, "endif without if"))?;
                    continue;
                }
                _ => {}
            }
            if !active {
                // remember rule names so the report can say why they are absent
                if matches!(
                    dir_lc.as_str(),
                    "header" | "body" | "rawbody" | "uri" | "full" | "mimeheader" | "meta"
                ) {
                    if let Some(name) = rest.split_whitespace().next() {
                        let reason = conds
                            .iter()
                            .rev()
                            .find(|c| !c.active)
                            .map_or_else(String::new, |c| c.reason.clone());
                        self.disabled.entry(name.to_string()).or_insert(reason);
                    }
                }
                continue;
            }
            self.directive(file, line_no, &dir_lc, rest)?;
        }
        if let Some(c) = conds.first() {
            return Err(perr(file, c.line, "if/ifplugin without endif"));
        }
        Ok(())
    }

    fn directive(
        &mut self,
        file: &Path,
        ln: usize,
        dir: &str,
        rest: &str,
    ) -> Result<(), RulesError> {
        let err = |r: String| perr(file, ln, r);
        let (name, arg) = match rest.find(char::is_whitespace) {
            Some(i) => (&rest[..i], rest[i..].trim()),
            None => (rest, ""),
        };
        match dir {
            "header" | "body" | "rawbody" | "uri" | "full" | "mimeheader" | "meta" => {
                if !valid_name(name) {
                    return Err(err(format!("{dir}: bad rule name {name:?}")));
                }
                if arg.is_empty() {
                    return Err(err(format!("{dir} {name}: missing test")));
                }
                let kind =
                    self.rule_kind(dir, name, arg).map_err(|e| err(format!("{name}: {e}")))?;
                self.define(name, kind);
            }
            "score" => {
                let vals: Vec<&str> = arg.split_whitespace().collect();
                if !valid_name(name) || vals.is_empty() {
                    return Err(err(format!("score: expected NAME and a number, got {rest:?}")));
                }
                let mut nums = Vec::new();
                for v in &vals {
                    let v = v.trim_start_matches('(').trim_end_matches(')');
                    nums.push(
                        v.parse::<f64>()
                            .map_err(|_| err(format!("score {name}: {v:?} is not a number")))?,
                    );
                }
                let s = match nums.len() {
                    1 => [nums[0]; 4],
                    4 => [nums[0], nums[1], nums[2], nums[3]],
                    n => {
                        return Err(err(format!("score {name}: expected 1 or 4 numbers, got {n}")))
                    }
                };
                self.scores.insert(name.to_string(), s);
            }
            "describe" => {
                self.describes.insert(name.to_string(), arg.to_string());
            }
            "tflags" => {
                self.tflags.insert(name.to_string(), arg.to_string());
            }
            "freemail_domains" => {
                for d in rest.split_whitespace() {
                    self.freemail.insert(d.to_ascii_lowercase());
                }
            }
            "replace_tag" => {
                self.replace_tag.insert(name.to_string(), arg.to_string());
            }
            "replace_pre" => {
                self.replace_pre.insert(name.to_string(), arg.to_string());
            }
            "replace_inter" => {
                self.replace_inter.insert(name.to_string(), arg.to_string());
            }
            "replace_post" => {
                self.replace_post.insert(name.to_string(), arg.to_string());
            }
            "replace_start" => self.replace_start = Some(rest.to_string()),
            "replace_end" => self.replace_end = Some(rest.to_string()),
            "replace_rules" => {
                for r in rest.split_whitespace() {
                    self.replace_rules.insert(r.to_string());
                }
            }
            other => *self.ignored.entry(other.to_string()).or_default() += 1,
        }
        Ok(())
    }

    fn rule_kind(&self, dir: &str, _name: &str, arg: &str) -> Result<RuleKind, String> {
        let test = |s: &str| -> Result<Test, String> {
            if let Some(e) = s.strip_prefix("eval:") {
                return Ok(Test::Eval(parse_eval(e)?));
            }
            let (re, after) = read_delimited(s)?;
            if !after.trim().is_empty() {
                return Err(format!("unexpected {:?} after the regular expression", after.trim()));
            }
            Ok(Test::Re(re))
        };
        Ok(match dir {
            "body" => RuleKind::Body(test(arg)?),
            "rawbody" => RuleKind::RawBody(test(arg)?),
            "uri" => RuleKind::Uri(test(arg)?),
            "full" => RuleKind::Full(test(arg)?),
            "meta" => RuleKind::Meta(meta::parse(arg)?),
            "header" => {
                if let Some(e) = arg.strip_prefix("eval:") {
                    return Ok(RuleKind::Eval(parse_eval(e)?));
                }
                if let Some(h) = arg.strip_prefix("exists:") {
                    let t =
                        HeaderTarget { names: vec![h.trim().to_string()], ..Default::default() };
                    return Ok(RuleKind::Header { target: t, test: HeaderTest::Exists });
                }
                let (spec, rest) =
                    arg.split_once(char::is_whitespace).ok_or("header: missing operator")?;
                let rest = rest.trim_start();
                let neg = if rest.starts_with("=~") {
                    false
                } else if rest.starts_with("!~") {
                    true
                } else {
                    return Err("header: expected =~ or !~".into());
                };
                let (re, after) = read_delimited(&rest[2..])?;
                let after = after.trim();
                let unset = if after.is_empty() {
                    None
                } else if let Some(u) = after.strip_prefix("[if-unset:") {
                    Some(u.trim_end_matches(']').trim().to_string())
                } else {
                    return Err(format!("unexpected {after:?} after the regular expression"));
                };
                RuleKind::Header {
                    target: header_target(spec),
                    test: HeaderTest::Re { re, neg, unset },
                }
            }
            "mimeheader" => {
                let (spec, rest) =
                    arg.split_once(char::is_whitespace).ok_or("mimeheader: missing operator")?;
                let rest = rest.trim_start();
                let neg = rest.starts_with("!~");
                if !neg && !rest.starts_with("=~") {
                    return Err("mimeheader: expected =~ or !~".into());
                }
                let (re, after) = read_delimited(&rest[2..])?;
                if !after.trim().is_empty() {
                    return Err(format!(
                        "unexpected {:?} after the regular expression",
                        after.trim()
                    ));
                }
                RuleKind::MimeHeader { target: header_target(spec), re, neg }
            }
            _ => return Err(format!("unknown rule type {dir}")),
        })
    }

    /// Applies the ReplaceTags plugin to the rules `replace_rules` names.
    pub fn apply_replace_tags(&mut self) {
        let start = self.replace_start.clone().unwrap_or_else(|| "<".into());
        let end = self.replace_end.clone().unwrap_or_else(|| ">".into());
        let names: Vec<String> = self.replace_rules.iter().cloned().collect();
        for name in names {
            let Some(&i) = self.index.get(&name) else { continue };
            let src = match &self.rules[i].kind {
                RuleKind::Body(Test::Re(re))
                | RuleKind::RawBody(Test::Re(re))
                | RuleKind::Uri(Test::Re(re))
                | RuleKind::Full(Test::Re(re))
                | RuleKind::Header { test: HeaderTest::Re { re, .. }, .. }
                | RuleKind::MimeHeader { re, .. } => re.source.clone(),
                _ => continue,
            };
            let new = replace_tags(&src, &start, &end, self);
            let re = match &mut self.rules[i].kind {
                RuleKind::Body(Test::Re(re))
                | RuleKind::RawBody(Test::Re(re))
                | RuleKind::Uri(Test::Re(re))
                | RuleKind::Full(Test::Re(re))
                | RuleKind::Header { test: HeaderTest::Re { re, .. }, .. }
                | RuleKind::MimeHeader { re, .. } => re,
                _ => continue,
            };
            re.source = new;
        }
    }
}

/// One rule's pattern with its tags expanded (up to 5 passes, for tags within tags).
fn replace_tags(src: &str, start: &str, end: &str, conf: &Conf) -> String {
    let mut re = src.to_string();
    for _ in 0..5 {
        let mut take = |kind: &str| -> Option<String> {
            let open = format!("{start}{kind} ");
            let s = re.find(&open)?;
            let e = re[s..].find(end)? + s;
            let v = re[s + open.len()..e].to_string();
            re.replace_range(s..e + end.len(), "");
            Some(v)
        };
        let pre = take("pre").and_then(|n| conf.replace_pre.get(&n).cloned());
        let post = take("post").and_then(|n| conf.replace_post.get(&n).cloned());
        let inter = take("inter").and_then(|n| conf.replace_inter.get(&n).cloned());
        // split into text and tags, keeping the empty text between adjacent tags
        let mut segs: Vec<(bool, String)> = Vec::new();
        let mut rest = re.as_str();
        loop {
            let found = rest.find(start).and_then(|s| {
                let e = rest[s + start.len()..].find(end)? + s + start.len();
                let inner = &rest[s + start.len()..e];
                (!inner.is_empty() && !inner.contains(start)).then_some((s, e))
            });
            match found {
                Some((s, e)) => {
                    segs.push((false, rest[..s].to_string()));
                    segs.push((true, rest[s + start.len()..e].to_string()));
                    rest = &rest[e + end.len()..];
                }
                None => {
                    segs.push((false, rest.to_string()));
                    break;
                }
            }
        }
        while segs.last().is_some_and(|(t, s)| !t && s.is_empty()) {
            segs.pop();
        }
        let mut again = false;
        let mut out = String::new();
        for (is_tag, s) in &segs {
            if *is_tag {
                match conf.replace_tag.get(s) {
                    Some(v) => {
                        if let Some(p) = &pre {
                            out.push_str(p);
                        }
                        out.push_str(v);
                        if let Some(p) = &post {
                            out.push_str(p);
                        }
                        again |= v.contains(start);
                    }
                    None => {
                        out.push_str(start);
                        out.push_str(s);
                        out.push_str(end);
                    }
                }
            } else if s.is_empty() {
                if let Some(i) = &inter {
                    out.push_str(i);
                }
            } else {
                out.push_str(s);
            }
        }
        re = out;
        if !again {
            break;
        }
    }
    re
}

/// Reads every `*.cf` file of each directory, in name order.
pub fn read_dirs(dirs: &[&Path]) -> Result<Conf, RulesError> {
    let mut conf = Conf::default();
    for dir in dirs {
        let io = |e: std::io::Error| RulesError::Io { path: dir.to_path_buf(), source: e };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cf") && p.is_file())
            .collect();
        files.sort();
        for f in files {
            let bytes =
                std::fs::read(&f).map_err(|e| RulesError::Io { path: f.clone(), source: e })?;
            // a Latin-1 file: its 8-bit bytes become `\xNN`, which the rules' regexes read
            // as the same bytes (SA matches bytes)
            let text = match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(e) => e
                    .into_bytes()
                    .iter()
                    .map(
                        |&b| if b < 0x80 { (b as char).to_string() } else { format!("\\x{b:02x}") },
                    )
                    .collect(),
            };
            conf.read(&f, &text)?;
        }
    }
    conf.apply_replace_tags();
    for name in conf.index.keys() {
        conf.disabled.remove(name);
    }
    Ok(conf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions() {
        assert!(eval_if("(version >= 3.004002)").expect("ok"));
        assert!(!eval_if("!plugin(Mail::SpamAssassin::Plugin::ReplaceTags)").expect("ok"));
        assert!(eval_if("can(Mail::SpamAssassin::Conf::feature_bug6558_free)").expect("ok"));
        assert!(!eval_if("can(Mail::SpamAssassin::Conf::feature_dns_block_rule)").expect("ok"));
        assert!(eval_if("foo >= 1").is_err());
    }

    #[test]
    fn eval_args() {
        let e = parse_eval("check_x('a, b', 2,\"c\")").expect("ok");
        assert_eq!(e.func, "check_x");
        assert_eq!(e.args, vec!["a, b", "2", "c"]);
        assert!(parse_eval("f()").expect("ok").args.is_empty());
    }

    #[test]
    fn replace() {
        let mut c = Conf::default();
        c.replace_tag.insert("A".into(), "[a4]".into());
        c.replace_tag.insert("B".into(), "b".into());
        c.replace_inter.insert("W".into(), r"\W?".into());
        assert_eq!(replace_tags("<inter W>x<A><B>y", "<", ">", &c), r"x[a4]\W?by");
    }
}
