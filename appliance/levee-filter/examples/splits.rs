//! Measures the filter the way it is used: on mail from sites and months it was not trained on.
//! `cargo run --release -p levee-filter --example splits -- CORPUS_DIR [SPLIT...]`
//!
//! Splits (all by default):
//! - `dev`: train on `train.tsv`, judge `dev.tsv` (same four sources, newer mail);
//! - `loso-SOURCE`: leave one source out: train on `train.tsv` without SOURCE, judge every
//!   message of SOURCE (train and dev: the model never saw that site);
//! - `time`: train on the oldest half (by Date) of each source's `train.tsv` rows, judge
//!   `dev.tsv`, so there is a gap of months between what was learned and what is judged.
//!
//! Each split prints caught % and false positives per source and pooled (default policy,
//! caught = quarantine or worse), and spam caught at <= 0.1% false positives (the best
//! threshold on the score, read off the split's own ROC: an upper bound, not a setting).
//! `--tsv` prints one machine-readable line per split as well.
//!
//! SpamAssassin's rules are loaded from `SPLITS_SA_DIRS` (colon-separated, default
//! `/usr/share/spamassassin`; empty: none) and their hits cached per file in
//! `target/splits-sa-hits.tsv` (the hits do not depend on training). `SPLITS_WEIGHTS`
//! (`SYMBOL=W,...`) and `SPLITS_THRESHOLDS` (`TAG,QUARANTINE`) override the default policy.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use levee_filter::eval::{self, ManifestEntry};
use levee_filter::score::{self, Policy};
use levee_filter::{bayes, rules, Finding};
use levee_types::Action;

struct Msg {
    entry: ManifestEntry,
    /// Seconds since the epoch from the Date header (0 when missing).
    date: i64,
    tokens: Vec<String>,
    rules: Vec<Finding>,
}

/// SpamAssassin hits per file, computed once and kept in a cache file.
type Hits = HashMap<PathBuf, Vec<Finding>>;

