//! The edge's credentials file (`edge.auth.credentials_file`): the access keys clients sign
//! with, each with its secret and the buckets it may read. Read at start-up by validation (a bad
//! file is a configuration error naming the file, the line and the key) and again on `SIGHUP` by
//! the edge (`edge::auth`), which keeps the keys it has when the new file is bad.
//!
//! ```yaml
//! keys:
//!   - access_key_id: AKIAORCAANALYTICS01
//!     secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # inline: this file is the secret store
//!     buckets: [analytics, shared]
//!   - access_key_id: AKIAORCAETL000000001
//!     secret_access_key_env: ORCA_KEY_ETL    # or the secret from this environment variable
//!     buckets: ["*"]                         # any bucket the edge serves (edge.buckets)
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::validated::EnvLookup;

/// The largest access key id accepted (S3's own are 16 to 128 characters).
const MAX_KEY_ID_LEN: usize = 128;

/// The whole credentials file, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with a `keys` list")]
struct KeysFile {
    /// The keys.
    keys: Vec<KeyFile>,
}

/// One entry of `keys`, as written.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with access_key_id, secret_access_key (or secret_access_key_env) and buckets"
)]
struct KeyFile {
    access_key_id: Option<String>,
    /// Any YAML value, so that a secret of the wrong type is reported without serde quoting it
    /// in the message.
    secret_access_key: Option<serde_norway::Value>,
    secret_access_key_env: Option<String>,
    buckets: Option<Vec<String>>,
}

/// Which buckets a key may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketGrant {
    /// `["*"]`: every bucket the edge serves (still limited by `edge.buckets`).
    Any,
    /// These buckets only, in the file's order.
    Only(Vec<String>),
}

impl BucketGrant {
    /// Whether `bucket` is granted.
    #[must_use]
    pub fn allows(&self, bucket: &str) -> bool {
        match self {
            BucketGrant::Any => true,
            BucketGrant::Only(list) => list.iter().any(|b| b == bucket),
        }
    }
}

/// One client key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKey {
    /// The access key id clients put in their credential scope. Not a secret.
    pub access_key_id: String,
    /// The secret access key. Never logged (`Debug` redacts it).
    pub secret_access_key: String,
    /// The buckets this key may read.
    pub buckets: BucketGrant,
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKey")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("buckets", &self.buckets)
            .finish()
    }
}

/// Why a credentials file was not accepted. The message names the file, and the line and the
/// key when they are known; it never holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum KeysFileError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file as configured.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// Not YAML, or not the file's shape (an unknown key, a value of the wrong type).
    #[error("{}{}: {}", path.display(), line.map(|l| format!(" line {l}")).unwrap_or_default(), without_location(source))]
    Malformed {
        /// The file as configured.
        path: PathBuf,
        /// 1-based line of the error, when the parser knows it.
        line: Option<usize>,
        /// The parser's error.
        #[source]
        source: serde_norway::Error,
    },
    /// Well-formed, but some keys break the rules; every problem is listed.
    #[error("{}: {}", path.display(), problems.join("; "))]
    Invalid {
        /// The file as configured.
        path: PathBuf,
        /// One line per problem, each naming the key (`keys[1] "AKIA..." (line 7): ...`).
        problems: Vec<String>,
    },
}

/// serde_norway's message without its trailing ` at line L column C` (the line is said first).
fn without_location(source: &serde_norway::Error) -> String {
    let message = source.to_string();
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message,
    }
}

/// Reads and checks the credentials file at `path`; secrets named by `secret_access_key_env`
/// are read through `env`.
///
/// # Errors
///
/// A [`KeysFileError`] naming the file and, where known, the line and the key.
pub fn load(path: &Path, env: EnvLookup<'_>) -> Result<Vec<ClientKey>, KeysFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeysFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text, env)
}

