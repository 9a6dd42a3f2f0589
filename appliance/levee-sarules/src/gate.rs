//! Literal gates: one Aho-Corasick pass over a text decides which regexes can match at all.
//!
//! Most rules need a word to be present ("viagra", "click here"): any match of the regex
//! contains one of a few literals. [`required`] derives such a set from the regex's syntax
//! tree; [`Gates`] searches every rule's literals in one pass (ASCII case-insensitive, as
//! the literals are lowercased), and a rule none of whose literals occur is not run. This
//! is a necessary condition only: a rule whose literal is present still runs its regex.
//! Running ~2,000 regexes one by one over a body costs each its own prefilter scan; one
//! automaton over all literals costs one.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex_syntax::hir::{Class, Hir, HirKind};

/// Most strings a node may expand to before it counts as "anything".
const MAX_SET: usize = 32;
/// Shortest literal worth gating on: shorter ones occur in nearly every text.
const MIN_LEN: usize = 3;

/// What one syntax node tells about the strings it matches.
struct Info {
    /// Every string the node can match (lowercased), when that set is small.
    exact: Option<Vec<Vec<u8>>>,
    /// Literals one of which every match contains; `None` when nothing useful is known.
    req: Option<Vec<Vec<u8>>>,
}

/// Literals (lowercase) one of which occurs in every match of `pattern`, or `None` if the
/// pattern cannot be gated. `pattern` is in `regex::bytes` syntax.
pub fn required(pattern: &str) -> Option<Vec<Vec<u8>>> {
    let hir = regex_syntax::ParserBuilder::new().utf8(false).build().parse(pattern).ok()?;
    let info = walk(&hir);
    let set = pick(info.req, info.exact)?;
    (quality(&set) >= MIN_LEN).then_some(set)
}

/// Shortest literal in the set: the gate is as selective as its weakest literal.
fn quality(set: &[Vec<u8>]) -> usize {
    set.iter().map(Vec::len).min().unwrap_or(0)
}

fn pick(a: Option<Vec<Vec<u8>>>, b: Option<Vec<Vec<u8>>>) -> Option<Vec<Vec<u8>>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if quality(&b) > quality(&a) { b } else { a }),
        (a, b) => a.or(b),
    }
}

fn dedup(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v.dedup();
    v
}

fn product(a: &[Vec<u8>], b: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
    if a.len() * b.len() > MAX_SET {
        return None;
    }
    let mut out = Vec::with_capacity(a.len() * b.len());
    for x in a {
        for y in b {
            let mut s = x.clone();
            s.extend_from_slice(y);
            out.push(s);
        }
    }
    Some(dedup(out))
}

fn class_bytes(c: &Class) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    match c {
        Class::Bytes(b) => {
            for r in b.iter() {
                for x in r.start()..=r.end() {
                    out.push(vec![x.to_ascii_lowercase()]);
                    if out.len() > 2 * MAX_SET {
                        return None;
                    }
                }
            }
        }
        Class::Unicode(u) => {
            for r in u.iter() {
                for ch in r.start()..=r.end() {
                    let mut buf = [0u8; 4];
                    out.push(ch.encode_utf8(&mut buf).as_bytes().to_ascii_lowercase());
                    if out.len() > 2 * MAX_SET {
                        return None;
                    }
                }
            }
        }
    }
    let out = dedup(out);
    (out.len() <= MAX_SET).then_some(out)
}

