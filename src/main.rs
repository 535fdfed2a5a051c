//! The `orca` binary: parse the command line, load and validate the configuration, build the
//! Pingora server and run it.

use clap::Parser;
use pingora::server::configuration::Opt;
use std::path::PathBuf;
use std::process::ExitCode;

/// Orca: a chunked, read-through cache for S3 and Azure Blob origins.
#[derive(Parser, Debug)]
#[command(name = "orca", version, about, subcommand_negates_reqs = true)]
struct Cli {
    /// Orca's configuration (YAML).
    #[arg(long, env = "ORCA_CONFIG", value_name = "FILE", required = true)]
    config: Option<PathBuf>,

    /// Cache control on a running replica's ops port (without one, Orca runs the server).
    #[command(subcommand)]
    command: Option<orca::cachectl::cli::Command>,

    /// Pingora's own server options: -c FILE, -d, -u, -t.
    #[command(flatten)]
    pingora: Opt,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(command) = cli.command {
        return orca::cachectl::cli::run(command);
    }
    // Required by clap when no subcommand is given.
    let Some(config_path) = cli.config else {
        eprintln!("orca: --config FILE (or ORCA_CONFIG) is required");
        return ExitCode::from(2);
    };
    let config = match orca::config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "orca: invalid configuration {}:\n{e}",
                config_path.display()
            );
            return ExitCode::from(2);
        }
    };
    if cli.pingora.test {
        // Build everything (this runs the cache store's start-up checks too), then let
        // Pingora check its own configuration and exit.
        if let Err(e) = orca::app::build_server(
            Opt {
                test: false,
                ..clone_opt(&cli.pingora)
            },
            config,
        ) {
            orca::app::after_check();
            eprintln!("orca: {e:#}");
            return ExitCode::from(2);
        }
        orca::app::after_check();
        println!("orca: configuration {} is valid", config_path.display());
        return ExitCode::SUCCESS;
    }
    orca::telemetry::init(&config.logging);
    match orca::app::build_server(cli.pingora, config) {
        Ok(server) => server.run_forever(),
        Err(e) => {
            eprintln!("orca: cannot start: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn clone_opt(o: &Opt) -> Opt {
    Opt {
        upgrade: o.upgrade,
        daemon: false,
        nocapture: o.nocapture,
        test: o.test,
        conf: o.conf.clone(),
    }
}
