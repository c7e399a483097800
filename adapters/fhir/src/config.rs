//! The `[fhir.<name>]` table: where the EMR's FHIR endpoint is, how a carebridge patient is found
//! there, and how carebridge authenticates (a bearer token, or SMART Backend Services).
//!
//! Exactly one of `[fhir.<name>.bearer]` and `[fhir.<name>.smart]` is required: an EMR that takes
//! writes without authentication is not one patient files should go to.

use carebridge_contract::Redacted;
use carebridge_contract::config::{Problem, check_secret};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Default total time for one request to the FHIR server (or its token endpoint).
pub const DEFAULT_TIMEOUT_MS: u64 = 20_000;
/// The scopes asked for by default: create Communications, read Patients and Communications
/// (to find the patient, and the message a reply answers).
pub const DEFAULT_SCOPE: &str = "system/Communication.cr system/Patient.r";
const MAX_TIMEOUT_MS: u64 = 600_000;

/// One FHIR destination, `[fhir.<name>]` in the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The FHIR base URL (`https://emr.example/fhir/R4`); resources are POSTed under it.
    pub base_url: String,
    /// The identifier system the EMR's `Patient` carries the carebridge directory id under (an
    /// MRN or health number system, `urn:oid:…` or a URL): a patient is found by
    /// `Patient?identifier=<system>|<directory id>`, never by name.
    pub patient_identifier_system: String,
    /// Which value of a directory patient the EMR's `Patient` carries under
    /// `patient_identifier_system`: `directory_id` (the default), `mrn` or `health_number`
    /// (the entry's `mrn` / `health_number`; the daemon refuses a config where a patient lacks
    /// it).
    #[serde(default)]
    pub patient_identifier: PatientIdentifier,
    /// Directory id → the value above, filled in by the daemon from its directory when the
    /// config is loaded (not a key of the table). PHI (a health number): never logged.
    #[serde(skip)]
    pub patient_values: BTreeMap<String, Redacted<String>>,
    /// Extra CA certificates (PEM) trusted for this server, next to the usual web roots: an
    /// EMR with a clinic-internal CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Total time for one request, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// A static bearer token.
    #[serde(default)]
    pub bearer: Option<BearerConfig>,
    /// SMART Backend Services (OAuth 2.0 client credentials with a signed JWT assertion).
    #[serde(default)]
    pub smart: Option<SmartConfig>,
}

/// Which directory value identifies a patient in the EMR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatientIdentifier {
    /// The directory id (`[[directory.patient]] id`).
    #[default]
    DirectoryId,
    /// The entry's `mrn`.
    Mrn,
    /// The entry's `health_number`.
    HealthNumber,
}

impl PatientIdentifier {
    /// The directory key holding the value (`None`: the id itself).
    pub fn directory_key(self) -> Option<&'static str> {
        match self {
            PatientIdentifier::DirectoryId => None,
            PatientIdentifier::Mrn => Some("mrn"),
            PatientIdentifier::HealthNumber => Some("health_number"),
        }
    }
}

/// `[fhir.<name>.bearer]`: a token the EMR issued, from the environment or a file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BearerConfig {
    /// Environment variable holding the token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// File holding the token (read at start and reload).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// `[fhir.<name>.smart]`: SMART Backend Services, as EMRs register a system client.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmartConfig {
    /// The authorization server's token endpoint (also the assertion's `aud`).
    pub token_url: String,
    /// The client id the EMR registered for carebridge (the assertion's `iss` and `sub`).
    pub client_id: String,
    /// The private key the assertion is signed with (PEM: PKCS#8 for ES384; PKCS#1 or PKCS#8
    /// for RS384). The EMR has its public half (a JWK set or a registered key).
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// Environment variable holding that PEM instead.
    #[serde(default)]
    pub private_key_env: Option<String>,
    /// `RS384` or `ES384`, the two algorithms SMART requires servers to support.
    pub algorithm: Algorithm,
    /// The key's id (`kid` in the assertion's header), when the EMR holds several.
    #[serde(default)]
    pub key_id: Option<String>,
    /// The scopes asked for; [`DEFAULT_SCOPE`] by default.
    #[serde(default)]
    pub scope: Option<String>,
}

/// The JWT signing algorithms SMART Backend Services names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// ECDSA on P-384 with SHA-384.
    ES384,
}

