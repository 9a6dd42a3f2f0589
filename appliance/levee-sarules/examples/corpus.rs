//! Runs SpamAssassin's stock rules over a labelled corpus and prints load figures, time per
//! message and the share of spam and ham scoring 5 or more (rules only, no Bayes, no network).
//!
//! `cargo run --release -p levee-sarules --example corpus -- [MANIFEST] [RULES_DIR] [SCORE_SET]`
//! (defaults: /work/shared/corpus/train.tsv, /usr/share/spamassassin, 2). Environment:
//! FAST=1 skips the backtracking rules, NOGATES=1 turns literal gates off, HITS_OUT=FILE
//! writes every rule's hit counts.

use std::path::Path;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let manifest = args.first().map_or("/work/shared/corpus/train.tsv", String::as_str);
    let rules = args.get(1).map_or("/usr/share/spamassassin", String::as_str);
    let t0 = Instant::now();
    let score_set = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    // FAST=1: without the backtracking-only rules
    let backtracking = std::env::var_os("FAST").is_none();
    // NOGATES=1: every text rule runs its regex (to check that gating changes nothing)
    let gates = std::env::var_os("NOGATES").is_none();
    let opts = levee_sarules::Options { score_set, backtracking, gates, ..Default::default() };
    let (set, report) = match levee_sarules::load_dirs_with(&[Path::new(rules)], opts) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    println!("load: {:.0} ms, RSS after load {} MB", t0.elapsed().as_secs_f64() * 1e3, rss_mb());
    print!("{report}");
    let text = std::fs::read_to_string(manifest).unwrap_or_else(|e| {
        eprintln!("{manifest}: {e}");
        std::process::exit(1);
    });
    let base = Path::new(manifest).parent().unwrap_or(Path::new("."));
    let mut times = Vec::new();
    let (mut spam, mut spam5, mut ham, mut ham5, mut cut) = (0, 0, 0, 0, 0);
    let mut rule_hits: std::collections::HashMap<String, (usize, usize)> = Default::default();
    for line in text.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 2 || cols[0] == "path" {
            continue;
        }
        let Ok(raw) = std::fs::read(base.join(cols[0])) else { continue };
        let t = Instant::now();
        let msg = levee_sarules::SaMessage::parse(&raw);
        let r = set.check_report(&msg);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        cut += usize::from(!r.out_of_budget.is_empty());
        let score: f64 = r.hits.iter().map(|h| h.score).sum();
        let is_spam = cols[1] == "spam";
        for h in &r.hits {
            let e = rule_hits.entry(h.name.clone()).or_default();
            if is_spam {
                e.0 += 1
            } else {
                e.1 += 1
            }
        }
        if is_spam {
            spam += 1;
            spam5 += usize::from(score >= 5.0);
        } else {
            ham += 1;
            ham5 += usize::from(score >= 5.0);
        }
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        times
            .get(((times.len() as f64 * p) as usize).min(times.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "{} messages: per message p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} hit the backtracking budget",
        times.len(),
        pct(0.5),
        pct(0.99),
        times.last().copied().unwrap_or(0.0),
        cut
    );
    println!(
        "score >= 5: spam {spam5}/{spam} ({:.1}%), ham {ham5}/{ham} ({:.2}%)",
        100.0 * spam5 as f64 / spam.max(1) as f64,
        100.0 * ham5 as f64 / ham.max(1) as f64
    );
    let mut top: Vec<_> = rule_hits.into_iter().collect();
    top.sort_by_key(|(_, (s, h))| std::cmp::Reverse(s + h));
    println!("most frequent hits (spam, ham):");
    for (n, (s, h)) in top.iter().take(25) {
        println!("  {n:30} {s:6} {h:6}");
    }
    // HITS_OUT=FILE: every rule's hit counts, for comparing two runs
    if let Some(out) = std::env::var_os("HITS_OUT") {
        top.sort();
        let lines: String = top.iter().map(|(n, (s, h))| format!("{n}\t{s}\t{h}\n")).collect();
        if let Err(e) = std::fs::write(&out, lines) {
            eprintln!("{}: {e}", Path::new(&out).display());
        }
    }
    println!("RSS at end {} MB", rss_mb());
}

fn rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        })
        .map_or(0, |kb| kb / 1024)
}
