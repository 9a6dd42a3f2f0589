//! SpamAssassin's `.cf` rule language as a Levee rule source.
//!
//! [`load_dirs`] reads the `*.cf` files of some directories (SpamAssassin's stock set, or
//! local rules) and compiles what Levee can run into an immutable [`RuleSet`];
//! [`RuleSet::check`] runs it on a [`SaMessage`], parsed once per message.
//!
//! Design:
//! - **Loading** (`parse`): comments, `if`/`ifplugin`/`else`/`endif` (SA 4.0.1's version and
//!   only the plugins and features we implement are true), rule definitions, `score`,
//!   `describe`, `tflags`, `freemail_domains` and the ReplaceTags directives. Later files and
//!   directories override earlier ones. Admin settings are counted and ignored. A malformed
//!   line refuses the whole load with `FILE:LINE: reason`; a valid rule we cannot run is
//!   skipped and counted under a reason in the [`LoadReport`].
//! - **Regexes** (`perlre`): Perl syntax translated to `regex::bytes` with Unicode off, so
//!   `\w`, `\b`, `\s`, `\d` and `/i` are ASCII as in SpamAssassin's byte matching, and a
//!   pattern's non-ASCII bytes match the UTF-8 bytes of the (decoded) text. Patterns that
//!   need look-around or back-references go to PCRE2 (Perl's own syntax, JIT-compiled, in
//!   UTF mode so a `\xNN` there is a character of the decoded text) with a match limit, and
//!   every backtracking match of one message shares one time budget: past it, such rules
//!   count as not hit and are reported. PCRE2 replaced `fancy-regex` here: same hits on the
//!   corpus, the whole check about 2x faster and 50 MB smaller.
//! - **Matching**: line-wise texts (body paragraphs, rawbody chunks, URIs) are joined and
//!   each rule's regex, compiled in multi-line mode, searches them once; only a match that
//!   spans lines sends the rule back to line-by-line matching. Backtracking patterns first
//!   run a linear-time superset (look-around dropped, back-references widened) and only
//!   where it matches does PCRE2 run. Text rules also pass a literal gate first (`gate`):
//!   one Aho-Corasick pass finds which required words occur. Batching patterns into `RegexSet`s was
//!   measured and is off by default (see `SET_CHUNK`): a set of many patterns loses the
//!   per-regex literal prefilters and its lazy DFA overflows into the PikeVM, 2-6x slower.
//!   Metas are evaluated afterwards in dependency order; a name that did not run reads 0.
//! - **Cost** (stock set, release, this 2-core box): load ~1 s and ~166 MB RSS (the NFAs
//!   of ~2,400 regexes, the ReplaceTags ones are large); the lazy DFA caches grow to ~330 MB
//!   over a long run (smaller caches were tried: same RSS, 2x slower).
//! - **Message** (`message`): headers raw and decoded; `body` is SA's rendering (subject
//!   line, then text parts with HTML rendered to text, one line per paragraph, whitespace
//!   collapsed); `rawbody` the decoded parts unrendered; `full` the raw message; URIs from
//!   text and HTML, canonicalised. SpamAssassin's relay pseudo-headers (`X-Spam-Relays-Untrusted`
//!   and `-External`) are synthesised from the `Received` chain (`relays`); any such header
//!   the message itself carries is dropped first, so a sender cannot forge them.

mod eval;
mod gate;
mod message;
mod meta;
mod parse;
mod perlre;
mod relays;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use message::{HeaderField, SaMessage};
use parse::{HeaderTarget, HeaderTest, RuleKind, Test};

/// A rule file that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{}:{line}: {reason}", file.display())]
    Parse { file: PathBuf, line: usize, reason: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// What loading did: files read, rules loaded, rules skipped by reason.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub files: usize,
    pub loaded: usize,
    pub skipped: BTreeMap<String, Vec<String>>,
    /// Directives read past (admin settings, plugin options), with counts.
    pub ignored: BTreeMap<String, usize>,
    /// Patterns that went to the backtracking engine.
    pub backtracking: usize,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let skipped: usize = self.skipped.values().map(Vec::len).sum();
        let ignored: usize = self.ignored.values().sum();
        writeln!(
            f,
            "{} files: {} rules loaded ({} need backtracking), {} skipped, {} directives ignored",
            self.files, self.loaded, self.backtracking, skipped, ignored
        )?;
        let mut by_count: Vec<_> = self.skipped.iter().collect();
        by_count.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
        for (reason, names) in by_count {
            writeln!(f, "  skipped {:5}  {reason}", names.len())?;
        }
        Ok(())
    }
}

