//! A real moto server (`moto_server`) on a free port of 127.0.0.1, stopped by pid on drop.

use std::path::PathBuf;
use std::process::Command;

use super::{file_tail, spawn_on_free_port, ChildGuard};

/// A running moto server. Env `MOTO_SERVER` overrides the command (default `moto_server`).
#[derive(Debug)]
pub struct Moto {
    // Field order: the process stops before its log directory is removed.
    child: ChildGuard,
    port: u16,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Moto {
    /// Starts moto and waits (at most 30 s) until its port accepts connections; on timeout or
    /// early exit, panics with the tail of its log.
    pub fn start() -> Moto {
        Self::start_with_env(&[])
    }

    /// As [`Moto::start`], with extra environment variables (e.g.
    /// `INITIAL_NO_AUTH_ACTION_COUNT` to turn signature checking on).
    pub fn start_with_env(env: &[(&str, &str)]) -> Moto {
        let dir = tempfile::Builder::new()
            .prefix("orca-moto-")
            .tempdir()
            .expect("tempdir");
        let log_path = dir.path().join("moto.log");
        let program = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".to_string());
        let (child, port) = spawn_on_free_port(
            "moto_server",
            &log_path,
            "run hack/install-test-deps.sh",
            |port| {
                let mut cmd = Command::new(&program);
                cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .current_dir(dir.path())
                    .envs(env.iter().copied());
                cmd
            },
        );
        Moto {
            child,
            port,
            log_path,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, e.g. as a [`super::FaultProxy`] upstream.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The last `lines` lines of moto's log.
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log_path, lines)
    }
}
