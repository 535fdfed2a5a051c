//! Test certificates made with the `openssl` command line tool: a CA ([`Ca`]) and the server
//! certificates it signs (tests/tls.rs, tests/upgrade.rs).

use super::run_bounded;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Runs `openssl` with `args` in `dir`; panics with its stderr on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = run_bounded(
        Command::new("openssl").args(args).current_dir(dir),
        None,
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA in a directory: makes leaf certificates it signs.
pub struct Ca {
    dir: PathBuf,
    name: String,
}

impl Ca {
    /// A new self-signed CA `name` (P-256) in `dir`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        Ca {
            dir: dir.to_path_buf(),
            name: name.to_string(),
        }
    }

    /// The CA certificate (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// A server certificate for 127.0.0.1 and localhost with subject `CN=cn` and serial
    /// `serial` (hex), signed by this CA: `(cert, key)` files named after `cn`.
    pub fn leaf(&self, cn: &str, serial: &str) -> (PathBuf, PathBuf) {
        self.leaf_for(cn, serial, "IP:127.0.0.1,DNS:localhost")
    }

    /// As [`Ca::leaf`], for the subject alternative names `san` (openssl syntax).
    pub fn leaf_for(&self, cn: &str, serial: &str, san: &str) -> (PathBuf, PathBuf) {
        let ext = self.dir.join(format!("{cn}.ext"));
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={san}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .unwrap();
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{cn}.key"),
                "-out",
                &format!("{cn}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{cn}.csr"),
                "-CA",
                &format!("{}.pem", self.name),
                "-CAkey",
                &format!("{}.key", self.name),
                "-set_serial",
                &format!("0x{serial}"),
                "-days",
                "2",
                "-out",
                &format!("{cn}.pem"),
                "-extfile",
                &format!("{cn}.ext"),
            ],
        );
        (
            self.dir.join(format!("{cn}.pem")),
            self.dir.join(format!("{cn}.key")),
        )
    }
}
