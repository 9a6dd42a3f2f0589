//! `levee train` and `levee eval`: through the running engine when it answers (see
//! `reach`), else on the store directly.

use crate::admin_cli;
use crate::reach::{self, Reach};
use anyhow::{bail, Context, Result};
use levee_filter::bayes::Model;
use levee_filter::eval::MailFile;
use levee_relay::control::{Bytes, Reply, Request, MAX_REQUEST};
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
    let store = match reach::reach(&args.data)? {
        Reach::Engine(engine) => return train_through(engine, args, &files),
        Reach::Store(store) => store,
    };
    let mut model =
        if args.reset { Model::new() } else { admin_cli::stored_model(&store, &args.data)? };
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
    // Only two blobs are read; the store is closed again before the (long) judging, so
    // an engine can start meanwhile.
    let (bayes, weights) = match reach::reach(&args.data)? {
        Reach::Engine(mut engine) => match engine.call(&Request::Model)? {
            Reply::Model { bayes, rule_weights } => (bayes.map(|b| b.0), rule_weights.map(|b| b.0)),
            other => return Err(reach::unexpected(other)),
        },
        Reach::Store(store) => (
            store.blob_get(levee_relay::BAYES_BLOB)?,
            store.blob_get(levee_relay::RULE_WEIGHTS_BLOB)?,
        ),
    };
    let model = admin_cli::model_from(bayes.as_deref())
        .with_context(|| format!("the model in {}", args.data.display()))?;
    let mut policy = levee_filter::score::Policy::default();
    let rules = args.rules.load(&args.data)?;
    if let Some(r) = &rules {
        let learned = match &weights {
            Some(b) => levee_filter::fit::weights_from_bytes(b),
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

/// Raw bytes per training request: well under `MAX_REQUEST` once base64 adds a third, and
/// small enough that progress shows every few seconds.
const BATCH_BYTES: usize = 4 << 20;
/// Messages per training request, at most (the engine swaps its model per 500).
const BATCH_MESSAGES: usize = 500;

/// `levee train` while the engine runs: the messages go to the engine's own training path
/// (the console upload's), a batch per request. That path adds to the model in use; it
/// neither starts it afresh nor fits the rules' weights, which need the engine stopped.
fn train_through(
    mut engine: reach::Engine,
    args: &TrainArgs,
    files: &[(MailFile, bool)],
) -> Result<()> {
    if args.reset {
        bail!(
            "--reset replaces the model the running engine uses, so it needs the engine \
             stopped (systemctl stop levee, or end `levee run`); without --reset the messages \
             are added to the engine's model"
        );
    }
    // A message that base64 would push past the engine's request limit cannot be sent.
    let largest = (MAX_REQUEST - 4096) / 4 * 3;
    let total: usize = files.iter().map(|(f, _)| f.messages).sum();
    let (mut sent, mut counts, mut skipped, mut model) = (0, [0usize; 2], 0, (0, 0));
    for label in [true, false] {
        let mut batch: Vec<Bytes> = Vec::new();
        let mut bytes = 0;
        let mut send = |batch: &mut Vec<Bytes>, bytes: &mut usize| -> Result<()> {
            let messages = std::mem::take(batch);
            *bytes = 0;
            // Earlier batches stay learned; say how far it got, so nobody trains them twice.
            let reply = engine
                .call(&Request::Train { spam: label, messages })
                .with_context(|| format!("training stopped after {sent} of {total} messages"))?;
            match reply {
                Reply::Trained { learned, model_spam, model_ham } => {
                    sent += learned;
                    counts[usize::from(!label)] += learned;
                    model = (model_spam, model_ham);
                    eprintln!("trained {sent}/{total}");
                    Ok(())
                }
                other => Err(reach::unexpected(other)),
            }
        };
        for (file, _) in files.iter().filter(|(_, spam)| *spam == label) {
            let messages =
                levee_filter::eval::messages_of(file).map_err(|e| anyhow::anyhow!("{e}"))?;
            for m in messages {
                if m.len() > largest {
                    skipped += 1;
                    continue;
                }
                if !batch.is_empty()
                    && (bytes + m.len() > BATCH_BYTES || batch.len() == BATCH_MESSAGES)
                {
                    send(&mut batch, &mut bytes)?;
                }
                bytes += m.len();
                batch.push(Bytes(m));
            }
        }
        if !batch.is_empty() {
            send(&mut batch, &mut bytes)?;
        }
    }
    if skipped > 0 {
        eprintln!("levee: {skipped} message(s) over {} MiB not sent to the engine", largest >> 20);
    }
    if sent == 0 {
        bail!("no message found");
    }
    println!(
        "trained on {} spam and {} ham through the running engine; the model now knows {} spam, {} ham",
        counts[0], counts[1], model.0, model.1
    );
    println!(
        "the rules' weights and the held-back sample are refitted only by levee train with the engine stopped"
    );
    Ok(())
}
