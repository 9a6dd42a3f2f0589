//! `levee rules`: SpamAssassin-language rule files (see `levee-sarules`).

use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum RulesCommand {
    /// Load the `*.cf` files of each DIR (later ones override earlier ones) and report how
    /// many rules load and why the others are skipped; exits 1 naming FILE:LINE of a bad file.
    Check {
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
}

pub fn run(command: RulesCommand) -> ExitCode {
    match command {
        RulesCommand::Check { dirs } => {
            let dirs: Vec<&std::path::Path> = dirs.iter().map(PathBuf::as_path).collect();
            match levee_sarules::load_dirs(&dirs) {
                Ok((_, report)) => {
                    use std::io::Write;
                    // a closed pipe (`| head`) is not an error worth a panic
                    let _ = write!(std::io::stdout().lock(), "{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
