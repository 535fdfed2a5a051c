//! Orca's configuration: the YAML file of `docs/configuration.md` read into serde structs ([`file`](mod@file), what
//! operators write), then checked and completed from the environment (`validate`) into
//! [`Config`] ([`validated`], what code uses). Loading fails with a [`ConfigError`] that names
//! the line for malformed YAML, the key path for a wrong value or an unknown key, and lists every
//! validation [`Problem`] at once. Environment lookups go through an [`EnvLookup`] so tests stay
//! hermetic; [`load`] and [`from_yaml_str`] use the process environment.

pub mod client_keys;
pub mod file;
pub mod ops;
pub mod units;
mod validate;
pub mod validated;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde_path_to_error::Segment;

pub use ops::OpsConfig;
pub use units::{ByteSize, HumanDuration, SizeOrPercent, UnitError};
pub use validated::MemoryTier;
pub use validated::{
    AzureBlobConfig, AzureCredentials, CacheStoreConfig, CatalogConfig, Chunking, ClusterConfig,
    Config, DnsConfig, EdgeAuthConfig, EdgeConfig, EntraSource, EnvLookup, FsLimits, Limits,
    Listen, LocalTier, LogFormat, Logging, MetadataConfig, OriginConfig, OriginDriver, Problem,
    S3Credentials, S3OriginConfig, Tier,
};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The file as given.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },

    /// The text is not well-formed YAML.
    #[error("malformed YAML{}: {}", at_line(*.line, *.column), without_location(.source, *.line, *.column))]
    Yaml {
        /// 1-based line of the error, when the parser knows it.
        line: Option<usize>,
        /// 1-based column of the error, when the parser knows it.
        column: Option<usize>,
        /// The parser's error.
        #[source]
        source: serde_norway::Error,
    },

    /// A key that the file format does not have (a typo, or a key in the wrong section).
    #[error(
        "unknown key \"{key}\" at {}{}{}",
        section_name(.section),
        expected_keys(.expected),
        at_line(*.line, None)
    )]
    UnknownKey {
        /// The unknown key itself, e.g. `foo`.
        key: String,
        /// Dotted path of the section holding it, e.g. `cachestore.fs`; empty at the top level.
        section: String,
        /// The keys that section accepts, as serde lists them (e.g. "`root`").
        expected: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// The deserializer's error.
        #[source]
        source: serde_path_to_error::Error<serde_norway::Error>,
    },

    /// A value of the wrong type or form, e.g. `chunking.tiers[1].size: invalid size "8XB"`.
    #[error("{key}: {message}{}", at_line(*.line, None))]
    Value {
        /// Dotted path of the key, e.g. `chunking.tiers[1].size`.
        key: String,
        /// What is wrong with the value.
        message: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// The deserializer's error.
        #[source]
        source: serde_path_to_error::Error<serde_norway::Error>,
    },

    /// The file parsed but breaks one or more rules; every problem is listed, one per line.
    #[error("{}", one_per_line(.problems))]
    Invalid {
        /// Every problem found, in file order, each naming its key.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The validation problems, or an empty slice for the other kinds of errors.
    #[must_use]
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems } => problems,
            _ => &[],
        }
    }
}

/// ` at line L, column C` or ` (line L)`, or nothing.
fn at_line(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(" at line {line}, column {column}"),
        (Some(line), None) => format!(" (line {line})"),
        _ => String::new(),
    }
}

/// The parser's message without its first ` at line L column C`, which the display already gave.
fn without_location(
    source: &serde_norway::Error,
    line: Option<usize>,
    column: Option<usize>,
) -> String {
    let message = source.to_string();
    match (line, column) {
        (Some(line), Some(column)) => {
            message.replacen(&format!(" at line {line} column {column}"), "", 1)
        }
        _ => message,
    }
}

fn section_name(section: &str) -> &str {
    if section.is_empty() {
        "the top level"
    } else {
        section
    }
}

fn expected_keys(expected: &str) -> String {
    if expected.is_empty() {
        String::new()
    } else {
        format!(" (expected {expected})")
    }
}