/// SpamAssassin hits per file (cached) and the rules' weights.
fn sa_hits(entries: &[&ManifestEntry]) -> Result<(Hits, HashMap<String, f64>), String> {
    let dirs = std::env::var("SPLITS_SA_DIRS").unwrap_or_else(|_| "/usr/share/spamassassin".into());
    let dirs: Vec<PathBuf> = dirs.split(':').filter(|d| !d.is_empty()).map(PathBuf::from).collect();
    if dirs.is_empty() {
        return Ok(Default::default());
    }
    let loaded = levee_filter::sa::load(&dirs).map_err(|e| e.to_string())?;
    eprint!("SpamAssassin rules: {}", loaded.report);
    let weights = (*loaded.weights).clone();
    let set = &loaded.set;
    let cache = PathBuf::from(format!(
        "target/splits-sa-hits-{}.tsv",
        dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join("_").replace('/', "")
    ));
    let mut out: HashMap<PathBuf, Vec<Finding>> = HashMap::new();
    if let Ok(text) = std::fs::read_to_string(&cache) {
        for line in text.lines() {
            let mut cols = line.split('\t');
            let path = PathBuf::from(cols.next().unwrap_or_default());
            let hits = cols.next().unwrap_or_default();
            let f =
                hits.split(' ').filter(|h| !h.is_empty()).map(|h| Finding::new(h, "")).collect();
            out.insert(path, f);
        }
    }
    let todo: Vec<&ManifestEntry> =
        entries.iter().copied().filter(|e| !out.contains_key(&e.path)).collect();
    if todo.is_empty() {
        return Ok((out, weights));
    }
    let t = std::time::Instant::now();
    let per = todo.len().div_ceil(2);
    let found: Vec<(PathBuf, Vec<Finding>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = todo
            .chunks(per)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|e| {
                            let bytes = std::fs::read(&e.path).unwrap_or_default();
                            (e.path.clone(), levee_filter::sa::findings(set, &bytes))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    eprintln!("checked {} messages in {:.1}s", found.len(), t.elapsed().as_secs_f64());
    let mut text = String::new();
    for (path, hits) in &found {
        let names: Vec<&str> = hits.iter().map(|f| f.symbol.as_str()).collect();
        text.push_str(&format!("{}\t{}\n", path.display(), names.join(" ")));
    }
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cache)
        .map_err(|e| e.to_string())?;
    file.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
    out.extend(found);
    Ok((out, weights))
}

/// The default policy with the rules' scores and any `SPLITS_*` overrides.
fn policy(rule_scores: HashMap<String, f64>) -> Policy {
    let mut p = Policy { rule_scores: std::sync::Arc::new(rule_scores), ..Policy::default() };
    if let Ok(w) = std::env::var("SPLITS_WEIGHTS") {
        for kv in w.split(',').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').expect("SYMBOL=W");
            p.weights.insert(k.to_owned(), v.parse().expect("a number"));
        }
    }
    if let Ok(t) = std::env::var("SPLITS_THRESHOLDS") {
        let (tag, q) = t.split_once(',').expect("TAG,QUARANTINE");
        p.tag_at = tag.parse().expect("a number");
        p.quarantine_at = q.parse().expect("a number");
    }
    p
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        eprintln!("usage: splits CORPUS_DIR [dev|time|loso-SOURCE...] [--tsv]");
        return ExitCode::from(2);
    };
    let tsv = args.iter().any(|a| a == "--tsv");
    let time = args.iter().any(|a| a == "--time");
    let dump_dir = std::env::var_os("SPLITS_DUMP").map(PathBuf::from);
    let wanted: Vec<&str> =
        args[1..].iter().map(String::as_str).filter(|a| !a.starts_with("--")).collect();
    let dir = Path::new(dir);
    let t = std::time::Instant::now();
    // Experiments: token prefixes left out of the model (`SPLITS_DROP=ct:,html:`).
    let drop: Vec<String> = std::env::var("SPLITS_DROP")
        .unwrap_or_default()
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect();
    let load = |name: &str| -> Result<Vec<Msg>, String> {
        let entries = eval::read_manifest(&dir.join(name)).map_err(|e| e.to_string())?;
        entries
            .into_iter()
            .map(|entry| {
                let bytes = std::fs::read(&entry.path)
                    .map_err(|e| format!("{}: {e}", entry.path.display()))?;
                let date = mail_date(&bytes);
                let mut tokens = bayes::tokenize(&bytes);
                tokens.retain(|t| !drop.iter().any(|d| t.starts_with(d.as_str())));
                let rules = rules::check(&bytes);
                Ok(Msg { entry, date, tokens, rules })
            })
            .collect()
    };
    let (mut train, mut dev) = match (load("train.tsv"), load("dev.tsv")) {
        (Ok(t), Ok(d)) => (t, d),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let all: Vec<&ManifestEntry> = train.iter().chain(dev.iter()).map(|m| &m.entry).collect();
    let (hits, sa_weights) = match sa_hits(&all) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    for m in train.iter_mut().chain(dev.iter_mut()) {
        m.rules.extend(hits.get(&m.entry.path).cloned().unwrap_or_default());
    }
    eprintln!(
        "read {} train and {} dev messages in {:.1}s",
        train.len(),
        dev.len(),
        t.elapsed().as_secs_f64()
    );
    let sources: Vec<String> = {
        let mut s: Vec<String> = train.iter().map(|m| m.entry.source.clone()).collect();
        s.sort();
        s.dedup();
        s
    };
    let mut splits: Vec<(String, Vec<&Msg>, Vec<&Msg>)> = Vec::new();
    splits.push(("dev".into(), train.iter().collect(), dev.iter().collect()));
    for s in &sources {
        let learn = train.iter().filter(|m| &m.entry.source != s).collect();
        let judge = train.iter().chain(dev.iter()).filter(|m| &m.entry.source == s).collect();
        splits.push((format!("loso-{s}"), learn, judge));
    }
    {
        let mut learn = Vec::new();
        for s in &sources {
            let mut rows: Vec<&Msg> = train.iter().filter(|m| &m.entry.source == s).collect();
            rows.sort_by_key(|m| m.date);
            learn.extend(rows.iter().take(rows.len() / 2).copied());
        }
        splits.push(("time".into(), learn, dev.iter().collect()));
    }
    let policy = policy(sa_weights);
    let show_fp = std::env::var_os("SPLITS_SHOW_FP").is_some();
    let show_miss = std::env::var_os("SPLITS_SHOW_MISS").is_some();
    // Rule weights fitted on each split's training mail, as `levee train` does
    // (`levee_filter::fit`); `SPLITS_FIT=LAMBDA` changes the pull, `SPLITS_FIT=off` keeps the
    // stock scores.
    let fit_lambda: Option<f64> = match std::env::var("SPLITS_FIT") {
        Ok(v) if v == "off" => None,
        Ok(v) => Some(v.parse().expect("a number or off")),
        Err(_) => Some(levee_filter::fit::Options::default().lambda),
    };
    // `SPLITS_COMBINE=BAYES,LINEAR,BIAS`: weights of the two opinions' log-odds.
    let combine: Option<(f64, f64, f64)> = std::env::var("SPLITS_COMBINE").ok().map(|c| {
        let v: Vec<f64> = c.split(',').map(|x| x.parse().expect("a number")).collect();
        (v[0], v[1], v[2])
    });
    for (name, learn, judge) in splits {
        if !wanted.is_empty() && !wanted.contains(&name.as_str()) {
            continue;
        }
        let corpus: Vec<(Vec<String>, bool)> =
            learn.iter().map(|m| (m.tokens.clone(), m.entry.spam)).collect();
        let mut model = bayes::Model::new();
        model.train_batch(&corpus);
        let policy = match fit_lambda {
            Some(lambda) => fitted_policy(&policy, &learn, lambda),
            None => policy.clone(),
        };
        let mut dump = String::new();
        if let Some(d) = &dump_dir {
            let names: Vec<String> =
                learn.iter().map(|m| format!("{}\n", m.entry.path.display())).collect();
            if let Err(e) = std::fs::write(d.join(format!("{name}.train")), names.concat()) {
                eprintln!("{}: {e}", d.display());
                return ExitCode::FAILURE;
            }
        }
        if time && name == "dev" {
            match time_filter(&model, &policy, &judge) {
                Ok((p50, p99)) => println!(
                    "   time per message (stock SpamAssassin rules loaded): p50 {p50:.3} ms, p99 {p99:.3} ms"
                ),
                Err(e) => eprintln!("timing: {e}"),
            }
        }
        let mut by_source: BTreeMap<&str, [usize; 4]> = BTreeMap::new();
        let mut scored: Vec<(f64, bool)> = Vec::with_capacity(judge.len());
        for m in &judge {
            let mut findings = m.rules.clone();
            match (combine, model.score_parts(&m.tokens)) {
                (Some((wb, wl, bias)), Some(parts)) => {
                    // Experiment: another combination of the two opinions.
                    let lb = logit(parts.bayes.clamp(1e-6, 1.0 - 1e-6));
                    let z = wb * lb + wl * parts.margin.unwrap_or(0.0) + bias;
                    let p = 1.0 / (1.0 + (-z).exp());
                    findings.push(Finding::new(bayes::bucket(p), ""));
                }
                _ => findings.extend(bayes::findings(&model, &m.tokens)),
            }
            let v = score::verdict(&policy, &findings, false);
            let held = v.action >= Action::Quarantine;
            if show_miss && !held && m.entry.spam {
                println!(
                    "   MISS {:.1} {} {}",
                    v.score,
                    m.entry.path.display(),
                    v.findings_summary()
                );
            }
            if show_fp && held && !m.entry.spam {
                println!(
                    "   FP {:.1} {} {}",
                    v.score,
                    m.entry.path.display(),
                    v.findings_summary()
                );
            }
            let row = by_source.entry(&m.entry.source).or_default();
            let k = if m.entry.spam { 0 } else { 2 };
            row[k] += 1;
            row[k + 1] += usize::from(held);
            scored.push((v.score, m.entry.spam));
            if dump_dir.is_some() {
                dump.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{}\n",
                    m.entry.path.display(),
                    if m.entry.spam { "spam" } else { "ham" },
                    m.entry.source,
                    u8::from(held),
                    v.score
                ));
            }
        }
        if let Some(d) = &dump_dir {
            if let Err(e) = std::fs::write(d.join(format!("{name}.levee")), dump) {
                eprintln!("{}: {e}", d.display());
                return ExitCode::FAILURE;
            }
        }
        let mut pooled = [0usize; 4];
        println!("== {name}: trained on {} messages, judged {}", learn.len(), judge.len());
        for (source, row) in &by_source {
            print_row(source, row);
            for (p, r) in pooled.iter_mut().zip(row) {
                *p += r;
            }
        }
        print_row("pooled", &pooled);
        let at = caught_at_fp(&scored, 0.001);
        match at {
            Some(c) => println!("   caught at <=0.1% FP: {c:.2}%"),
            None => println!("   caught at <=0.1% FP: n/a"),
        }
        if tsv {
            println!(
                "TSV\t{name}\t{}\t{}\t{}",
                pct(pooled[1], pooled[0]),
                pct(pooled[3], pooled[2]),
                at.map_or("n/a".into(), |c| format!("{c:.2}"))
            );
        }
    }
    ExitCode::SUCCESS
}

