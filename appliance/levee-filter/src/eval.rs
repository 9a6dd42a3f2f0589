//! Training and measuring the content filter on a labelled corpus. The only module here that
//! reads files (and the clock, to time classification).
//!
//! Manifest format (tab-separated, optional header line starting with `path`):
//! `path  label  source  [sha256]`, with `path` relative to the manifest's folder and `label`
//! `spam` or `ham`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use levee_types::Action;

use crate::bayes::{self, Model};
use crate::score::{self, Policy};
use crate::FilterError;

/// One labelled message of a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Resolved against the manifest's folder.
    pub path: PathBuf,
    pub spam: bool,
    pub source: String,
}

/// Reads a `.tsv` manifest.
pub fn read_manifest(manifest: &Path) -> Result<Vec<ManifestEntry>, FilterError> {
    let text = std::fs::read_to_string(manifest).map_err(|e| FilterError::io(manifest, e))?;
    parse_manifest(&text, manifest.parent().unwrap_or(Path::new(".")), manifest)
}

/// Parses manifest text; `base` is the folder paths are relative to.
pub fn parse_manifest(
    text: &str,
    base: &Path,
    name: &Path,
) -> Result<Vec<ManifestEntry>, FilterError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let err = |reason: &str| FilterError::Manifest {
            path: name.display().to_string(),
            line: i + 1,
            reason: reason.to_owned(),
        };
        if line.trim().is_empty() || (i == 0 && line.starts_with("path\t")) {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() < 3 {
            return Err(err("expected path, label and source separated by tabs"));
        }
        let spam = match fields[1] {
            "spam" => true,
            "ham" => false,
            other => return Err(err(&format!("label must be spam or ham, not {other:?}"))),
        };
        if fields[0].is_empty() || Path::new(fields[0]).is_absolute() {
            return Err(err("path must be relative to the manifest"));
        }
        out.push(ManifestEntry { path: base.join(fields[0]), spam, source: fields[2].to_owned() });
    }
    Ok(out)
}

/// Trains on every entry of a manifest (as one batch); returns (spam, ham) learned.
pub fn train_manifest(model: &mut Model, manifest: &Path) -> Result<(usize, usize), FilterError> {
    let corpus = tokenize_manifest(&read_manifest(manifest)?)?;
    model.train_batch(&corpus);
    Ok(tally(&corpus))
}

/// The tokens and label of every entry, in order.
pub fn tokenize_manifest(
    entries: &[ManifestEntry],
) -> Result<Vec<(Vec<String>, bool)>, FilterError> {
    entries
        .iter()
        .map(|e| {
            let bytes = std::fs::read(&e.path).map_err(|err| FilterError::io(&e.path, err))?;
            Ok((bayes::tokenize(&bytes), e.spam))
        })
        .collect()
}

fn tally(corpus: &[(Vec<String>, bool)]) -> (usize, usize) {
    let spam = corpus.iter().filter(|(_, s)| *s).count();
    (spam, corpus.len() - spam)
}

/// A file of mail found under a path given to [`mail_files`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailFile {
    pub path: PathBuf,
    /// An mbox file: split at its `From ` lines.
    pub mbox: bool,
    /// How many messages it holds (1 unless `mbox`), for progress.
    pub messages: usize,
}

/// The files of mail under `path`, following symbolic links, in name order: a file itself
/// (an mbox when it starts with a `From ` line), a Maildir (its `cur/` and `new/`), or a
/// folder walked recursively (hidden files skipped; `*.mbox` files read as mbox).
pub fn mail_files(path: &Path) -> Result<Vec<MailFile>, FilterError> {
    let meta = std::fs::metadata(path).map_err(|e| FilterError::io(path, e))?;
    let mut out = Vec::new();
    if meta.is_dir() {
        let mut seen = std::collections::HashSet::new();
        walk(path, &mut seen, &mut out)?;
    } else {
        out.push(mail_file(path.to_path_buf(), true)?);
    }
    Ok(out)
}

