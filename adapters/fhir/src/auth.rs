//! How carebridge proves who it is to the EMR: a static bearer token, or SMART Backend Services
//! (hl7.org/fhir/smart-app-launch/backend-services.html): an OAuth 2.0 client-credentials grant
//! whose client authenticates with a short-lived JWT signed by its private key (RS384 or ES384),
//! the access token cached until shortly before it expires and dropped early when the server
//! answers 401 (revoked, or the clocks disagree).
//!
//! Nothing here logs a token, a key or an assertion; errors name the step and the HTTP status.

use crate::config::{Algorithm, DEFAULT_SCOPE, SmartConfig};
use carebridge_contract::config::ConfigError;
use carebridge_contract::{AdapterError, Redacted, SendError};
use jsonwebtoken::{EncodingKey, Header};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;
use tracing::debug;

/// How long a client assertion is valid: SMART says no more than five minutes.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(240);
/// A token is renewed this long before the server said it expires (at most a tenth of its life):
/// a request must not leave with a token that dies on the way.
const RENEW_MARGIN: Duration = Duration::from_secs(30);
/// Lifetime assumed when the token endpoint does not say (`expires_in` is only recommended).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// The largest token answer read.
const MAX_TOKEN_ANSWER: usize = 64 * 1024;

/// The credentials of one FHIR account.
pub enum Credentials {
    /// A token given by the EMR's administrator.
    Bearer(Redacted<String>),
    /// SMART Backend Services.
    Smart(Box<SmartClient>),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Bearer(_) => f.write_str("Credentials::Bearer(<redacted>)"),
            Credentials::Smart(s) => write!(f, "Credentials::Smart({})", s.token_url),
        }
    }
}

impl Credentials {
    /// The token to send now, fetching a new one first if the cached one is about to expire.
    pub async fn token(&self, http: &reqwest::Client) -> Result<Redacted<String>, SendError> {
        match self {
            Credentials::Bearer(t) => Ok(t.clone()),
            Credentials::Smart(s) => s.token(http).await,
        }
    }

    /// The server refused `used` (401): forget it, so the next request asks for a new one. A
    /// static token cannot be renewed; the caller retries later (the administrator replaces
    /// the file and reloads).
    pub async fn refused(&self, used: &Redacted<String>) {
        if let Credentials::Smart(s) = self {
            let mut cached = s.cached.lock().await;
            if cached.as_ref().is_some_and(|c| c.token.expose() == used.expose()) {
                *cached = None;
            }
        }
    }

    /// Whether a refused token can be replaced without the administrator.
    pub fn renewable(&self) -> bool {
        matches!(self, Credentials::Smart(_))
    }
}

/// A SMART Backend Services client: its registration and the token it holds.
pub struct SmartClient {
    token_url: reqwest::Url,
    client_id: String,
    scope: String,
    header: Header,
    key: EncodingKey,
    cached: Mutex<Option<Cached>>,
}

struct Cached {
    token: Redacted<String>,
    renew_at: Instant,
}

#[derive(Serialize)]
struct Assertion<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    iat: u64,
    jti: String,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl SmartClient {
    /// A client from its config and the private key's PEM text.
    pub fn new(cfg: &SmartConfig, pem: &Redacted<String>) -> Result<Self, AdapterError> {
        let token_url = crate::config::parse_http_url(&cfg.token_url)
            .map_err(|e| ConfigError::Value { key: "smart.token_url".into(), reason: e.to_string() })?;
        let (alg, key) = match cfg.algorithm {
            Algorithm::RS384 => (jsonwebtoken::Algorithm::RS384, EncodingKey::from_rsa_pem(pem.expose().as_bytes())),
            Algorithm::ES384 => (jsonwebtoken::Algorithm::ES384, EncodingKey::from_ec_pem(pem.expose().as_bytes())),
        };
        let key = key.map_err(|_| ConfigError::Value {
            key: "smart.private_key".into(),
            reason: format!("not a {:?} key in PEM (ES384 needs PKCS#8: `BEGIN PRIVATE KEY`)", cfg.algorithm),
        })?;
        let mut header = Header::new(alg);
        header.typ = Some("JWT".into());
        header.kid = cfg.key_id.clone();
        let client = Self {
            token_url,
            client_id: cfg.client_id.clone(),
            scope: cfg.scope.clone().unwrap_or_else(|| DEFAULT_SCOPE.to_string()),
            header,
            key,
            cached: Mutex::new(None),
        };
        // A key that cannot sign (an RSA key too short for ring, a curve that is not P-384) is a
        // configuration error now, not a retry loop later.
        client.assertion().map_err(|_| ConfigError::Value {
            key: "smart.private_key".into(),
            reason: "it cannot sign an assertion".into(),
        })?;
        Ok(client)
    }

    fn assertion(&self) -> Result<String, jsonwebtoken::errors::Error> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = Assertion {
            iss: &self.client_id,
            sub: &self.client_id,
            aud: self.token_url.as_str(),
            exp: now + ASSERTION_LIFETIME.as_secs(),
            iat: now,
            jti: hex::encode(rand::random::<[u8; 16]>()),
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key)
    }

    async fn token(&self, http: &reqwest::Client) -> Result<Redacted<String>, SendError> {
        // Held across the exchange: concurrent sends wait for one new token instead of each
        // asking for its own.
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.renew_at
        {
            return Ok(c.token.clone());
        }
        let assertion = self.assertion().map_err(|_| SendError::retry("smart: cannot sign the client assertion"))?;
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", self.scope.as_str()),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", assertion.as_str()),
        ];
        let asked = Instant::now();
        let response = http
            .post(self.token_url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| SendError::retry(format!("smart token endpoint: {}", crate::client::error_kind(&e))))?;
        let status = response.status();
        if !status.is_success() {
            // An OAuth error (`invalid_client`: a key the EMR does not know yet) is the
            // administrator's to fix; the deliveries wait and retry meanwhile, none is lost.
            return Err(SendError::retry(format!("smart token endpoint: HTTP {}", status.as_u16())));
        }
        let body = crate::client::read_limited(response, MAX_TOKEN_ANSWER)
            .await
            .ok_or_else(|| SendError::retry("smart token endpoint: answer unreadable or too large"))?;
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| SendError::retry("smart token endpoint: answer has no access_token"))?;
        if answer.access_token.is_empty() {
            return Err(SendError::retry("smart token endpoint: empty access_token"));
        }
        let lifetime = answer.expires_in.map(Duration::from_secs).unwrap_or(DEFAULT_TOKEN_LIFETIME);
        let margin = RENEW_MARGIN.min(lifetime / 10);
        let token = Redacted::new(answer.access_token);
        *cached = Some(Cached { token: token.clone(), renew_at: asked + lifetime.saturating_sub(margin) });
        debug!(lifetime_secs = lifetime.as_secs(), "SMART access token obtained.");
        Ok(token)
    }
}
