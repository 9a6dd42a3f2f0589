//! `levee train`, `levee eval` and `levee queue`: the commands that open the store
//! directly, so they work only while the engine is stopped.

use anyhow::{bail, Context, Result};
use levee_config::Config;
use levee_filter::bayes::Model;
use levee_filter::eval::MailFile;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The data directory (`data_dir` of the config); created if missing.
    #[arg(long)]
    data: PathBuf,
    /// Known spam: a folder of messages (one file each, walked recursively), a Maildir
    /// or an mbox file. Give it more than once for several.
    #[arg(long)]
    spam: Vec<PathBuf>,
    /// Known ham, in the same forms as --spam.
    #[arg(long)]
    ham: Vec<PathBuf>,
    /// Start from an empty model instead of adding to the stored one (so training the
    /// same folders again does not count them twice).
    #[arg(long)]
    reset: bool,
    #[command(flatten)]
    rules: RulesArgs,
}

/// Which SpamAssassin-language rules judge the mail.
#[derive(clap::Args, Debug)]
pub struct RulesArgs {
    /// A folder of SpamAssassin-language rules; give it more than once for several. Default:
    /// the folders the engine reads when `[rules] dirs` is not set.
    #[arg(long = "rules")]
    rules: Vec<PathBuf>,
    /// Without SpamAssassin-language rules.
    #[arg(long, conflicts_with = "rules")]
    no_rules: bool,
}

impl RulesArgs {
    /// The named folders, or the engine's default ones (local rules from `data`).
    fn load(&self, data: &Path) -> Result<Option<std::sync::Arc<levee_filter::sa::Loaded>>> {
        let dirs = if self.no_rules {
            Vec::new()
        } else if self.rules.is_empty() {
            levee_filter::sa::default_dirs(data)
        } else {
            self.rules.clone()
        };
        if dirs.is_empty() {
            eprintln!("no SpamAssassin-language rules");
            return Ok(None);
        }
        let loaded = levee_filter::sa::load(&dirs).map_err(|e| anyhow::anyhow!("{e}"))?;
        let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        eprintln!("rules from {}: {} loaded", shown.join(" "), loaded.report.loaded);
        Ok(Some(loaded))
    }
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The data directory holding a trained model.
    #[arg(long)]
    data: PathBuf,
    /// Tab-separated `path label source` lines, paths relative to the manifest.
    #[arg(long)]
    manifest: PathBuf,
    #[command(flatten)]
    rules: RulesArgs,
}

#[derive(clap::Args, Debug)]
pub struct QueueArgs {
    #[arg(long, short)]
    config: PathBuf,
}

/// Opens the store under `data`, saying plainly when the engine holds it: sled takes an
/// exclusive lock for the one process that may use it.
fn open_store(data: &Path) -> Result<levee_store::Store> {
    match levee_store::Store::open(&data.join("db")) {
        Ok(s) => Ok(s),
        Err(e) if is_lock_error(&e.to_string()) => bail!(
            "the engine is running and holds {}; stop it first (systemctl stop levee, or \
             end `levee run`), or upload the messages in the console under Training (/training)",
            data.display()
        ),
        Err(e) => Err(e).with_context(|| format!("opening the store in {}", data.display())),
    }
}

fn is_lock_error(message: &str) -> bool {
    ["WouldBlock", "Resource temporarily unavailable", "os error 11", "could not acquire lock"]
        .iter()
        .any(|m| message.contains(m))
}