fn walk(h: &Hir) -> Info {
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => Info { exact: Some(vec![Vec::new()]), req: None },
        HirKind::Literal(l) => {
            let s = l.0.to_ascii_lowercase();
            Info { exact: Some(vec![s.clone()]), req: Some(vec![s]) }
        }
        HirKind::Class(c) => {
            let e = class_bytes(c);
            Info { req: e.clone(), exact: e }
        }
        HirKind::Capture(c) => walk(&c.sub),
        HirKind::Repetition(r) => {
            let sub = walk(&r.sub);
            if r.min == 0 {
                return Info { exact: None, req: None };
            }
            // a fixed small count of a known piece is still exact (`(?:ab){2}`)
            let exact = match (&sub.exact, r.max) {
                (Some(e), Some(max)) if max == r.min && r.min <= 4 => {
                    let mut acc = vec![Vec::new()];
                    let mut ok = true;
                    for _ in 0..r.min {
                        match product(&acc, e) {
                            Some(p) => acc = p,
                            None => {
                                ok = false;
                                break;
                            }
                        }
                    }
                    ok.then_some(acc)
                }
                _ => None,
            };
            Info { req: pick(sub.req, sub.exact), exact }
        }
        HirKind::Alternation(alts) => {
            let infos: Vec<Info> = alts.iter().map(walk).collect();
            let union = |f: &dyn Fn(&Info) -> Option<Vec<Vec<u8>>>| {
                let mut out = Vec::new();
                for i in &infos {
                    out.extend(f(i)?);
                    if out.len() > MAX_SET {
                        return None;
                    }
                }
                Some(dedup(out))
            };
            let exact = union(&|i: &Info| i.exact.clone());
            // each branch's best evidence; a branch with none makes the whole unknown
            let req = union(&|i: &Info| pick(i.req.clone(), i.exact.clone()));
            Info { exact, req }
        }
        HirKind::Concat(parts) => {
            let mut best: Option<Vec<Vec<u8>>> = None;
            // the running product of a stretch of exactly known pieces
            let mut run: Option<Vec<Vec<u8>>> = Some(vec![Vec::new()]);
            let mut all_exact = true;
            let mut whole: Option<Vec<Vec<u8>>> = Some(vec![Vec::new()]);
            for p in parts {
                let i = walk(p);
                best = pick(best, i.req.clone());
                match &i.exact {
                    Some(e) => {
                        whole = whole.and_then(|w| product(&w, e));
                        let next = run.as_ref().and_then(|r| product(r, e));
                        match next {
                            Some(n) => run = Some(n),
                            None => {
                                // too many combinations: close the stretch, start anew here
                                best = pick(best, run.take());
                                run = Some(e.clone());
                            }
                        }
                    }
                    None => {
                        all_exact = false;
                        best = pick(best, run.take());
                        run = Some(vec![Vec::new()]);
                    }
                }
            }
            best = pick(best, run);
            Info { exact: if all_exact { whole } else { None }, req: best }
        }
    }
}

/// The gated rules of one text type and the automaton over their literals.
#[derive(Debug, Default)]
pub struct Gates {
    ac: Option<AhoCorasick>,
    /// Literal index -> rules (indices into the caller's rule list) it opens.
    opens: Vec<Vec<usize>>,
}

impl Gates {
    /// `rules`: (rule index, literals) for every rule that has a gate.
    pub fn build(rules: Vec<(usize, Vec<Vec<u8>>)>) -> Gates {
        let mut lits: Vec<Vec<u8>> = Vec::new();
        let mut index: std::collections::HashMap<Vec<u8>, usize> = Default::default();
        let mut opens: Vec<Vec<usize>> = Vec::new();
        for (rule, set) in rules {
            for l in set {
                let k = *index.entry(l.clone()).or_insert_with(|| {
                    lits.push(l);
                    opens.push(Vec::new());
                    lits.len() - 1
                });
                opens[k].push(rule);
            }
        }
        let ac = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(&lits)
            .ok();
        Gates { ac, opens }
    }

    /// The rules a gate guards (none if the automaton could not be built: they all run).
    pub fn guarded(&self) -> impl Iterator<Item = usize> + '_ {
        self.ac.iter().flat_map(|_| self.opens.iter().flatten().copied())
    }

    /// Marks in `open` every rule one of whose literals occurs in `text`.
    pub fn scan(&self, text: &[u8], open: &mut [bool]) {
        let Some(ac) = &self.ac else { return };
        let mut seen = vec![false; self.opens.len()];
        for m in ac.find_overlapping_iter(text) {
            let k = m.pattern().as_usize();
            if !std::mem::replace(&mut seen[k], true) {
                for &r in &self.opens[k] {
                    if let Some(o) = open.get_mut(r) {
                        *o = true;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(p: &str) -> Option<Vec<String>> {
        required(p).map(|v| v.into_iter().map(|s| String::from_utf8(s).unwrap()).collect())
    }

    #[test]
    fn literals_that_every_match_contains() {
        assert_eq!(req(r"(?i-u)\bviagra\b"), Some(vec!["viagra".into()]));
        assert_eq!(req(r"(?-u)click\s+here"), Some(vec!["click".into()]));
        assert_eq!(
            req(r"(?i-u)(?:cheap|free) (?:pills|meds)"),
            Some(
                vec!["cheap meds", "cheap pills", "free meds", "free pills"]
                    .into_iter()
                    .map(String::from)
                    .collect()
            )
        );
        assert_eq!(req(r"(?-u)a(?:bcd)?e"), None, "optional parts are not required");
        assert_eq!(req(r"(?-u)\d+\.\d+"), None);
        assert_eq!(req(r"(?-u)x|longer"), None, "one branch too short gates nothing");
    }

    #[test]
    fn a_gate_opens_only_rules_whose_literal_occurs() {
        let g = Gates::build(vec![(0, vec![b"viagra".to_vec()]), (2, vec![b"lottery".to_vec()])]);
        let mut open = vec![false; 3];
        g.scan(b"Buy VIAGRA now", &mut open);
        assert_eq!(open, vec![true, false, false]);
        let mut guarded: Vec<usize> = g.guarded().collect();
        guarded.sort();
        assert_eq!(guarded, vec![0, 2]);
    }
}
