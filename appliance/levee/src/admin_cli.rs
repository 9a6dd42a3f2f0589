//! `levee queue`, `levee lists` and `levee status`: through the running engine when it
//! answers, else on the store directly (see `reach`). Both paths print the same.

use crate::reach::{self, unexpected, Reach};
use anyhow::{Context, Result};
use clap::Subcommand;
use levee_config::Config;
use levee_relay::control::{Reply, Request, Status};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct ConfigArg {
    /// The config file; its `data_dir` says where the engine and the store are.
    #[arg(long, short)]
    config: PathBuf,
}

impl ConfigArg {
    fn data_dir(&self) -> Result<PathBuf> {
        Ok(Config::load(&self.config)?.data_dir)
    }
}

#[derive(Subcommand, Debug)]
pub enum ListsCommand {
    /// Print every entry: id, entry, who added it and the note.
    Show(ConfigArg),
    /// Add an entry, e.g. `block sender-domain spam.example` or
    /// `allow ip 192.0.2.0/24 for domain:example.test`; prints its id. A sender or
    /// sender-domain allow entry applies only to mail its domain authenticates (SPF or
    /// aligned DKIM) unless it ends in `unauthenticated`, which lets forged mail in too.
    Add {
        #[command(flatten)]
        config: ConfigArg,
        /// Why the entry is there, shown with it.
        #[arg(long, default_value = "")]
        note: String,
        #[arg(required = true, num_args = 1..)]
        entry: Vec<String>,
    },
    /// Remove the entry with this id (as `show` prints it).
    Remove {
        #[command(flatten)]
        config: ConfigArg,
        id: u64,
    },
}

pub fn queue(args: &ConfigArg) -> Result<()> {
    let entries = match reach::reach(&args.data_dir()?)? {
        Reach::Engine(mut e) => match e.call(&Request::Queue)? {
            Reply::Queue { entries } => entries,
            other => return Err(unexpected(other)),
        },
        Reach::Store(s) => s.queue_all()?,
    };
    let now = levee_relay::now_unix();
    for e in entries {
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

pub fn lists(command: &ListsCommand) -> Result<()> {
    match command {
        ListsCommand::Show(config) => {
            let entries = match reach::reach(&config.data_dir()?)? {
                Reach::Engine(mut e) => match e.call(&Request::Lists)? {
                    Reply::Lists { entries } => entries,
                    other => return Err(unexpected(other)),
                },
                Reach::Store(s) => s.list_all()?,
            };
            for e in entries {
                let note =
                    if e.note.is_empty() { String::new() } else { format!("  # {}", e.note) };
                println!("{}  {}  (by {}){note}", e.id, e.entry, e.created_by);
            }
        }
        ListsCommand::Add { config, note, entry } => {
            let entry = entry.join(" ");
            let id = match reach::reach(&config.data_dir()?)? {
                Reach::Engine(mut e) => {
                    match e.call(&Request::ListAdd { entry, note: note.clone() })? {
                        Reply::ListAdded { id } => id,
                        other => return Err(unexpected(other)),
                    }
                }
                Reach::Store(s) => {
                    let parsed =
                        entry.parse().map_err(|why| anyhow::anyhow!("{entry:?}: {why}"))?;
                    s.list_add(&parsed, note, "cli", levee_relay::now_unix())?
                }
            };
            println!("{id}");
        }
        ListsCommand::Remove { config, id } => {
            let removed = match reach::reach(&config.data_dir()?)? {
                Reach::Engine(mut e) => match e.call(&Request::ListRemove { id: *id })? {
                    Reply::ListRemoved { removed } => removed,
                    other => return Err(unexpected(other)),
                },
                Reach::Store(s) => s.list_remove(*id)?,
            };
            if !removed {
                anyhow::bail!("no list entry {id}");
            }
        }
    }
    Ok(())
}

pub fn status(args: &ConfigArg) -> Result<()> {
    let data = args.data_dir()?;
    let (engine, status) = match reach::reach(&data)? {
        Reach::Engine(mut e) => match e.call(&Request::Status)? {
            Reply::Status(s) => ("running", s),
            other => return Err(unexpected(other)),
        },
        Reach::Store(s) => ("stopped", Status::of(&s, stored_model(&s, &data)?.counts())?),
    };
    println!("engine: {engine}");
    println!("queued: {}", status.queued);
    println!("held: {}", status.held);
    println!("list entries: {}", status.lists);
    println!("model: {} spam, {} ham", status.model_spam, status.model_ham);
    Ok(())
}

/// The model as stored (empty when none was trained).
pub fn stored_model(store: &levee_store::Store, data: &Path) -> Result<levee_filter::bayes::Model> {
    model_from(store.blob_get(levee_relay::BAYES_BLOB)?.as_deref())
        .with_context(|| format!("the model in {}", data.display()))
}

pub fn model_from(bytes: Option<&[u8]>) -> Result<levee_filter::bayes::Model> {
    Ok(match bytes {
        Some(b) => levee_filter::bayes::Model::from_bytes(b).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => levee_filter::bayes::Model::new(),
    })
}