/// Loading options.
#[derive(Debug, Clone)]
pub struct Options {
    /// SA's score set: 0 plain, 1 net, 2 Bayes, 3 Bayes and net. Levee's default is 2.
    pub score_set: usize,
    /// Time all backtracking matches of one message may take together.
    pub budget: Duration,
    /// Backtracking steps one match may take.
    pub backtrack_limit: usize,
    /// Load the rules only a backtracking engine can run (about 220 of the stock set, and
    /// roughly half the check time); off, they are skipped as "backtracking disabled".
    pub backtracking: bool,
    /// Skip text rules whose required literals are absent (see `gate`). Off only to check
    /// that gating changes no result.
    pub gates: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            score_set: 2,
            budget: Duration::from_millis(20),
            backtrack_limit: 200_000,
            backtracking: true,
            gates: true,
        }
    }
}

/// A rule that fired.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub name: String,
    pub score: f64,
    pub describe: String,
}

/// The outcome of one check, with what the time budget cut.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub hits: Vec<Hit>,
    /// Rules not run, or cut, because the backtracking budget ran out.
    pub out_of_budget: Vec<String>,
}

#[derive(Debug)]
enum Matcher {
    /// Index of the pattern in its type's `RegexSet`, and the regex itself for counting.
    Fast(usize, regex::bytes::Regex),
    /// A backtracking pattern, with its linear-time superset (see `perlre::relax`) and that
    /// superset's index in the type's `RegexSet`.
    Fancy { re: pcre2::bytes::Regex, pre: Option<(usize, regex::bytes::Regex)> },
    /// `(?!not)main` run without backtracking: find `main`, reject a start where `not`
    /// matches, search on from the next byte.
    Guarded { main: regex::bytes::Regex, not: regex::bytes::Regex },
}

/// Guarded matches in `text`, up to `max`; `None` if the search gave up (hostile input).
fn guarded_count(
    main: &regex::bytes::Regex,
    not: &regex::bytes::Regex,
    text: &[u8],
    max: usize,
) -> Option<usize> {
    let mut pos = 0;
    let mut n = 0;
    for _ in 0..10_000 {
        let Some(m) = main.find_at(text, pos) else { return Some(n) };
        if not.is_match(text.get(m.start()..).unwrap_or_default()) {
            pos = m.start() + 1;
        } else {
            n += 1;
            if n >= max {
                return Some(n);
            }
            pos = m.end().max(m.start() + 1);
        }
        if pos > text.len() {
            return Some(n);
        }
    }
    None
}

#[derive(Debug)]
enum Kind {
    Header { target: HeaderTarget, m: Matcher, neg: bool, unset: Option<String> },
    Exists(String),
    Body(Matcher),
    RawBody(Matcher),
    Uri(Matcher),
    Full(Matcher),
    MimeHeader { target: HeaderTarget, m: Matcher, neg: bool },
    Eval(parse::EvalCall),
    Meta(meta::Expr),
}

#[derive(Debug)]
struct Rule {
    name: String,
    score: f64,
    describe: String,
    kind: Kind,
    /// How many hits count (1 unless `tflags multiple`).
    maxhits: usize,
    nosubject: bool,
    /// Compiled in multi-line mode to run once over all lines joined (see `run_texts`).
    joined: bool,
}

/// The fast patterns of one text type, batched.
#[derive(Debug)]
struct Batch {
    /// Sets of `chunk` patterns: one set of a thousand patterns overflows the lazy DFA's
    /// cache and falls back to the (slow) PikeVM.
    sets: Vec<regex::bytes::RegexSet>,
    chunk: usize,
    len: usize,
    /// Set index -> rule index.
    rules: Vec<usize>,
}

/// Compiled rules, immutable after load.
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// Metas in evaluation order.
    meta_order: Vec<usize>,
    body: Batch,
    rawbody: Batch,
    uri: Batch,
    full: Batch,
    /// Literal gates of the body, rawbody, uri and full rules (see `gate`).
    gates: [gate::Gates; 4],
    /// Per rule: true unless a gate guards it; a message's gate scans start from this.
    unguarded: Vec<bool>,
    freemail: HashSet<String>,
    opts: Options,
}

/// Loads the `*.cf` files of each directory with the default [`Options`].
pub fn load_dirs(dirs: &[&Path]) -> Result<(RuleSet, LoadReport), RulesError> {
    load_dirs_with(dirs, Options::default())
}

