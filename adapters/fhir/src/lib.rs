//! carebridge's FHIR R4 destination: a `fhir` account files every exchange it is given in the
//! clinic's own patient file, its EMR, as a `Communication`, as it happens.
//!
//! The crate knows the contract only (see `carebridge_contract::adapter_shape`). The mapping of
//! carebridge's record to FHIR is the daemon's (`src/record/fhir.rs`, the same code as
//! `records export --format fhir`): the outbox attaches the mapped `Communication` to the
//! delivery ([`carebridge_contract::Delivery::filed_as`]), and this crate does what is
//! particular to a live server:
//!
//! - resolves the subject to the server's `Patient` by the identifier system the clinic
//!   configures (MRN, health number), never by name ([`client`]);
//! - points the answered message (`inResponseTo`) at the server's copy of it;
//! - creates it conditionally (`If-None-Exist: identifier=urn:carebridge:record|rec-…`), so a
//!   resend finds it there (200) instead of making a second copy;
//! - authenticates with a bearer token or SMART Backend Services ([`auth`]);
//! - classifies the answer for the outbox: created / already there (sent), 408/429/5xx and auth
//!   failures (retry), a patient the server does not know (held for review), any other refusal
//!   with its `OperationOutcome` issue codes (permanent).
//!
//! ```toml
//! [fhir.emr]
//! base_url = "https://emr.clinic.example/fhir/R4"
//! patient_identifier_system = "https://clinic.example/mrn"
//! [fhir.emr.smart]
//! token_url = "https://emr.clinic.example/oauth2/token"
//! client_id = "carebridge"
//! private_key_file = "emr-client.key.pem"
//! algorithm = "ES384"
//! ```
#![deny(missing_docs)]

pub mod auth;
pub mod client;
pub mod config;

pub use client::{FhirOutbound, Filed};
pub use config::{Algorithm, BearerConfig, Config, PatientIdentifier, SmartConfig};

use carebridge_contract::config::ConfigError;
use carebridge_contract::config::{BuildContext, load_secret};
use carebridge_contract::{AdapterError, Inbound, Outbound};
use std::sync::Arc;
use std::time::Duration;

/// A `fhir` account only sends: there is no inbound side.
pub fn build_inbound(_cfg: &Config, _cx: &BuildContext) -> Result<Option<Box<dyn Inbound>>, AdapterError> {
    Ok(None)
}

/// Builds the account's sender: reads its token or private key and its extra CA file, so a
/// missing secret stops the daemon at start (or refuses a reload) instead of failing sends.
pub fn build_outbound(cfg: &Config, cx: &BuildContext) -> Result<Option<Arc<dyn Outbound>>, AdapterError> {
    carebridge_contract::config::ensure_valid(cfg.validate(&cx.account.to_string()))?;
    let base = config::parse_http_url(&cfg.base_url)
        .map_err(|e| ConfigError::Value { key: "base_url".into(), reason: e.to_string() })?;
    let credentials = match (&cfg.bearer, &cfg.smart) {
        (Some(b), _) => match load_secret(&b.token_env, &b.token_file, &cx.config_dir)? {
            Some(t) => auth::Credentials::Bearer(t),
            None => return Err(ConfigError::Missing { what: format!("{}: the bearer token", cx.account) }.into()),
        },
        (None, Some(s)) => match load_secret(&s.private_key_env, &s.private_key_file, &cx.config_dir)? {
            Some(pem) => auth::Credentials::Smart(Box::new(auth::SmartClient::new(s, &pem)?)),
            None => return Err(ConfigError::Missing { what: format!("{}: the private key", cx.account) }.into()),
        },
        (None, None) => {
            return Err(
                ConfigError::Missing { what: format!("{}: `bearer` or `smart` credentials", cx.account) }.into()
            );
        }
    };
    let timeout = cfg.timeout();
    let mut http = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        // PHI goes only where the config says: no redirects.
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("carebridge-fhir/", env!("CARGO_PKG_VERSION")));
    if let Some(file) = &cfg.ca_file {
        let path = cx.config_dir.join(file);
        let pem = std::fs::read(&path).map_err(|e| ConfigError::Unreadable {
            what: "ca_file",
            path: path.clone(),
            kind: e.kind(),
        })?;
        let no_certificate =
            || ConfigError::Unusable { what: "ca_file", path: path.clone(), problem: "holds no PEM certificate" };
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| no_certificate())?;
        if certs.is_empty() {
            return Err(no_certificate().into());
        }
        for c in certs {
            http = http.add_root_certificate(c);
        }
    }
    let http = http
        .build()
        .map_err(|e| ConfigError::Setup { what: "HTTP client", reason: client::error_kind(&e).to_string() })?;
    let out = FhirOutbound::new(cx.account.clone(), base, cfg.clone(), http, credentials);
    Ok(Some(Arc::new(out)))
}