impl Config {
    /// Every problem with this table; `path` is its TOML path (`fhir.emr`).
    pub fn validate(&self, path: &str) -> Vec<Problem> {
        let mut p = Vec::new();
        if let Err(e) = parse_http_url(&self.base_url) {
            p.push(Problem::new(format!("{path}.base_url"), e));
        }
        if self.patient_identifier_system.trim().is_empty() || self.patient_identifier_system.contains('|') {
            p.push(Problem::new(
                format!("{path}.patient_identifier_system"),
                "must name an identifier system (a URI such as urn:oid:… or https://…) without `|`",
            ));
        }
        if let Some(ms) = self.timeout_ms
            && !(1..=MAX_TIMEOUT_MS).contains(&ms)
        {
            p.push(Problem::new(format!("{path}.timeout_ms"), format!("must be between 1 and {MAX_TIMEOUT_MS}")));
        }
        match (&self.bearer, &self.smart) {
            (None, None) => p.push(Problem::new(
                path,
                "one of `[bearer]` (a token) or `[smart]` (SMART Backend Services) is required",
            )),
            (Some(_), Some(_)) => p.push(Problem::new(path, "set only one of `[bearer]` and `[smart]`")),
            (Some(b), None) => {
                check_secret(&format!("{path}.bearer"), "token", &b.token_env, &b.token_file, true, &mut p)
            }
            (None, Some(s)) => {
                let table = format!("{path}.smart");
                if let Err(e) = parse_http_url(&s.token_url) {
                    p.push(Problem::new(format!("{table}.token_url"), e));
                }
                if s.client_id.is_empty() {
                    p.push(Problem::new(format!("{table}.client_id"), "must not be empty"));
                }
                if s.scope.as_deref().is_some_and(|sc| sc.trim().is_empty()) {
                    p.push(Problem::new(format!("{table}.scope"), "must not be empty (leave it out for the default)"));
                }
                check_secret(&table, "private_key", &s.private_key_env, &s.private_key_file, true, &mut p);
            }
        }
        p
    }

    /// The value the EMR knows the patient `directory_id` by, or `None` if the directory has
    /// none for them.
    pub fn patient_value(&self, directory_id: &str) -> Option<Redacted<String>> {
        match self.patient_identifier {
            PatientIdentifier::DirectoryId => Some(Redacted::new(directory_id.to_string())),
            _ => self.patient_values.get(directory_id).cloned(),
        }
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS))
    }
}

/// An absolute `http` or `https` URL with a host. The error never quotes the value.
pub(crate) fn parse_http_url(s: &str) -> Result<reqwest::Url, &'static str> {
    let url = reqwest::Url::parse(s).map_err(|_| "is not an absolute URL")?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http:// or https:// URL with a host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials (use [bearer] or [smart])");
    }
    Ok(url)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_bearer_account_validates() {
        let c = parse(
            "base_url = \"https://emr.example/fhir/R4\"\npatient_identifier_system = \"urn:oid:2.16.840.1.113883.4.1\"\n[bearer]\ntoken_file = \"emr.token\"\n",
        );
        assert!(c.validate("fhir.emr").is_empty(), "{:?}", c.validate("fhir.emr"));
    }

    #[test]
    fn every_problem_is_named_by_its_path() {
        let c = parse(
            "base_url = \"ftp://x\"\npatient_identifier_system = \"a|b\"\ntimeout_ms = 0\n[smart]\ntoken_url = \"nope\"\nclient_id = \"\"\nalgorithm = \"ES384\"\nscope = \" \"\n",
        );
        let paths: Vec<String> = c.validate("fhir.emr").into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            [
                "fhir.emr.base_url",
                "fhir.emr.patient_identifier_system",
                "fhir.emr.timeout_ms",
                "fhir.emr.smart.token_url",
                "fhir.emr.smart.client_id",
                "fhir.emr.smart.scope",
                "fhir.emr.smart",
            ]
        );
        let neither = parse("base_url = \"https://e.x/fhir\"\npatient_identifier_system = \"urn:x\"\n");
        assert_eq!(neither.validate("fhir.emr")[0].path, "fhir.emr");
    }

    #[test]
    fn unknown_keys_and_algorithms_are_refused() {
        assert!(
            toml::from_str::<Config>("base_url = \"https://e.x\"\npatient_identifier_system = \"u\"\nurl = \"x\"\n")
                .is_err()
        );
        let bad_alg = "base_url = \"https://e.x\"\npatient_identifier_system = \"u\"\n[smart]\ntoken_url = \"https://e.x/t\"\nclient_id = \"c\"\nalgorithm = \"HS256\"\nprivate_key_file = \"k\"\n";
        assert!(toml::from_str::<Config>(bad_alg).is_err());
    }
}