/// Checks the text of a credentials file (see [`load`]).
///
/// # Errors
///
/// As [`load`], except `Read`.
pub fn parse(path: &Path, text: &str, env: EnvLookup<'_>) -> Result<Vec<ClientKey>, KeysFileError> {
    let file: KeysFile =
        serde_norway::from_str(text).map_err(|source| KeysFileError::Malformed {
            path: path.to_owned(),
            line: source.location().map(|l| l.line()),
            source,
        })?;
    let mut problems = Vec::new();
    let mut keys = Vec::with_capacity(file.keys.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    if file.keys.is_empty() {
        problems.push("keys: the list is empty; every signed request would be refused".to_owned());
    }
    for (i, entry) in file.keys.into_iter().enumerate() {
        let name = match &entry.access_key_id {
            Some(id) => match line_of(text, id) {
                Some(line) => format!("keys[{i}] \"{id}\" (line {line})"),
                None => format!("keys[{i}] \"{id}\""),
            },
            None => format!("keys[{i}]"),
        };
        let before = problems.len();
        let id = match entry.access_key_id {
            None => {
                problems.push(format!("{name}: access_key_id is required"));
                String::new()
            }
            Some(id) => {
                if let Err(why) = key_id(&id) {
                    problems.push(format!("{name}: access_key_id {why}"));
                } else if let Some(first) = seen.insert(id.clone(), i) {
                    problems.push(format!(
                        "{name}: access_key_id is already used by keys[{first}]"
                    ));
                }
                id
            }
        };
        let secret = match (entry.secret_access_key, entry.secret_access_key_env) {
            (Some(_), Some(_)) => {
                problems.push(format!(
                    "{name}: give secret_access_key or secret_access_key_env, not both"
                ));
                None
            }
            (None, None) => {
                problems.push(format!(
                    "{name}: secret_access_key (or secret_access_key_env) is required"
                ));
                None
            }
            (Some(serde_norway::Value::String(secret)), None) if secret.is_empty() => {
                problems.push(format!("{name}: secret_access_key must not be empty"));
                None
            }
            (Some(serde_norway::Value::String(secret)), None) => Some(secret),
            (Some(_), None) => {
                problems.push(format!(
                    "{name}: secret_access_key must be a string (put it in quotes)"
                ));
                None
            }
            (None, Some(var)) => match env(&var).filter(|v| !v.is_empty()) {
                Some(secret) => Some(secret),
                None => {
                    problems.push(format!(
                        "{name}: secret_access_key_env: environment variable {var} is not set"
                    ));
                    None
                }
            },
        };
        let buckets = match entry.buckets {
            None => {
                problems.push(format!(
                    "{name}: buckets is required (a list of bucket names, or [\"*\"] for any)"
                ));
                None
            }
            Some(list) => match bucket_grant(list) {
                Ok(grant) => Some(grant),
                Err(why) => {
                    problems.push(format!("{name}: buckets: {why}"));
                    None
                }
            },
        };
        if let (Some(secret), Some(buckets), true) = (secret, buckets, problems.len() == before) {
            keys.push(ClientKey {
                access_key_id: id,
                secret_access_key: secret,
                buckets,
            });
        }
    }
    if problems.is_empty() {
        Ok(keys)
    } else {
        Err(KeysFileError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }
}

/// The 1-based line holding `access_key_id: <id>`, for messages.
fn line_of(text: &str, id: &str) -> Option<usize> {
    text.lines()
        .position(|l| l.contains("access_key_id") && l.contains(id))
        .map(|i| i + 1)
}

/// An access key id goes into the credential scope `ID/date/region/s3/aws4_request`.
fn key_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if id.len() > MAX_KEY_ID_LEN {
        return Err(format!("is longer than {MAX_KEY_ID_LEN} characters"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("may hold only letters, digits, '-', '_' and '.'".to_owned());
    }
    Ok(())
}

fn bucket_grant(list: Vec<String>) -> Result<BucketGrant, String> {
    if list.is_empty() {
        return Err("the list is empty; a key must be allowed at least one bucket".to_owned());
    }
    if list.iter().any(|b| b == "*") {
        return if list.len() == 1 {
            Ok(BucketGrant::Any)
        } else {
            Err("\"*\" (any bucket) must be alone in the list".to_owned())
        };
    }
    for (j, b) in list.iter().enumerate() {
        if b.is_empty() || b.contains('/') || b.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!("[{j}] \"{b}\" is not a bucket name"));
        }
        if list[..j].contains(b) {
            return Err(format!("[{j}] \"{b}\" is listed twice"));
        }
    }
    Ok(BucketGrant::Only(list))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "ORCA_KEY_ETL").then(|| "from-env".to_owned())
    }

    fn parsed(text: &str) -> Result<Vec<ClientKey>, String> {
        parse(Path::new("/etc/orca/keys.yaml"), text, &env).map_err(|e| e.to_string())
    }

    #[test]
    fn inline_and_env_secrets_and_bucket_grants() {
        let keys = parsed(
            "keys:\n  - access_key_id: AK1\n    secret_access_key: s1\n    buckets: [a, b]\n\
             \x20 - access_key_id: AK2\n    secret_access_key_env: ORCA_KEY_ETL\n    buckets: [\"*\"]\n",
        )
        .unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].secret_access_key, "s1");
        assert_eq!(
            keys[0].buckets,
            BucketGrant::Only(vec!["a".into(), "b".into()])
        );
        assert!(keys[0].buckets.allows("a") && !keys[0].buckets.allows("c"));
        assert_eq!(keys[1].secret_access_key, "from-env");
        assert_eq!(keys[1].buckets, BucketGrant::Any);
        assert!(!format!("{:?}", keys[0]).contains("s1"), "Debug redacts");
    }

    #[test]
    fn malformed_yaml_names_the_file_and_line() {
        let e = parsed("keys:\n  - access_key_id: AK1\n    secret_access_key: [unclosed\n")
            .unwrap_err();
        assert!(e.starts_with("/etc/orca/keys.yaml line "), "{e}");
        let e =
            parsed("keys:\n  - access_key_id: AK1\n    secret: x\n    buckets: [a]\n").unwrap_err();
        assert!(e.contains("line 2") || e.contains("line 3"), "{e}");
        assert!(e.contains("unknown field `secret`"), "{e}");
        let e = parsed("- AK1\n").unwrap_err();
        assert!(e.starts_with("/etc/orca/keys.yaml"), "{e}");
    }

    #[test]
    fn every_problem_names_its_key() {
        let e = parsed(
            "keys:\n  - access_key_id: AK1\n    buckets: [a]\n\
             \x20 - access_key_id: AK1\n    secret_access_key: x\n    secret_access_key_env: ORCA_KEY_ETL\n    buckets: [a]\n\
             \x20 - access_key_id: AK3\n    secret_access_key_env: UNSET_VAR\n    buckets: []\n\
             \x20 - access_key_id: \"bad/id\"\n    secret_access_key: x\n    buckets: [\"*\", a]\n",
        )
        .unwrap_err();
        for want in [
            "keys[0] \"AK1\" (line 2): secret_access_key (or secret_access_key_env) is required",
            "keys[1] \"AK1\" (line 2): access_key_id is already used by keys[0]",
            "keys[1] \"AK1\" (line 2): give secret_access_key or secret_access_key_env, not both",
            "keys[2] \"AK3\" (line 8): secret_access_key_env: environment variable UNSET_VAR is not set",
            "keys[2] \"AK3\" (line 8): buckets: the list is empty",
            "keys[3] \"bad/id\" (line 11): access_key_id may hold only",
            "\"*\" (any bucket) must be alone",
        ] {
            assert!(e.contains(want), "missing {want:?} in {e}");
        }
        assert!(parsed("keys: []\n")
            .unwrap_err()
            .contains("the list is empty"));
        // A secret of the wrong type is reported without its value.
        let e = parsed(
            "keys:\n  - access_key_id: AK1\n    secret_access_key: 918273645\n    buckets: [a]\n",
        )
        .unwrap_err();
        assert!(e.contains("secret_access_key must be a string"), "{e}");
        assert!(!e.contains("918273645"), "{e}");
    }
}