fn load_model(store: &levee_store::Store) -> Result<Model> {
    Ok(match store.blob_get(levee_relay::BAYES_BLOB)? {
        Some(bytes) => Model::from_bytes(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Model::new(),
    })
}

/// Every file of mail under each path, labelled; each unreadable path and each path with
/// no message in it is reported once, and any of them fails the command.
fn gather(args: &TrainArgs) -> Result<Vec<(MailFile, bool)>> {
    if args.spam.is_empty() && args.ham.is_empty() {
        bail!("nothing to train on: give --spam and/or --ham");
    }
    let mut files = Vec::new();
    let mut errors = 0;
    let labelled = args.spam.iter().map(|p| (p, true)).chain(args.ham.iter().map(|p| (p, false)));
    for (path, spam) in labelled {
        match levee_filter::eval::mail_files(path) {
            Ok(found) if found.iter().all(|f| f.messages == 0) => {
                eprintln!("levee: {}: no message found", path.display());
                errors += 1;
            }
            Ok(found) => files.extend(found.into_iter().map(|f| (f, spam))),
            Err(e) => {
                eprintln!("levee: {e}");
                errors += 1;
            }
        }
    }
    if errors > 0 {
        bail!("nothing trained: {errors} input(s) unusable");
    }
    Ok(files)
}

/// Prints `trained N/TOTAL` to stderr at most once a second, and every 500 messages.
fn progress_printer() -> impl FnMut(usize, usize) {
    let mut last = Instant::now();
    move |done, total| {
        if done == total || (done % 500 != 0 && last.elapsed() < Duration::from_secs(1)) {
            return;
        }
        last = Instant::now();
        eprintln!("trained {done}/{total}");
        let _ = std::io::stderr().flush();
    }
}

pub fn train(args: &TrainArgs) -> Result<()> {
    let files = gather(args)?;
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating {}", args.data.display()))?;
    let store = open_store(&args.data)?;
    let mut model = if args.reset { Model::new() } else { load_model(&store)? };
    let rules = args.rules.load(&args.data)?;
    let judged = levee_filter::eval::judge_files(
        &files,
        rules.as_ref().map(|r| &r.set),
        &mut progress_printer(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if judged.is_empty() {
        bail!("no message found");
    }
    let corpus: Vec<(Vec<String>, bool)> =
        judged.iter().map(|j| (j.tokens.clone(), j.spam)).collect();
    model.train_batch(&corpus);
    store.blob_put(levee_relay::BAYES_BLOB, &model.to_bytes())?;
    // The rules' weights, fitted on this mail with the stock scores as the prior.
    if let Some(r) = &rules {
        let policy =
            levee_filter::score::Policy { rule_scores: r.weights.clone(), ..Default::default() };
        let opts = levee_filter::fit::Options::default();
        let learned = levee_filter::fit::learn_rule_weights(&judged, &policy, &opts);
        store.blob_put(
            levee_relay::RULE_WEIGHTS_BLOB,
            &levee_filter::fit::weights_to_bytes(&learned),
        )?;
        println!("fitted the weights of {} rules that fired on this mail", learned.len());
    }
    store.flush()?;
    // The sample every later change of the model (votes, autolearn) is validated on.
    let (hspam, hham) = levee_relay::learning::store_heldback(&store, &corpus)?;
    println!("kept {hspam} spam and {hham} ham to validate learning on");
    let nspam = corpus.iter().filter(|(_, s)| *s).count();
    let nham = corpus.len() - nspam;
    let (tspam, tham) = model.counts();
    println!(
        "trained on {nspam} spam and {nham} ham; the model now knows {tspam} spam, {tham} ham, {} tokens",
        model.len()
    );
    Ok(())
}

pub fn eval(args: &EvalArgs) -> Result<()> {
    // Opening a store creates it: an empty model would score everything as unknown.
    if !args.data.join("db").is_dir() {
        bail!("{}: no trained model here (run levee train first)", args.data.display());
    }
    let listed =
        levee_filter::eval::read_manifest(&args.manifest).map_err(|e| anyhow::anyhow!("{e}"))?;
    if listed.is_empty() {
        bail!("{}: no message listed", args.manifest.display());
    }
    let store = open_store(&args.data)?;
    let model = load_model(&store)?;
    let mut policy = levee_filter::score::Policy::default();
    let rules = args.rules.load(&args.data)?;
    if let Some(r) = &rules {
        let learned = match store.blob_get(levee_relay::RULE_WEIGHTS_BLOB)? {
            Some(b) => levee_filter::fit::weights_from_bytes(&b),
            None => Default::default(),
        };
        policy.rule_scores =
            std::sync::Arc::new(levee_filter::fit::with_learned(&r.weights, &learned));
    }
    let report = levee_filter::eval::evaluate(
        &model,
        rules.as_ref().map(|r| &r.set),
        &policy,
        &args.manifest,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{report}");
    Ok(())
}

pub fn queue(args: &QueueArgs) -> Result<()> {
    let config = Config::load(&args.config)?;
    let store = open_store(&config.data_dir)?;
    let now = levee_relay::now_unix();
    for e in store.queue_all()? {
        let age = now.saturating_sub(e.received_at);
        println!(
            "{}  age {}s  attempts {}  next in {}s{}",
            e.id,
            age,
            e.attempts,
            e.next_attempt.saturating_sub(now),
            if e.held { "  HELD" } else { "" }
        );
        for r in &e.recipients {
            println!("    {}  {:?}  {}", r.rcpt, r.status, r.last_reply.as_deref().unwrap_or(""));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn lock_errors_are_recognised() {
        assert!(super::is_lock_error(
            "store open: IO error: Resource temporarily unavailable (os error 11)"
        ));
        assert!(!super::is_lock_error("store open: permission denied"));
    }
}
