//! Helpers every adapter's config uses: validation problems with their TOML path, and secrets
//! that come only from the environment or a file.
//!
//! Validation is pure (no I/O): it reports *every* problem at once so an administrator fixes the
//! file in one pass. Loading a secret is I/O and happens at build time, not in validation.

use crate::{AdapterError, Redacted};
use std::path::{Path, PathBuf};

/// One thing wrong with the config, with where it is (`webhook.forms.listen`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The TOML path of the offending key or table.
    pub path: String,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl Problem {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into() }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a section that validated still cannot be used, found while building the adapter: the
/// world disagrees with it (a secret that is not there, a CA file that is not PEM, a library that
/// refuses a value). Never carries a secret's value, only where it should have been.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A secret's environment variable is unset or empty.
    #[error("environment variable `{var}` is not set or empty")]
    EnvUnset {
        /// The variable.
        var: String,
    },
    /// A file the section names cannot be read.
    #[error("cannot read {what} `{}`: {kind}", path.display())]
    Unreadable {
        /// What the file is (`secret file`, `ca_file`).
        what: &'static str,
        /// Where it should be.
        path: PathBuf,
        /// Why it cannot be read.
        kind: std::io::ErrorKind,
    },
    /// A file the section names holds nothing usable.
    #[error("{what} `{}` {problem}", path.display())]
    Unusable {
        /// What the file is.
        what: &'static str,
        /// Where it is.
        path: PathBuf,
        /// What is wrong with it (`is empty`, `is not valid PEM`).
        problem: &'static str,
    },
    /// A setting the adapter needs is absent.
    #[error("{what} is required")]
    Missing {
        /// The keys, one of which must be set (`telegram.desk: token_env or token_file`).
        what: String,
    },
    /// A value the adapter or its library refuses.
    #[error("{key}: {reason}")]
    Value {
        /// The key (`url`, `tls_name`).
        key: String,
        /// Why.
        reason: String,
    },
    /// A library could not be set up with the settings (an HTTP client, TLS).
    #[error("{what}: {reason}")]
    Setup {
        /// What was being set up.
        what: &'static str,
        /// The library's reason.
        reason: String,
    },
    /// A listener could not bind its address.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: String,
        /// The operating system's reason.
        reason: String,
    },
}

/// Refuses to build from a section with problems: every adapter's build functions call it with
/// their section's `validate`, so a caller that skipped validation gets the problems (with their
/// paths) instead of odd behaviour later.
pub fn ensure_valid(problems: Vec<Problem>) -> Result<(), AdapterError> {
    if problems.is_empty() { Ok(()) } else { Err(AdapterError::Invalid(problems)) }
}

/// What an adapter's `build` needs besides its own config section.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// The account being built.
    pub account: crate::AccountId,
    /// The directory of the config file: relative `*_file` paths are resolved against it.
    pub config_dir: PathBuf,
}

/// Checks a `<name>_env` / `<name>_file` pair: exactly one must be set if `required`, at most one
/// otherwise. `table` is the TOML path of the table holding them.
pub fn check_secret(
    table: &str,
    name: &str,
    env: &Option<String>,
    file: &Option<PathBuf>,
    required: bool,
    problems: &mut Vec<Problem>,
) {
    match (env, file) {
        (Some(_), Some(_)) => problems.push(Problem::new(
            format!("{table}.{name}_env"),
            format!("set only one of `{name}_env` and `{name}_file`"),
        )),
        (None, None) if required => problems.push(Problem::new(
            table,
            format!("`{name}_env` or `{name}_file` is required (secrets are never written inline)"),
        )),
        (Some(e), None) if e.is_empty() => {
            problems.push(Problem::new(format!("{table}.{name}_env"), "must name an environment variable"))
        }
        _ => {}
    }
}

/// Loads a secret from the environment variable or file named in config. Trailing newlines of a
/// file are dropped. The error names the variable or path, never the value.
pub fn load_secret(
    env: &Option<String>,
    file: &Option<PathBuf>,
    config_dir: &Path,
) -> Result<Option<Redacted<String>>, AdapterError> {
    if let Some(var) = env {
        return match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Some(Redacted::new(v))),
            _ => Err(ConfigError::EnvUnset { var: var.clone() }.into()),
        };
    }
    if let Some(path) = file {
        let path = config_dir.join(path);
        return match std::fs::read_to_string(&path) {
            Ok(v) => {
                let v = v.trim_end_matches(['\r', '\n']).to_string();
                if v.is_empty() {
                    Err(ConfigError::Unusable { what: "secret file", path, problem: "is empty" }.into())
                } else {
                    Ok(Some(Redacted::new(v)))
                }
            }
            Err(e) => Err(ConfigError::Unreadable { what: "secret file", path, kind: e.kind() }.into()),
        };
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_need_exactly_one_source() {
        let mut p = Vec::new();
        check_secret("email.x.imap", "password", &None, &None, true, &mut p);
        check_secret("email.x.imap", "password", &Some("A".into()), &Some("f".into()), true, &mut p);
        check_secret("email.x.imap", "password", &Some("A".into()), &None, true, &mut p);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[1].path, "email.x.imap.password_env");
    }

    #[test]
    fn loading_names_the_source_not_the_value() {
        let err =
            load_secret(&Some("CAREBRIDGE_TEST_SURELY_UNSET".into()), &None, Path::new(".")).unwrap_err().to_string();
        assert!(err.contains("CAREBRIDGE_TEST_SURELY_UNSET"));
        let dir = std::env::temp_dir().join(format!("cb-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("s"), "hunter2\n").unwrap();
        let s = load_secret(&None, &Some("s".into()), &dir).unwrap().unwrap();
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
    }
}