/// p50 and p99 in milliseconds of the whole filter per message, as the gateway runs it: read
/// from memory, Levee's rules, the stock SpamAssassin rules, tokenizer, both models, scorer.
/// Each message is classified twice and its faster time kept (a shared, busy machine).
fn time_filter(
    model: &bayes::Model,
    policy: &Policy,
    judge: &[&Msg],
) -> Result<(f64, f64), String> {
    let dirs = std::env::var("SPLITS_SA_DIRS").unwrap_or_else(|_| "/usr/share/spamassassin".into());
    let dirs: Vec<PathBuf> = dirs.split(':').filter(|d| !d.is_empty()).map(PathBuf::from).collect();
    let loaded = if dirs.is_empty() {
        None
    } else {
        Some(levee_filter::sa::load(&dirs).map_err(|e| e.to_string())?)
    };
    let set = loaded.as_ref().map(|l| &l.set);
    let mut ms = Vec::with_capacity(judge.len());
    for m in judge {
        let bytes = std::fs::read(&m.entry.path).map_err(|e| e.to_string())?;
        let mut best = f64::MAX;
        for _ in 0..2 {
            let t = std::time::Instant::now();
            let v = levee_filter::classify(model, set, policy, &bytes, false);
            std::hint::black_box(v);
            best = best.min(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.push(best);
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((q * (ms.len() - 1) as f64).round() as usize).min(ms.len() - 1)];
    Ok((at(0.50), at(0.99)))
}

fn print_row(name: &str, r: &[usize; 4]) {
    println!(
        "   {name:<14} spam {:>5} caught {:>7}%   ham {:>5} fp {:>6}% ({})",
        r[0],
        pct(r[1], r[0]),
        r[2],
        pct(r[3], r[2]),
        r[3]
    );
}

fn pct(n: usize, d: usize) -> String {
    if d == 0 {
        "n/a".into()
    } else {
        format!("{:.2}", 100.0 * n as f64 / d as f64)
    }
}

/// The share of spam scored above the lowest threshold that holds at most `fp` of ham.
fn caught_at_fp(scored: &[(f64, bool)], fp: f64) -> Option<f64> {
    let spam = scored.iter().filter(|s| s.1).count();
    let ham = scored.len() - spam;
    if spam == 0 || ham == 0 {
        return None;
    }
    let allowed = (fp * ham as f64).floor() as usize;
    let mut hams: Vec<f64> = scored.iter().filter(|s| !s.1).map(|s| s.0).collect();
    hams.sort_by(|a, b| b.total_cmp(a));
    // Anything strictly above the (allowed+1)-th highest ham score is held.
    let bar = hams[allowed.min(hams.len() - 1)];
    let caught = scored.iter().filter(|s| s.1 && s.0 > bar).count();
    Some(100.0 * caught as f64 / spam as f64)
}

/// The policy with SpamAssassin rule weights fitted on `learn` (`levee_filter::fit`).
fn fitted_policy(policy: &Policy, learn: &[&Msg], lambda: f64) -> Policy {
    let judged: Vec<levee_filter::fit::Judged> = learn
        .iter()
        .map(|m| levee_filter::fit::Judged {
            tokens: m.tokens.clone(),
            findings: m.rules.clone(),
            spam: m.entry.spam,
        })
        .collect();
    let env = |k: &str, d: f64| std::env::var(k).map_or(d, |v| v.parse().expect("a number"));
    let d = levee_filter::fit::Options::default();
    let opts = levee_filter::fit::Options {
        lambda,
        ham_weight: env("SPLITS_FIT_HAM", d.ham_weight),
        temperature: env("SPLITS_FIT_T", d.temperature),
        ..d
    };
    let mut out = policy.clone();
    out.weights.extend(levee_filter::fit::learn_rule_weights(&judged, policy, &opts));
    out
}

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

fn mail_date(bytes: &[u8]) -> i64 {
    mail_parser::MessageParser::default()
        .parse_headers(bytes)
        .and_then(|m| m.date().map(|d| d.to_timestamp()))
        .unwrap_or(0)
}