fn mail_file(path: PathBuf, given: bool) -> Result<MailFile, FilterError> {
    let named_mbox = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("mbox"));
    if !(given || named_mbox) {
        return Ok(MailFile { path, mbox: false, messages: 1 });
    }
    let mut head = [0u8; 5];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(&path).map_err(|e| FilterError::io(&path, e))?;
        f.read(&mut head).map_err(|e| FilterError::io(&path, e))?
    };
    if !crate::mailbox::is_mbox(&head[..n]) {
        return Ok(MailFile { path, mbox: false, messages: 1 });
    }
    let bytes = std::fs::read(&path).map_err(|e| FilterError::io(&path, e))?;
    let messages = crate::mailbox::split_mbox(&bytes).len();
    Ok(MailFile { path, mbox: true, messages })
}

/// Recursion guarded by (device, inode), so a symbolic link back up the tree ends the walk
/// instead of looping.
fn walk(
    dir: &Path,
    seen: &mut std::collections::HashSet<(u64, u64)>,
    out: &mut Vec<MailFile>,
) -> Result<(), FilterError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).map_err(|e| FilterError::io(dir, e))?;
    if !seen.insert((meta.dev(), meta.ino())) {
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| FilterError::io(dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| FilterError::io(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    // A Maildir: only `cur/` and `new/` hold delivered mail.
    let maildir = entries.iter().any(|e| e.file_name() == "cur" || e.file_name() == "new");
    for e in entries {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || (maildir && name != "cur" && name != "new") {
            continue;
        }
        let path = e.path();
        // `metadata` follows symbolic links, to folders and to files alike.
        let meta = std::fs::metadata(&path).map_err(|err| FilterError::io(&path, err))?;
        if meta.is_dir() {
            walk(&path, seen, out)?;
        } else if meta.is_file() && crate::mailbox::is_mail_path(&name) {
            out.push(mail_file(path, false)?);
        }
    }
    Ok(())
}

/// Reads, tokenizes and labels the messages of `files` (each with its label), calling
/// `progress(done, total)` after each message; empty files are skipped.
pub fn tokenize_files(
    files: &[(MailFile, bool)],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<(Vec<String>, bool)>, FilterError> {
    let total = files.iter().map(|(f, _)| f.messages).sum();
    let mut corpus = Vec::with_capacity(total);
    for (f, spam) in files {
        for m in messages_of(f)? {
            corpus.push((bayes::tokenize(&m), *spam));
            progress(corpus.len(), total);
        }
    }
    Ok(corpus)
}

/// The messages of one file (an mbox holds many), blank ones left out.
pub fn messages_of(f: &MailFile) -> Result<Vec<Vec<u8>>, FilterError> {
    let bytes = std::fs::read(&f.path).map_err(|e| FilterError::io(&f.path, e))?;
    let mut messages = if f.mbox { crate::mailbox::split_mbox(&bytes) } else { vec![bytes] };
    messages.retain(|m| !m.iter().all(u8::is_ascii_whitespace));
    Ok(messages)
}

/// [`tokenize_files`] with each message's content findings too (Levee's rules and, when
/// given, the rule source's): what [`crate::fit::learn_rule_weights`] learns from. The rules
/// are the slow part (milliseconds a message), so messages are judged on every core.
pub fn judge_files(
    files: &[(MailFile, bool)],
    sa_rules: Option<&levee_sarules::RuleSet>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<crate::fit::Judged>, FilterError> {
    let total: usize = files.iter().map(|(f, _)| f.messages).sum();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut out = Vec::with_capacity(total);
    // A batch at a time, so memory holds one batch of raw messages, not the corpus.
    let mut batch: Vec<(Vec<u8>, bool)> = Vec::new();
    let mut flush = |batch: &mut Vec<(Vec<u8>, bool)>, out: &mut Vec<crate::fit::Judged>| {
        let per = batch.len().div_ceil(threads).max(1);
        let judged: Vec<crate::fit::Judged> = std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .chunks(per)
                .map(|chunk| {
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|(m, spam)| {
                                let mut findings = crate::rules::check(m);
                                if let Some(set) = sa_rules {
                                    findings.extend(crate::sa::findings(set, m));
                                }
                                crate::fit::Judged {
                                    tokens: bayes::tokenize(m),
                                    findings,
                                    spam: *spam,
                                }
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        });
        let before = out.len();
        out.extend(judged);
        batch.clear();
        // Every count, as `tokenize_files` reports them: callers pick the ones they print.
        for done in before + 1..=out.len() {
            progress(done, total);
        }
    };
    for (f, spam) in files {
        for m in messages_of(f)? {
            batch.push((m, *spam));
            if batch.len() >= 64 * threads {
                flush(&mut batch, &mut out);
            }
        }
    }
    if !batch.is_empty() {
        flush(&mut batch, &mut out);
    }
    Ok(out)
}

/// Trains on every message under `spam` and `ham` (see [`mail_files`]) as one batch;
/// returns (spam, ham) learned.
pub fn train_dirs(
    model: &mut Model,
    spam: &Path,
    ham: &Path,
) -> Result<(usize, usize), FilterError> {
    let mut files = Vec::new();
    for (dir, is_spam) in [(spam, true), (ham, false)] {
        files.extend(mail_files(dir)?.into_iter().map(|f| (f, is_spam)));
    }
    let corpus = tokenize_files(&files, &mut |_, _| {})?;
    model.train_batch(&corpus);
    Ok(tally(&corpus))
}

/// Spam caught and ham misfiled, for one source or pooled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub spam: usize,
    /// Spam quarantined or worse.
    pub caught: usize,
    pub ham: usize,
    /// Ham quarantined or worse.
    pub false_positives: usize,
    /// Ham tagged (delivered, but marked).
    pub ham_tagged: usize,
}

impl Tally {
    fn add(&mut self, spam: bool, action: Action) {
        let held = action >= Action::Quarantine;
        if spam {
            self.spam += 1;
            self.caught += usize::from(held);
        } else {
            self.ham += 1;
            self.false_positives += usize::from(held);
            self.ham_tagged += usize::from(action == Action::Tag);
        }
    }
    pub fn caught_pct(&self) -> f64 {
        pct(self.caught, self.spam)
    }
    pub fn fp_pct(&self) -> f64 {
        pct(self.false_positives, self.ham)
    }
}

fn pct(n: usize, d: usize) -> f64 {
    if d == 0 {
        0.0
    } else {
        100.0 * n as f64 / d as f64
    }
}

/// A percentage with two decimals, or "n/a" when there is nothing to divide by (a source
/// with no spam has no caught rate; one with no ham has no false-positive rate).
fn pct_cell(n: usize, d: usize) -> String {
    if d == 0 {
        "n/a".to_owned()
    } else {
        format!("{:.2}", pct(n, d))
    }
}

/// How one message was classified.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub path: PathBuf,
    pub spam: bool,
    pub source: String,
    pub score: f64,
    pub action: Action,
    /// `SYMBOL(weight) ...`
    pub summary: String,
    pub micros: u64,
}

/// One point of the ROC curve: what a quarantine threshold of `threshold` would give.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RocPoint {
    pub threshold: f64,
    pub caught_pct: f64,
    pub fp_pct: f64,
}

/// The result of [`evaluate`].
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub pooled: Tally,
    pub by_source: BTreeMap<String, Tally>,
    pub roc: Vec<RocPoint>,
    /// Per-message filter time (rules + tokenize + Bayes + scorer), in microseconds.
    pub p50_micros: u64,
    pub p99_micros: u64,
    pub max_micros: u64,
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// False positives and missed spam, worst first, for diagnosis.
    pub fn errors(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter().filter(|o| (o.action >= Action::Quarantine) != o.spam)
    }
}

/// Classifies every message of a manifest with the rules and the Bayes model (no network).
pub fn evaluate(
    model: &Model,
    sa_rules: Option<&levee_sarules::RuleSet>,
    policy: &Policy,
    manifest: &Path,
) -> Result<Report, FilterError> {
    let entries = read_manifest(manifest)?;
    let mut outcomes = Vec::with_capacity(entries.len());
    for e in entries {
        let bytes = std::fs::read(&e.path).map_err(|err| FilterError::io(&e.path, err))?;
        let start = Instant::now();
        let findings = crate::content_findings(model, sa_rules, &bytes);
        let v = score::verdict(policy, &findings, false);
        let micros = start.elapsed().as_micros() as u64;
        outcomes.push(Outcome {
            path: e.path,
            spam: e.spam,
            source: e.source,
            score: v.score,
            action: v.action,
            summary: v.findings_summary(),
            micros,
        });
    }
    Ok(report(outcomes))
}

/// Builds a report from classified messages.
pub fn report(outcomes: Vec<Outcome>) -> Report {
    let mut pooled = Tally::default();
    let mut by_source: BTreeMap<String, Tally> = BTreeMap::new();
    for o in &outcomes {
        pooled.add(o.spam, o.action);
        by_source.entry(o.source.clone()).or_default().add(o.spam, o.action);
    }
    let mut thresholds: Vec<f64> = outcomes.iter().map(|o| o.score).collect();
    thresholds.sort_by(f64::total_cmp);
    thresholds.dedup();
    let roc = thresholds
        .iter()
        .map(|&t| {
            let (mut caught, mut fp) = (0, 0);
            for o in &outcomes {
                if o.score >= t {
                    if o.spam {
                        caught += 1;
                    } else {
                        fp += 1;
                    }
                }
            }
            RocPoint {
                threshold: t,
                caught_pct: pct(caught, pooled.spam),
                fp_pct: pct(fp, pooled.ham),
            }
        })
        .collect();
    let mut times: Vec<u64> = outcomes.iter().map(|o| o.micros).collect();
    times.sort_unstable();
    let at =
        |q: f64| times.get(((times.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0);
    Report {
        pooled,
        by_source,
        roc,
        p50_micros: at(0.5),
        p99_micros: at(0.99),
        max_micros: times.last().copied().unwrap_or(0),
        outcomes,
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<14} {:>6} {:>8} {:>6} {:>6} {:>5} {:>6}",
            "source", "spam", "caught%", "ham", "fp%", "fp", "tag"
        )?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, t: &Tally| {
            writeln!(
                f,
                "{:<14} {:>6} {:>8} {:>6} {:>6} {:>5} {:>6}",
                name,
                t.spam,
                pct_cell(t.caught, t.spam),
                t.ham,
                pct_cell(t.false_positives, t.ham),
                t.false_positives,
                t.ham_tagged
            )
        };
        for (source, t) in &self.by_source {
            row(f, source, t)?;
        }
        row(f, "POOLED", &self.pooled)?;
        writeln!(f, "ROC (quarantine threshold -> caught% / fp%):")?;
        // The curve has a point per distinct score; show the informative ones.
        let mut last: Option<(f64, f64)> = None;
        for p in self.roc.iter().filter(|p| p.fp_pct <= 2.0 && p.caught_pct >= 50.0) {
            if last != Some((p.caught_pct, p.fp_pct)) {
                writeln!(f, "  >= {:>7.2}: {:>6.2} / {:.2}", p.threshold, p.caught_pct, p.fp_pct)?;
                last = Some((p.caught_pct, p.fp_pct));
            }
        }
        writeln!(
            f,
            "time per message: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            self.p50_micros as f64 / 1000.0,
            self.p99_micros as f64 / 1000.0,
            self.max_micros as f64 / 1000.0
        )?;
        write!(
            f,
            "caught={} fp={} spam={} ham={}",
            pct_cell(self.pooled.caught, self.pooled.spam),
            pct_cell(self.pooled.false_positives, self.pooled.ham),
            self.pooled.spam,
            self.pooled.ham
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_parsing() {
        let text =
            "path\tlabel\tsource\tsha256\ntrain/a.eml\tspam\tx\tabc\n\ntrain/b.eml\tham\ty\n";
        let m = parse_manifest(text, Path::new("/c"), Path::new("m.tsv")).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[0],
            ManifestEntry { path: "/c/train/a.eml".into(), spam: true, source: "x".into() }
        );
        assert!(!m[1].spam);
        let e = parse_manifest("a\tmaybe\tx\n", Path::new("/"), Path::new("m.tsv")).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        assert!(parse_manifest("a spam x\n", Path::new("/"), Path::new("m")).is_err());
        assert!(parse_manifest("/etc/passwd\tspam\tx\n", Path::new("/"), Path::new("m")).is_err());
    }

    #[test]
    fn train_dirs_walks_recursively() {
        let root =
            std::env::temp_dir().join(format!("levee-filter-train-dirs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (spam, ham) = (root.join("spam"), root.join("ham"));
        std::fs::create_dir_all(spam.join("nested")).unwrap();
        std::fs::create_dir_all(&ham).unwrap();
        std::fs::write(spam.join("1.eml"), "Subject: cheap pills\r\n\r\nbuy cheap pills now\r\n")
            .unwrap();
        std::fs::write(spam.join("nested/2.eml"), "Subject: pills\r\n\r\ncheap pills\r\n").unwrap();
        std::fs::write(ham.join("3.eml"), "Subject: agenda\r\n\r\nmeeting agenda attached\r\n")
            .unwrap();
        let mut model = Model::new();
        let counts = train_dirs(&mut model, &spam, &ham);
        let missing = train_dirs(&mut Model::new(), &root.join("nope"), &ham);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(counts.unwrap(), (2, 1));
        assert_eq!(model.counts(), (2, 1));
        assert!(matches!(missing, Err(FilterError::Io { .. })));
    }

    #[test]
    fn mail_files_follow_symlinks_and_read_maildir_and_mbox() {
        let root =
            std::env::temp_dir().join(format!("levee-filter-mail-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let real = root.join("real");
        std::fs::create_dir_all(real.join("Maildir/cur")).unwrap();
        std::fs::create_dir_all(real.join("Maildir/tmp")).unwrap();
        std::fs::write(real.join("Maildir/cur/1:2,S"), "Subject: a\n\nA\n").unwrap();
        std::fs::write(real.join("Maildir/tmp/2"), "Subject: partial\n").unwrap();
        std::fs::write(real.join("Maildir/dovecot-uidlist"), "x").unwrap();
        std::fs::write(real.join("box.mbox"), "From a\nS: 1\n\nx\nFrom b\nS: 2\n\ny\n").unwrap();
        std::fs::write(root.join("one.eml"), "Subject: one\n\nbody\n").unwrap();
        let top = root.join("top");
        std::fs::create_dir_all(&top).unwrap();
        std::os::unix::fs::symlink(&real, top.join("linked")).unwrap();
        std::os::unix::fs::symlink(root.join("one.eml"), top.join("file.eml")).unwrap();
        // A loop back up the tree ends the walk.
        std::os::unix::fs::symlink(&top, top.join("loop")).unwrap();
        let files = mail_files(&top).unwrap();
        let linked = mail_files(&root.join("real/box.mbox")).unwrap();
        let corpus = tokenize_files(
            &files.iter().map(|f| (f.clone(), true)).collect::<Vec<_>>(),
            &mut |_, _| {},
        )
        .unwrap();
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(files.len(), 3, "{files:?}");
        assert_eq!(files.iter().map(|f| f.messages).sum::<usize>(), 4);
        assert!(linked[0].mbox);
        assert_eq!(corpus.len(), 4);
    }

    #[test]
    fn report_says_na_without_spam_or_ham() {
        let r = report(vec![outcome(false, "hamonly", -1.0, Action::Accept)]);
        let text = r.to_string();
        let row = text.lines().find(|l| l.starts_with("hamonly")).unwrap();
        assert!(row.contains("n/a"), "{text}");
        assert_eq!(text.lines().last().unwrap(), "caught=n/a fp=0.00 spam=0 ham=1");
    }

    fn outcome(spam: bool, source: &str, score: f64, action: Action) -> Outcome {
        Outcome {
            path: "x".into(),
            spam,
            source: source.into(),
            score,
            action,
            summary: String::new(),
            micros: 10,
        }
    }

    #[test]
    fn report_counts_and_last_line() {
        let r = report(vec![
            outcome(true, "a", 9.0, Action::Quarantine),
            outcome(true, "a", 16.0, Action::Reject),
            outcome(true, "b", 1.0, Action::Accept),
            outcome(false, "b", 7.0, Action::Quarantine),
            outcome(false, "b", 4.5, Action::Tag),
            outcome(false, "c", -3.0, Action::Accept),
        ]);
        assert_eq!(
            r.pooled,
            Tally { spam: 3, caught: 2, ham: 3, false_positives: 1, ham_tagged: 1 }
        );
        assert_eq!(r.by_source["a"].caught, 2);
        assert_eq!(r.by_source["b"].false_positives, 1);
        assert_eq!(r.errors().count(), 2);
        let text = r.to_string();
        assert_eq!(text.lines().last().unwrap(), "caught=66.67 fp=33.33 spam=3 ham=3");
        // Threshold at the lowest score catches everything.
        assert_eq!(r.roc[0], RocPoint { threshold: -3.0, caught_pct: 100.0, fp_pct: 100.0 });
        let last = r.roc.last().unwrap();
        assert_eq!((last.caught_pct, last.fp_pct), (100.0 / 3.0, 0.0));
    }
}