/// Loads the `*.cf` files of each directory.
pub fn load_dirs_with(dirs: &[&Path], opts: Options) -> Result<(RuleSet, LoadReport), RulesError> {
    let conf = parse::read_dirs(dirs)?;
    let mut report =
        LoadReport { files: conf.files, ignored: conf.ignored.clone(), ..Default::default() };
    let skip = |report: &mut LoadReport, reason: String, name: &str| {
        report.skipped.entry(reason).or_default().push(name.to_string());
    };
    for (name, reason) in &conf.disabled {
        skip(&mut report, reason.clone(), name);
    }
    let set = opts.score_set.min(3);
    let compile = |re: &perlre::PerlRe, report: &mut LoadReport| compile_re(re, report, &opts);
    let mut rules: Vec<Rule> = Vec::new();
    for def in &conf.rules {
        let name = def.name.as_str();
        let tflags = conf.tflags.get(name).map(String::as_str).unwrap_or("");
        let flags: Vec<&str> = tflags.split_whitespace().collect();
        if flags.contains(&"net") {
            skip(&mut report, "network".into(), name);
            continue;
        }
        if flags.contains(&"learn") {
            skip(&mut report, "bayes (Levee has its own)".into(), name);
            continue;
        }
        let mut joined = false;
        let kind = match &def.kind {
            RuleKind::Header { target, test: HeaderTest::Exists } => {
                Kind::Exists(target.names.first().cloned().unwrap_or_default())
            }
            RuleKind::Header { target, test: HeaderTest::Re { re, neg, unset } } => {
                match compile(re, &mut report) {
                    Ok(m) => {
                        Kind::Header { target: target.clone(), m, neg: *neg, unset: unset.clone() }
                    }
                    Err(e) => {
                        skip(&mut report, e, name);
                        continue;
                    }
                }
            }
            RuleKind::MimeHeader { target, re, neg } => match compile(re, &mut report) {
                Ok(m) => Kind::MimeHeader { target: target.clone(), m, neg: *neg },
                Err(e) => {
                    skip(&mut report, e, name);
                    continue;
                }
            },
            RuleKind::Body(t) | RuleKind::RawBody(t) | RuleKind::Uri(t) | RuleKind::Full(t) => {
                match t {
                    Test::Eval(call) => {
                        if let Some(r) = eval::unavailable(&call.func) {
                            skip(&mut report, r.into(), name);
                            continue;
                        }
                        if !eval::supported(call) {
                            skip(&mut report, format!("eval {} not implemented", call.func), name);
                            continue;
                        }
                        Kind::Eval(call.clone())
                    }
                    Test::Re(re) => match compile_lines(re, &mut report, &opts, &mut joined) {
                        Ok(m) => match &def.kind {
                            RuleKind::Body(_) => Kind::Body(m),
                            RuleKind::RawBody(_) => Kind::RawBody(m),
                            RuleKind::Uri(_) => Kind::Uri(m),
                            _ => Kind::Full(m),
                        },
                        Err(e) => {
                            skip(&mut report, e, name);
                            continue;
                        }
                    },
                }
            }
            RuleKind::Eval(call) => {
                if let Some(r) = eval::unavailable(&call.func) {
                    skip(&mut report, r.into(), name);
                    continue;
                }
                if !eval::supported(call) {
                    skip(&mut report, format!("eval {} not implemented", call.func), name);
                    continue;
                }
                Kind::Eval(call.clone())
            }
            RuleKind::Meta(e) => Kind::Meta(e.clone()),
        };
        let nice = flags.contains(&"nice");
        let score = match conf.scores.get(name) {
            Some(s) => s[set],
            None if name.starts_with("__") => 0.0,
            None => {
                let s = if name.starts_with("T_") { 0.01 } else { 1.0 };
                if nice {
                    -s
                } else {
                    s
                }
            }
        };
        let multiple = flags.contains(&"multiple");
        let maxhits = flags
            .iter()
            .find_map(|f| f.strip_prefix("maxhits="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(if multiple { 1000 } else { 1 });
        rules.push(Rule {
            name: name.to_string(),
            score,
            describe: conf.describes.get(name).cloned().unwrap_or_default(),
            kind,
            maxhits: if multiple { maxhits.max(1) } else { 1 },
            joined: joined && !matches!(def.kind, RuleKind::Full(_)),
            nosubject: flags.contains(&"nosubject"),
        });
    }

    // metas: resolve names, order by dependencies, drop loops
    let index: HashMap<String, usize> =
        rules.iter().enumerate().map(|(i, r)| (r.name.clone(), i)).collect();
    for r in &mut rules {
        if let Kind::Meta(e) = &mut r.kind {
            e.resolve(&|n| index.get(n).copied());
        }
    }
    let mut meta_order = Vec::new();
    let mut state = vec![0u8; rules.len()]; // 0 new, 1 visiting, 2 done, 3 loop
    for i in 0..rules.len() {
        order_meta(i, &rules, &mut state, &mut meta_order);
    }
    let looped: HashSet<usize> = (0..rules.len()).filter(|&i| state[i] == 3).collect();
    meta_order.retain(|i| !looped.contains(i));
    for &i in &looped {
        skip(&mut report, "meta dependency loop".into(), &rules[i].name);
    }

    let body = batch(&mut rules, |k| matches!(k, Kind::Body(_)));
    let rawbody = batch(&mut rules, |k| matches!(k, Kind::RawBody(_)));
    let uri = batch(&mut rules, |k| matches!(k, Kind::Uri(_)));
    let full = batch(&mut rules, |k| matches!(k, Kind::Full(_)));
    let gates = [
        gates(&rules, opts.gates, |k| matches!(k, Kind::Body(_))),
        gates(&rules, opts.gates, |k| matches!(k, Kind::RawBody(_))),
        gates(&rules, opts.gates, |k| matches!(k, Kind::Uri(_))),
        gates(&rules, opts.gates, |k| matches!(k, Kind::Full(_))),
    ];
    let mut unguarded = vec![true; rules.len()];
    for i in gates.iter().flat_map(gate::Gates::guarded) {
        unguarded[i] = false;
    }
    report.loaded = rules.len() - looped.len();
    for v in report.skipped.values_mut() {
        v.sort();
    }
    Ok((
        RuleSet {
            rules,
            meta_order,
            body,
            rawbody,
            uri,
            full,
            gates,
            unguarded,
            freemail: conf.freemail,
            opts,
        },
        report,
    ))
}

/// Compiles one pattern: `regex` if it can, else PCRE2 with a linear-time superset.
fn compile_re(
    re: &perlre::PerlRe,
    report: &mut LoadReport,
    opts: &Options,
) -> Result<Matcher, String> {
    let t = perlre::translate(re);
    if !t.needs_fancy {
        if let Ok(r) = regex::bytes::RegexBuilder::new(&t.pattern).size_limit(50 << 20).build() {
            return Ok(Matcher::Fast(0, r));
        }
    }
    if let Some((flags, not, main)) = perlre::leading_negative_lookahead(&t.pattern) {
        let build = |p: String| regex::bytes::RegexBuilder::new(&p).size_limit(50 << 20).build();
        if let (Ok(main), Ok(not)) =
            (build(format!("{flags}{main}")), build(format!("{flags}\\A(?:{not})")))
        {
            return Ok(Matcher::Guarded { main, not });
        }
    }
    if !opts.backtracking {
        return Err("backtracking disabled".into());
    }
    // PCRE2 runs the Perl source itself, JIT compiled, with the match limit lowered in the
    // pattern so one search stays bounded. UTF mode: texts are decoded to UTF-8, and a
    // `\xE0` in a rule means the character à there, as in the message's own charset.
    let flags = &re.flags;
    match pcre2::bytes::RegexBuilder::new()
        .utf(true)
        .caseless(flags.contains('i'))
        .multi_line(flags.contains('m'))
        .dotall(flags.contains('s'))
        .extended(flags.contains('x'))
        .jit_if_available(true)
        .build(&format!("(*LIMIT_MATCH={}){}", opts.backtrack_limit, re.source))
    {
        Ok(r) => {
            report.backtracking += 1;
            let pre = regex::bytes::RegexBuilder::new(&perlre::relax(&t.pattern))
                .size_limit(50 << 20)
                .build()
                .ok()
                .map(|p| (0, p));
            Ok(Matcher::Fancy { re: r, pre })
        }
        Err(_) => Err("regex not supported by either engine".into()),
    }
}

/// For line-wise texts: multi-line mode, so one search over the joined lines finds what a
/// search per line would (`^`/`$` at line ends), unless the pattern anchors on the whole
/// text (`\A`, `\z`, `\Z`, `\G`).
fn compile_lines(
    re: &perlre::PerlRe,
    report: &mut LoadReport,
    opts: &Options,
    joined: &mut bool,
) -> Result<Matcher, String> {
    let whole = ["\\A", "\\z", "\\Z", "\\G"].iter().any(|a| re.source.contains(a));
    if whole || re.flags.contains('m') {
        *joined = !whole;
        return compile_re(re, report, opts);
    }
    *joined = true;
    let m = perlre::PerlRe { source: re.source.clone(), flags: format!("{}m", re.flags) };
    compile_re(&m, report, opts)
}

fn meta_deps(e: &meta::Expr, out: &mut Vec<usize>) {
    match e {
        meta::Expr::Idx(i) => out.push(*i),
        meta::Expr::Not(x) | meta::Expr::Neg(x) => meta_deps(x, out),
        meta::Expr::Bin(_, a, b) => {
            meta_deps(a, out);
            meta_deps(b, out);
        }
        _ => {}
    }
}

/// Depth-first: a meta comes after the metas it reads. Iterative-enough for real sets
/// (depth is bounded by the chain length of metas, a few dozen in SA's set).
fn order_meta(i: usize, rules: &[Rule], state: &mut [u8], out: &mut Vec<usize>) -> bool {
    let Kind::Meta(e) = &rules[i].kind else { return true };
    match state[i] {
        2 => return true,
        1 | 3 => {
            state[i] = 3;
            return false;
        }
        _ => {}
    }
    state[i] = 1;
    let mut deps = Vec::new();
    meta_deps(e, &mut deps);
    let mut ok = true;
    for d in deps {
        if !order_meta(d, rules, state, out) {
            ok = false;
        }
    }
    if ok && state[i] == 1 {
        state[i] = 2;
        out.push(i);
        true
    } else {
        state[i] = 3;
        false
    }
}

fn batch(rules: &mut [Rule], pick: impl Fn(&Kind) -> bool) -> Batch {
    let mut pats = Vec::new();
    let mut idx = Vec::new();
    for (i, r) in rules.iter_mut().enumerate() {
        if !pick(&r.kind) {
            continue;
        }
        let m = match &mut r.kind {
            Kind::Body(m) | Kind::RawBody(m) | Kind::Uri(m) | Kind::Full(m) => m,
            _ => continue,
        };
        if let Matcher::Fast(slot, re) | Matcher::Fancy { pre: Some((slot, re)), .. } = m {
            *slot = pats.len();
            pats.push(re.as_str().to_string());
            idx.push(i);
        }
    }
    let chunk =
        std::env::var("SARULES_SET_CHUNK").ok().and_then(|v| v.parse().ok()).unwrap_or(SET_CHUNK);
    let mut sets = Vec::new();
    if chunk > 0 {
        for c in pats.chunks(chunk) {
            match regex::bytes::RegexSetBuilder::new(c)
                .size_limit(50 << 20)
                .dfa_size_limit(2 << 20)
                .build()
            {
                Ok(s) => sets.push(s),
                Err(_) => {
                    sets.clear();
                    break;
                }
            }
        }
    }
    // no sets (or a failed build) means every rule runs alone
    let rules = if sets.is_empty() { Vec::new() } else { idx };
    Batch { sets, chunk, len: pats.len(), rules }
}

/// Literal gates for the text rules `pick` selects: the regex each matcher runs first
/// (the superset for backtracking ones) decides which literals a text must contain.
fn gates(rules: &[Rule], on: bool, pick: impl Fn(&Kind) -> bool) -> gate::Gates {
    let mut gated = Vec::new();
    if !on {
        return gate::Gates::build(gated);
    }
    for (i, r) in rules.iter().enumerate() {
        let m = match &r.kind {
            k @ (Kind::Body(m) | Kind::RawBody(m) | Kind::Uri(m) | Kind::Full(m)) if pick(k) => m,
            _ => continue,
        };
        let first = match m {
            Matcher::Fast(_, re) | Matcher::Guarded { main: re, .. } => re,
            Matcher::Fancy { pre: Some((_, re)), .. } => re,
            Matcher::Fancy { pre: None, .. } => continue,
        };
        if let Some(lits) = gate::required(first.as_str()) {
            gated.push((i, lits));
        }
    }
    gate::Gates::build(gated)
}

/// Patterns per `RegexSet`; 0 runs every rule's own regex instead. Measured on the stock
/// set (400 corpus messages, release): no sets p50 6.3 ms / p99 27 ms, sets of 16 11.5 / 66,
/// sets of 64 18.6 / 160: each `regex` has its own literal prefilter and lazy DFA, a set of
/// many patterns has neither and falls back to the PikeVM. Kept for measuring
/// (`SARULES_SET_CHUNK=N`).
const SET_CHUNK: usize = 0;

/// Time spent on backtracking for one message: only PCRE2 work counts, the
/// linear-time engine needs no budget. Each match is also bounded by the backtrack limit,
/// so one call cannot overshoot by much.
struct Budget {
    spent: Duration,
    limit: Duration,
    cut: Vec<String>,
}

impl Budget {
    fn fancy(&mut self, re: &pcre2::bytes::Regex, text: &str, name: &str) -> bool {
        if self.spent > self.limit {
            self.cut.push(name.to_string());
            return false;
        }
        let t0 = Instant::now();
        let r = re.is_match(text.as_bytes());
        self.spent += t0.elapsed();
        match r {
            Ok(m) => m,
            Err(_) => {
                self.cut.push(name.to_string());
                false
            }
        }
    }

    fn fancy_count(
        &mut self,
        re: &pcre2::bytes::Regex,
        text: &str,
        name: &str,
        max: usize,
    ) -> usize {
        if self.spent > self.limit {
            self.cut.push(name.to_string());
            return 0;
        }
        let t0 = Instant::now();
        let mut n = 0;
        for m in re.find_iter(text.as_bytes()) {
            match m {
                Ok(_) => n += 1,
                Err(_) => {
                    self.cut.push(name.to_string());
                    break;
                }
            }
            if n >= max || t0.elapsed() + self.spent > self.limit {
                break;
            }
        }
        self.spent += t0.elapsed();
        n
    }
}

impl RuleSet {
    /// Rules loaded (including sub-rules and metas).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Every rule with a non-zero score: name, score, description.
    pub fn symbols(&self) -> impl Iterator<Item = (&str, f64, &str)> {
        self.rules
            .iter()
            .filter(|r| r.score != 0.0)
            .map(|r| (r.name.as_str(), r.score, r.describe.as_str()))
    }

    /// The rules that fired with a non-zero score.
    pub fn check(&self, msg: &SaMessage) -> Vec<Hit> {
        self.check_report(msg).hits
    }

    /// [`RuleSet::check`], also naming the rules the time budget cut.
    pub fn check_report(&self, msg: &SaMessage) -> CheckReport {
        self.check_inner(msg, None)
    }

    /// Time each rule took on this message (metas excluded), slowest first: for finding
    /// the rules that dominate the check time.
    pub fn profile(&self, msg: &SaMessage) -> Vec<(String, Duration)> {
        let mut times = vec![Duration::ZERO; self.rules.len()];
        self.check_inner(msg, Some(&mut times));
        let mut out: Vec<(String, Duration)> =
            self.rules.iter().map(|r| r.name.clone()).zip(times).collect();
        out.sort_by_key(|t| std::cmp::Reverse(t.1));
        out
    }

    fn check_inner(&self, msg: &SaMessage, mut times: Option<&mut [Duration]>) -> CheckReport {
        let mut budget = Budget { spent: Duration::ZERO, limit: self.opts.budget, cut: Vec::new() };
        let mut vals = vec![0.0f64; self.rules.len()];
        let body_all: Vec<&str> = msg.body.iter().map(String::as_str).collect();
        let body_nosubj: Vec<&str> = body_all.iter().skip(1).copied().collect();
        let rawbody: Vec<&str> = msg.rawbody.iter().map(String::as_str).collect();
        let uris: Vec<&str> = msg.uris.iter().map(String::as_str).collect();
        let full = [msg.full.as_str()];
        let mut header_cache: HashMap<&HeaderTarget, Option<String>> = HashMap::new();
        let body_j = body_all.concat();
        let subj_len = body_all.first().map_or(0, |l| l.len());
        let raw_j = rawbody.join("\n");
        let uri_j = uris.join("\n");
        let hit_body = self.body.hits(&body_all);
        let hit_raw = self.rawbody.hits(&rawbody);
        let hit_uri = self.uri.hits(&uris);
        let hit_full = self.full.hits(&full);
        // which rules can match at all: the unguarded, and the guarded whose literal occurs
        // (one automaton pass per text type)
        let mut open = self.unguarded.clone();
        for (g, text) in self.gates.iter().zip([&body_j, &raw_j, &uri_j, &msg.full]) {
            g.scan(text.as_bytes(), &mut open);
        }
        for (i, r) in self.rules.iter().enumerate() {
            let t0 = times.as_ref().map(|_| Instant::now());
            let n = match &r.kind {
                Kind::Meta(_) => continue,
                Kind::Body(_) | Kind::RawBody(_) | Kind::Uri(_) | Kind::Full(_) if !open[i] => 0,
                Kind::Body(m) => {
                    let (texts, j) = if r.nosubject {
                        (&body_nosubj, body_j.get(subj_len..).unwrap_or(""))
                    } else {
                        (&body_all, body_j.as_str())
                    };
                    run_texts(m, texts, j, &hit_body, r, &mut budget)
                }
                Kind::RawBody(m) => run_texts(m, &rawbody, &raw_j, &hit_raw, r, &mut budget),
                Kind::Uri(m) => run_texts(m, &uris, &uri_j, &hit_uri, r, &mut budget),
                Kind::Full(m) => run_texts(m, &full, &msg.full, &hit_full, r, &mut budget),
                Kind::Exists(h) => usize::from(msg.get(h).is_some()),
                Kind::Header { target, m, neg, unset } => {
                    // many rules read the same header: render each target once per message
                    let v = header_cache
                        .entry(target)
                        .or_insert_with(|| header_value(msg, target))
                        .as_deref()
                        .or(unset.as_deref());
                    match v {
                        Some(v) => {
                            let hit = match_one(m, v, r, &mut budget);
                            usize::from(hit != *neg)
                        }
                        None => 0,
                    }
                }
                Kind::MimeHeader { target, m, neg } => {
                    let mut hit = false;
                    for p in &msg.parts {
                        let vals: Vec<&str> = p
                            .headers
                            .iter()
                            .filter(|h| target.names.iter().any(|n| h.name.eq_ignore_ascii_case(n)))
                            .map(|h| if target.raw { h.raw.as_str() } else { h.decoded.as_str() })
                            .collect();
                        if vals.is_empty() {
                            continue;
                        }
                        let v = vals.join("\n") + "\n";
                        if match_one(m, &v, r, &mut budget) != *neg {
                            hit = true;
                            break;
                        }
                    }
                    usize::from(hit)
                }
                Kind::Eval(call) => usize::from(eval::run(call, msg, &self.freemail)),
            };
            vals[i] = n as f64;
            if let (Some(t), Some(t0)) = (times.as_deref_mut(), t0) {
                if let Some(slot) = t.get_mut(i) {
                    *slot = t0.elapsed();
                }
            }
        }
        for &i in &self.meta_order {
            if let Kind::Meta(e) = &self.rules[i].kind {
                vals[i] = if e.eval(&vals) != 0.0 { 1.0 } else { 0.0 };
            }
        }
        let hits = self
            .rules
            .iter()
            .zip(&vals)
            .filter(|(r, v)| **v > 0.0 && r.score != 0.0)
            .map(|(r, _)| Hit {
                name: r.name.clone(),
                score: r.score,
                describe: r.describe.clone(),
            })
            .collect();
        budget.cut.sort();
        budget.cut.dedup();
        CheckReport { hits, out_of_budget: budget.cut }
    }
}

impl Batch {
    /// Which set patterns matched any of the texts; `None` if there is no usable set.
    fn hits(&self, texts: &[&str]) -> Option<Vec<bool>> {
        if self.rules.is_empty() {
            return None;
        }
        let mut hit = vec![false; self.len];
        for (k, set) in self.sets.iter().enumerate() {
            for t in texts {
                for i in set.matches(t.as_bytes()).iter() {
                    if let Some(h) = hit.get_mut(k * self.chunk + i) {
                        *h = true;
                    }
                }
            }
        }
        Some(hit)
    }
}

fn match_one(m: &Matcher, text: &str, r: &Rule, budget: &mut Budget) -> bool {
    match m {
        Matcher::Fast(_, re) => re.is_match(text.as_bytes()),
        Matcher::Guarded { main, not } => match guarded_count(main, not, text.as_bytes(), 1) {
            Some(n) => n > 0,
            None => {
                budget.cut.push(r.name.clone());
                false
            }
        },
        Matcher::Fancy { re, pre } => {
            pre.as_ref().is_none_or(|(_, p)| p.is_match(text.as_bytes()))
                && budget.fancy(re, text, &r.name)
        }
    }
}

/// Hit count of a text rule over its texts (each text counted separately, like SA's lines).
/// `joined` is the texts joined by newlines: a `joined` rule searches it once, and only a
/// match spanning lines (possible with `\s` or `[^x]`) sends it back to line by line.
fn run_texts(
    m: &Matcher,
    texts: &[&str],
    joined: &str,
    set_hits: &Option<Vec<bool>>,
    r: &Rule,
    budget: &mut Budget,
) -> usize {
    match m {
        Matcher::Fast(slot, re) => {
            if let Some(h) = set_hits {
                // the set ran on all lines; nosubject rules recheck below without line 0
                if !h.get(*slot).copied().unwrap_or(true) {
                    return 0;
                }
                if r.maxhits == 1 && !r.nosubject {
                    return 1;
                }
            }
            if r.joined {
                let mut n = 0;
                let mut spans = false;
                for mt in re.find_iter(joined.as_bytes()) {
                    let inner = &mt.as_bytes()[..mt.len().saturating_sub(1)];
                    if inner.contains(&b'\n') {
                        spans = true;
                        break;
                    }
                    n += 1;
                    if n >= r.maxhits {
                        return n;
                    }
                }
                if !spans {
                    return n;
                }
            }
            let mut n = 0;
            for t in texts {
                if r.maxhits == 1 {
                    if re.is_match(t.as_bytes()) {
                        return 1;
                    }
                } else {
                    n += re.find_iter(t.as_bytes()).take(r.maxhits - n).count();
                    if n >= r.maxhits {
                        break;
                    }
                }
            }
            n
        }
        Matcher::Guarded { main, not } => {
            let mut n = 0;
            for t in texts {
                match guarded_count(main, not, t.as_bytes(), r.maxhits - n) {
                    Some(k) => n += k,
                    None => {
                        budget.cut.push(r.name.clone());
                        break;
                    }
                }
                if n >= r.maxhits {
                    break;
                }
            }
            n
        }
        Matcher::Fancy { re, pre } => {
            if let (Some(h), Some((slot, _))) = (set_hits, pre) {
                if !h.get(*slot).copied().unwrap_or(true) {
                    return 0;
                }
            }
            if let Some((_, p)) = pre {
                if r.joined && !p.is_match(joined.as_bytes()) {
                    return 0;
                }
            }
            let mut n = 0;
            for t in texts {
                if pre.as_ref().is_some_and(|(_, p)| !p.is_match(t.as_bytes())) {
                    continue;
                }
                if r.maxhits == 1 {
                    if budget.fancy(re, t, &r.name) {
                        return 1;
                    }
                } else {
                    n += budget.fancy_count(re, t, &r.name, r.maxhits - n);
                    if n >= r.maxhits {
                        break;
                    }
                }
            }
            n
        }
    }
}

/// The value a header rule reads, or `None` when the header is absent.
fn header_value(msg: &SaMessage, t: &HeaderTarget) -> Option<String> {
    let mut fields: Vec<&HeaderField> = Vec::new();
    let mut all = false;
    for name in &t.names {
        match name.as_str() {
            "ALL" => all = true,
            "ToCc" => {
                fields.extend(msg.get_all("To"));
                fields.extend(msg.get_all("Cc"));
            }
            "MESSAGEID" => {
                for h in
                    ["Message-Id", "Resent-Message-Id", "X-Message-Id", "X-Original-Message-ID"]
                {
                    fields.extend(msg.get_all(h));
                }
            }
            "EnvelopeFrom" => {
                let f = msg.get("X-Envelope-From").or_else(|| msg.get("Return-Path"))?;
                let v = f.decoded.trim().trim_start_matches('<').trim_end_matches('>').to_string();
                return Some(v + "\n");
            }
            n => fields.extend(msg.get_all(n)),
        }
    }
    if all {
        let s: String = msg
            .headers
            .iter()
            .map(|h| {
                format!("{}: {}\n", h.name, if t.raw { h.raw.trim_start() } else { &h.decoded })
            })
            .collect();
        return Some(s);
    }
    let first = fields.first()?;
    if t.addr {
        let a = first.addr.clone().unwrap_or_else(|| {
            let d = &first.decoded;
            match (d.rfind('<'), d.rfind('>')) {
                (Some(s), Some(e)) if s < e => d[s + 1..e].to_string(),
                _ => d.trim().to_string(),
            }
        });
        return Some(a);
    }
    if t.name {
        return Some(first.display.clone().unwrap_or_default());
    }
    let mut s = String::new();
    for f in &fields {
        s.push_str(if t.raw { f.raw.trim_start() } else { &f.decoded });
        s.push('\n');
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ruleset_is_shareable() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<super::RuleSet>();
        send_sync::<super::SaMessage>();
    }

    #[test]
    fn guarded_lookahead_matches_like_perl() {
        let re = crate::perlre::PerlRe { source: "(?!billion)b.llion".into(), flags: "i".into() };
        let mut report = super::LoadReport::default();
        let m = super::compile_re(&re, &mut report, &super::Options::default()).expect("compiles");
        let super::Matcher::Guarded { main, not } = m else { panic!("not guarded: {m:?}") };
        let count = |t: &str| super::guarded_count(&main, &not, t.as_bytes(), 10);
        assert_eq!(count("a Billion dollars"), Some(0));
        assert_eq!(count("a b1llion dollars, a billion, a bi11ion"), Some(1));
        assert_eq!(report.backtracking, 0);
    }
}
