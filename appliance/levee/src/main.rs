//! `levee`: the appliance binary. `anyhow` lives here and nowhere else.

mod admin_cli;
mod gate;
mod learn_cli;
mod logging;
mod notify;
mod reach;
mod rules;
mod supervise;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use levee_config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "levee", version, about = "Levee spam-filtering mail gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train the content model from known spam and ham (folders of one message per file,
    /// Maildirs or mbox files) into the store under DATA. While the engine runs, the
    /// messages go through it and are added to its model (no --reset, no rule weights).
    Train(learn_cli::TrainArgs),
    /// Classify every message of a manifest (`path label source` per line, paths
    /// relative to the manifest) with the model under DATA, network checks off, and
    /// print spam caught and false positives, pooled and per source.
    Eval(learn_cli::EvalArgs),
    /// Run the engine (relay and delivery) in the foreground, logging to stderr.
    /// Without --config, runs on the embedded development defaults: SMTP on
    /// 127.0.0.1:2525, data in ./.levee-dev, example.test delivered to 127.0.0.1:2626.
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file; exits non-zero and names the line at fault.
    CheckConfig { file: PathBuf },
    /// Show the delivery queue.
    Queue(admin_cli::ConfigArg),
    /// Show, add and remove allow/block list entries.
    Lists {
        #[command(subcommand)]
        command: admin_cli::ListsCommand,
    },
    /// Whether the engine runs, and what the queue, the lists and the model hold.
    Status(admin_cli::ConfigArg),
    /// As root: apply the gate, bind the ports and run the engine unprivileged, restarting it
    /// if it dies. SIGHUP reloads the config, SIGTERM stops gracefully.
    Supervise {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The engine as started by `supervise` (inherits its sockets; not for direct use).
    #[command(hide = true)]
    Engine {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The appliance firewall and the downstream server's rules.
    Gate {
        #[command(subcommand)]
        command: gate::GateCommand,
    },
    /// SpamAssassin-language rule files.
    Rules {
        #[command(subcommand)]
        command: rules::RulesCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(config.as_deref()),
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("ok");
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        },
        Command::Queue(args) => admin_cli::queue(&args),
        Command::Lists { command } => admin_cli::lists(&command),
        Command::Status(args) => admin_cli::status(&args),
        Command::Supervise { config } => supervise::supervise(&config),
        Command::Engine { config } => supervise::engine(&config),
        Command::Gate { command } => gate::run(command),
        Command::Rules { command } => return rules::run(command),
        Command::Train(args) => learn_cli::train(&args),
        Command::Eval(args) => learn_cli::eval(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("levee: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The configuration `levee run` uses when given none.
const DEV_CONFIG: &str = include_str!("../samples/dev.toml");

fn run(path: Option<&std::path::Path>) -> Result<()> {
    logging::init(false);
    let config = match path {
        Some(p) => Config::load(p)?,
        None => {
            tracing::info!("no --config: using the embedded development defaults");
            Config::parse(DEV_CONFIG, "embedded dev.toml")?
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let listeners = levee_relay::bind(&config).await?;
        let console_listeners = levee_console::bind(&config).await?;
        let console_on = config.console.is_some();
        let engine = levee_relay::Engine::open(config)?;
        engine.set_log_ring(crate::logging::ring());
        if let Some(p) = path {
            engine.set_config_path(std::path::absolute(p)?);
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let console = console_on.then(|| {
            tokio::spawn(levee_console::serve(engine.clone(), console_listeners, stop_rx.clone()))
        });
        let control = levee_relay::control::start(engine.clone(), stop_rx.clone());
        let relay = tokio::spawn(engine.clone().run(listeners, stop_rx));
        wait_for_stop(path, &engine).await?;
        let _ = stop_tx.send(true);
        relay.await.context("relay task")??;
        if let Some(c) = control {
            c.await.context("control socket task")?;
        }
        if let Some(c) = console {
            c.await.context("console task")??;
        }
        Ok(())
    })
}

/// Returns on SIGTERM or SIGINT; reloads the config on SIGHUP (the old one stays
/// if the new one is invalid).
async fn wait_for_stop(path: Option<&std::path::Path>, engine: &levee_relay::Engine) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match path.map(Config::load).unwrap_or_else(|| Config::parse(DEV_CONFIG, "embedded")) {
                Ok(c) => {
                    engine.reload(c);
                    tracing::info!("config reloaded");
                }
                Err(e) => tracing::error!(error = %e, "config reload refused; keeping the old one"),
            },
        }
    }
    tracing::info!("stopping");
    Ok(())
}
