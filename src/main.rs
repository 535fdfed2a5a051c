//! The `orca` binary: parse the command line, load and validate the configuration, build the
//! Pingora server and run it.

use clap::Parser;
use pingora::server::configuration::Opt;
use std::path::PathBuf;
use std::process::ExitCode;

/// Orca: a chunked, read-through cache for S3 and Azure Blob origins.
#[derive(Parser, Debug)]
#[command(name = "orca", version, about)]
struct Cli {
    /// Orca's configuration (YAML).
    #[arg(long, env = "ORCA_CONFIG", value_name = "FILE")]
    config: PathBuf,

    /// Pingora's own server options: -c FILE, -d, -u, -t.
    #[command(flatten)]
    pingora: Opt,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match orca::config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("orca: invalid configuration {}:\n{e}", cli.config.display());
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
        println!("orca: configuration {} is valid", cli.config.display());
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