fn one_per_line(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads one environment variable of this process; `None` when unset or not UTF-8.
#[must_use]
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Loads and validates the configuration file at `path`, reading the process environment.
///
/// # Errors
///
/// [`ConfigError::Read`] when the file cannot be read, else as [`from_yaml_str_with_env`].
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with_env(path, &process_env)
}

/// Loads and validates the configuration file at `path`, reading the environment through `env`.
///
/// # Errors
///
/// [`ConfigError::Read`] when the file cannot be read, else as [`from_yaml_str_with_env`].
pub fn load_with_env(path: &Path, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    from_yaml_str_with_env(&text, env)
}

/// Parses and validates configuration text, reading the process environment.
///
/// # Errors
///
/// As [`from_yaml_str_with_env`].
pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
    from_yaml_str_with_env(text, &process_env)
}

/// Parses and validates configuration text, reading the environment through `env` (tests pass
/// a fake one).
///
/// # Errors
///
/// [`ConfigError::Yaml`] for text that is not YAML, [`ConfigError::UnknownKey`] or
/// [`ConfigError::Value`] for a key or value the format does not allow, and
/// [`ConfigError::Invalid`] with every rule the values break.
pub fn from_yaml_str_with_env(text: &str, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
    let file = parse_file(text)?;
    validate::validate(file, env).map_err(|problems| ConfigError::Invalid { problems })
}

/// Parses configuration text into the file structs, without validating it. An empty file (or
/// one holding only comments) is all defaults.
///
/// # Errors
///
/// As [`from_yaml_str_with_env`], except [`ConfigError::Invalid`].
pub fn parse_file(text: &str) -> Result<file::OrcaFile, ConfigError> {
    // Two passes: first into a generic YAML value, so that syntax errors are told apart from
    // wrong values; then into the file structs through serde_path_to_error, for the key path.
    let mut value: serde_norway::Value = serde_norway::from_str(text).map_err(|source| {
        let location = source.location();
        ConfigError::Yaml {
            line: location.as_ref().map(serde_norway::Location::line),
            column: location.as_ref().map(serde_norway::Location::column),
            source,
        }
    })?;
    if value.is_null() {
        return Ok(file::OrcaFile::default());
    }
    value.apply_merge().map_err(|source| {
        let location = source.location();
        ConfigError::Yaml {
            line: location.as_ref().map(serde_norway::Location::line),
            column: location.as_ref().map(serde_norway::Location::column),
            source,
        }
    })?;
    serde_path_to_error::deserialize(value).map_err(|err| {
        // The generic value has no positions; deserializing the text directly fails the same
        // way and knows the line.
        let line = serde_norway::from_str::<file::OrcaFile>(text)
            .err()
            .and_then(|e| e.location())
            .map(|l| l.line());
        deserialize_error(err, line)
    })
}

/// Turns a serde error at a key path into [`ConfigError::UnknownKey`] or [`ConfigError::Value`].
fn deserialize_error(
    err: serde_path_to_error::Error<serde_norway::Error>,
    line: Option<usize>,
) -> ConfigError {
    let message = err.inner().to_string();
    let segments: Vec<&Segment> = err.path().iter().collect();
    // serde's wording: "unknown field `foo`, expected one of `a`, `b`" (or "there are no fields").
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((key, tail)) = rest.split_once('`') {
            let key = key.to_owned();
            let expected = tail
                .strip_prefix(", expected ")
                .unwrap_or_default()
                .to_owned();
            // The path ends with the unknown key itself; its section is what comes before.
            let parent = match segments.split_last() {
                Some((Segment::Map { key: last }, parent)) if *last == key => parent,
                _ => segments.as_slice(),
            };
            return ConfigError::UnknownKey {
                key,
                section: dotted(parent),
                expected,
                line,
                source: err,
            };
        }
    }
    let key = dotted(&segments);
    ConfigError::Value {
        key: if key.is_empty() {
            "(top level)".to_owned()
        } else {
            key
        },
        message,
        line,
        source: err,
    }
}

/// Formats path segments as `chunking.tiers[1].size`.
fn dotted(segments: &[&Segment]) -> String {
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Seq { index } => {
                out.push('[');
                out.push_str(&index.to_string());
                out.push(']');
            }
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(variant);
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}
