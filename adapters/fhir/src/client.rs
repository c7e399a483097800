//! Filing one `Communication` in the EMR: find the patient by the clinic's identifier, point the
//! references at the server's own resources, and create it conditionally, so that a resend (a
//! retry, or a crash between the send and its bookkeeping) finds the copy already there instead
//! of making a second one.
//!
//! What comes back to the outbox is PHI-free by construction: HTTP statuses, the
//! `OperationOutcome`'s issue *codes* (never its `diagnostics` or `details.text`, which a server
//! may fill with what it was sent), and the server's resource ids.

use crate::auth::Credentials;
use carebridge_contract::{AccountId, AdapterError, Delivery, Outbound, Redacted, SendError, Sent};
use futures::future::BoxFuture;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde_json::{Map, Value, json};
use std::time::Duration;
use tracing::{debug, info};

/// Identifier system of a carebridge record (the message), as the export writes it.
pub const SYSTEM_RECORD: &str = "urn:carebridge:record";
/// Identifier system of a carebridge delivery (a notice).
pub const SYSTEM_DELIVERY: &str = "urn:carebridge:delivery";
/// Identifier system of a directory patient id, as the export writes it.
pub const SYSTEM_PATIENT: &str = "urn:carebridge:patient";
/// Identifier system of a directory staff id.
pub const SYSTEM_STAFF: &str = "urn:carebridge:staff";
/// The review rule a delivery is held under when the server does not know its patient.
pub const UNKNOWN_PATIENT_RULE: &str = "fhir.unknown_patient";
/// The media type of FHIR JSON.
const FHIR_JSON: &str = "application/fhir+json";
/// At most this much of any answer is read.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// The longest wait a `Retry-After` may impose (the account's worker is FIFO per conversation).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What became of one filing, recorded with the attempt (PHI-free).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filed {
    /// The server created it (201).
    Created,
    /// A copy with the same carebridge identifier was there already (200): an earlier attempt
    /// reached the server, its answer did not reach us.
    AlreadyThere,
}

impl Filed {
    /// The word recorded with the attempt.
    pub fn as_str(self) -> &'static str {
        match self {
            Filed::Created => "created",
            Filed::AlreadyThere => "already there",
        }
    }
}

/// The outbound half of a `fhir` account.
#[derive(Debug)]
pub struct FhirOutbound {
    account: AccountId,
    base: Url,
    patient_system: String,
    /// The account's table: which directory value the EMR knows each patient by.
    config: crate::config::Config,
    http: reqwest::Client,
    credentials: Credentials,
}

impl FhirOutbound {
    /// A sender for `base` (validated), with its HTTP client and credentials.
    pub fn new(
        account: AccountId,
        base: Url,
        config: crate::config::Config,
        http: reqwest::Client,
        credentials: Credentials,
    ) -> Self {
        Self { account, base, patient_system: config.patient_identifier_system.clone(), config, http, credentials }
    }

    /// `base` + `path` (`Patient`, `Communication`), keeping the base's own path.
    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push(path);
        }
        url
    }

    /// One request with the current token; a 401 drops a SMART token and tries once more with
    /// a new one. Answers the status and the body (JSON, or `Null`).
    async fn request(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Value), SendError> {
        let mut renewed = false;
        loop {
            let token = self.credentials.token(&self.http).await?;
            let response = build()
                .header(AUTHORIZATION, format!("Bearer {}", token.expose()))
                .header(ACCEPT, FHIR_JSON)
                .send()
                .await
                .map_err(|e| SendError::retry(format!("fhir: {}", error_kind(&e))))?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED {
                self.credentials.refused(&token).await;
                if self.credentials.renewable() && !renewed {
                    debug!(account = %self.account, "FHIR server refused the access token; asking for a new one.");
                    renewed = true;
                    continue;
                }
                // The token is wrong or revoked: the administrator's to fix; nothing is lost.
                return Err(SendError::retry("fhir: HTTP 401 (the server refused carebridge's token)"));
            }
            let headers = response.headers().clone();
            let body = read_limited(response, MAX_ANSWER_BYTES).await.unwrap_or_default();
            let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
            return Ok((status, headers, json));
        }
    }

    /// The server's `Patient` carrying `value` under the configured identifier system.
    async fn patient(&self, value: &str) -> Result<String, SendError> {
        let mut url = self.url("Patient");
        url.query_pairs_mut().append_pair("identifier", &format!("{}|{value}", self.patient_system));
        let (status, headers, answer) = self.request(|| self.http.get(url.clone())).await?;
        if !status.is_success() {
            return Err(failure("patient search", status, &headers, &answer));
        }
        let ids = entry_ids(&answer, "Patient");
        match ids.as_slice() {
            [id] => Ok(format!("Patient/{id}")),
            [] => Err(SendError::Hold {
                rule: UNKNOWN_PATIENT_RULE.into(),
                reason: "fhir: unknown patient: no Patient on the server has the patient's identifier \
                         (patient_identifier_system); register it in the EMR, then approve"
                    .into(),
            }),
            many => Err(SendError::permanent(format!(
                "fhir: ambiguous patient: {} Patients on the server share the patient's identifier",
                many.len()
            ))),
        }
    }

    /// The server's copy of the carebridge record `value`, if it has one.
    async fn filed_record(&self, value: &str) -> Result<Option<String>, SendError> {
        let mut url = self.url("Communication");
        url.query_pairs_mut().append_pair("identifier", &format!("{SYSTEM_RECORD}|{value}"));
        let (status, headers, answer) = self.request(|| self.http.get(url.clone())).await?;
        if !status.is_success() {
            return Err(failure("communication search", status, &headers, &answer));
        }
        Ok(entry_ids(&answer, "Communication").into_iter().next().map(|id| format!("Communication/{id}")))
    }

    /// Files what the delivery carries: the message, then the notices carebridge sent about it
    /// (each `partOf` the message's copy on the server); or one notice alone, sent after its
    /// message was filed.
    async fn file(&self, delivery: &Delivery) -> Result<Sent, SendError> {
        let Some(filed_as) = &delivery.filed_as else {
            return Err(SendError::permanent("fhir: no Communication was attached to the delivery"));
        };
        let resources: Vec<Map<String, Value>> = match serde_json::from_str(filed_as.expose()) {
            Ok(Value::Array(items)) => items
                .into_iter()
                .filter_map(|v| match v {
                    Value::Object(m) if m.get("resourceType").and_then(Value::as_str) == Some("Communication") => {
                        Some(m)
                    }
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let mut resources = resources.into_iter();
        let Some(message) = resources.next() else {
            return Err(SendError::permanent("fhir: the attached resources are not Communications"));
        };
        let Some(patient) = patient_value(&message) else {
            return Err(SendError::permanent(
                "fhir: the exchange has no patient (an unverified sender): nothing to file it under",
            ));
        };
        let Some(known_as) = self.config.patient_value(patient.expose()) else {
            return Err(SendError::permanent(
                "fhir: the directory has no value of patient_identifier for the exchange's patient",
            ));
        };
        let patient_ref = self.patient(known_as.expose()).await?;
        if business_key(&message).is_some_and(|(system, _)| system == SYSTEM_DELIVERY) {
            // A notice sent after its message was filed: alone, `partOf` the server's copy of
            // the message when it has one (its carebridge identifier either way).
            let mut notice = message;
            if let Some(record) = part_of_record(&notice)
                && let Some(found) = self.filed_record(&record).await?
                && let Some(Value::Array(parts)) = notice.get_mut("partOf")
                && let Some(Value::Object(o)) = parts.first_mut()
            {
                o.insert("reference".into(), found.into());
            }
            let (filed, id) = self.create(notice, &patient_ref, patient.expose(), known_as.expose(), None).await?;
            info!(account = %self.account, delivery_id = %delivery.id, record_id = %delivery.record_id, outcome = filed.as_str(), "Notice filed in the FHIR server.");
            return Ok(Sent { native_ids: id.into_iter().collect(), outcome: Some(filed.as_str().to_string()) });
        }
        let answers = match answered_record(&message) {
            Some(prev) => self.filed_record(&prev).await?,
            None => None,
        };
        let (filed, message_ref) =
            self.create(message, &patient_ref, patient.expose(), known_as.expose(), answers.as_deref()).await?;
        let mut native_ids: Vec<String> = message_ref.iter().cloned().collect();
        let mut notices = 0;
        for mut notice in resources {
            if let (Some(m), Some(Value::Array(parts))) = (&message_ref, notice.get_mut("partOf"))
                && let Some(Value::Object(o)) = parts.first_mut()
            {
                o.insert("reference".into(), m.clone().into());
            }
            let (_, id) = self.create(notice, &patient_ref, patient.expose(), known_as.expose(), None).await?;
            native_ids.extend(id);
            notices += 1;
        }
        info!(account = %self.account, delivery_id = %delivery.id, record_id = %delivery.record_id, outcome = filed.as_str(), notices, "Filed in the FHIR server.");
        Ok(Sent { native_ids, outcome: Some(filed.as_str().to_string()) })
    }

    /// One conditional create; answers what became of it and the server's reference to it.
    async fn create(
        &self,
        mut resource: Map<String, Value>,
        patient_ref: &str,
        patient: &str,
        known_as: &str,
        answers: Option<&str>,
    ) -> Result<(Filed, Option<String>), SendError> {
        // The carebridge identifier the conditional create is keyed on: the record's for a
        // message, the delivery's for a notice.
        let key = business_key(&resource)
            .ok_or_else(|| SendError::permanent("fhir: the Communication has no carebridge identifier"))?;
        point_at_server(&mut resource, patient_ref, (&self.patient_system, known_as), patient, answers);
        let url = self.url("Communication");
        let body = serde_json::to_vec(&Value::Object(resource))
            .map_err(|_| SendError::permanent("fhir: the Communication could not be encoded"))?;
        let condition = format!("identifier={}|{}", key.0, key.1);
        let (status, headers, answer) = self
            .request(|| {
                self.http
                    .post(url.clone())
                    .header(CONTENT_TYPE, FHIR_JSON)
                    .header("if-none-exist", condition.clone())
                    .body(body.clone())
            })
            .await?;
        let filed = match status {
            StatusCode::CREATED => Filed::Created,
            StatusCode::OK => Filed::AlreadyThere,
            _ => return Err(failure("create", status, &headers, &answer)),
        };
        let id = answer.get("id").and_then(Value::as_str).filter(|id| is_fhir_id(id));
        Ok((filed, id.map(|id| format!("Communication/{id}"))))
    }
}

impl Outbound for FhirOutbound {
    fn send<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<Sent, SendError>> {
        Box::pin(self.file(delivery))
    }

    /// Reads the server's `metadata` (its CapabilityStatement), then searches `Patient` for a
    /// value of the configured identifier system that no patient has, with the account's
    /// credentials (servers serve `metadata` to anyone): it catches a wrong URL, an untrusted
    /// certificate, a server that is not FHIR R4 and a token or key the EMR does not take, and
    /// files nothing.
    fn healthcheck(&self) -> BoxFuture<'_, Result<(), AdapterError>> {
        Box::pin(async move {
            let url = self.url("metadata");
            let (status, _, answer) = self
                .request(|| self.http.get(url.clone()))
                .await
                .map_err(|e| AdapterError::Connection(e.to_string()))?;
            if !status.is_success() {
                return Err(AdapterError::Connection(format!("fhir metadata: HTTP {}", status.as_u16())));
            }
            match answer.get("fhirVersion").and_then(Value::as_str) {
                Some(v) if v.starts_with("4.0") => {}
                Some(_) => {
                    return Err(AdapterError::Connection("fhir metadata: the server is not FHIR R4 (4.0.x)".into()));
                }
                None => return Err(AdapterError::Connection("fhir metadata: not a CapabilityStatement".into())),
            }
            let mut url = self.url("Patient");
            url.query_pairs_mut()
                .append_pair("identifier", &format!("{}|carebridge-healthcheck", self.patient_system))
                .append_pair("_count", "1");
            let (status, headers, answer) = self
                .request(|| self.http.get(url.clone()))
                .await
                .map_err(|e| AdapterError::Connection(e.to_string()))?;
            if !status.is_success() {
                return Err(AdapterError::Connection(failure("patient search", status, &headers, &answer).to_string()));
            }
            Ok(())
        })
    }
}

/// The identifier (system, value) the conditional create is keyed on.
fn business_key(resource: &Map<String, Value>) -> Option<(String, String)> {
    let ids = resource.get("identifier")?.as_array()?;
    for system in [SYSTEM_DELIVERY, SYSTEM_RECORD] {
        for i in ids {
            if i.get("system").and_then(Value::as_str) == Some(system)
                && let Some(v) = i.get("value").and_then(Value::as_str)
            {
                return Some((system.to_string(), v.to_string()));
            }
        }
    }
    None
}

/// The directory id of the exchange's patient (`subject.identifier`).
fn patient_value(resource: &Map<String, Value>) -> Option<Redacted<String>> {
    let id = resource.get("subject")?.get("identifier")?;
    if id.get("system").and_then(Value::as_str) != Some(SYSTEM_PATIENT) {
        return None;
    }
    id.get("value").and_then(Value::as_str).map(|v| Redacted::new(v.to_string()))
}

/// The carebridge record a message answers (`inResponseTo`, a logical reference by identifier).
fn answered_record(resource: &Map<String, Value>) -> Option<String> {
    let r = resource.get("inResponseTo")?.as_array()?.first()?;
    let id = r.get("identifier")?;
    (id.get("system").and_then(Value::as_str) == Some(SYSTEM_RECORD))
        .then(|| id.get("value").and_then(Value::as_str).map(str::to_string))
        .flatten()
}

/// The carebridge record a notice is about (`partOf`, a logical reference by identifier).
fn part_of_record(resource: &Map<String, Value>) -> Option<String> {
    let id = resource.get("partOf")?.as_array()?.first()?.get("identifier")?;
    (id.get("system").and_then(Value::as_str) == Some(SYSTEM_RECORD))
        .then(|| id.get("value").and_then(Value::as_str).map(str::to_string))
        .flatten()
}

/// Rewrites the export's carebridge-local references for this server: the patient becomes the
/// server's `Patient` (with the EMR's identifier), the answered message the server's copy of it
/// when it has one, and any other `Patient/…` or `Practitioner/…` (a directory id, not a server
/// id) a logical reference by its carebridge identifier. The export's `id` goes: the server
/// assigns its own.
fn point_at_server(
    resource: &mut Map<String, Value>,
    patient_ref: &str,
    (patient_system, known_as): (&str, &str),
    patient_value: &str,
    answers: Option<&str>,
) {
    resource.remove("id");
    let local_patient = json!({ "system": SYSTEM_PATIENT, "value": patient_value });
    let fix = |r: &mut Value| {
        let Some(o) = r.as_object_mut() else { return };
        if o.get("identifier") == Some(&local_patient) {
            o.insert("reference".into(), patient_ref.into());
            o.insert("identifier".into(), json!({ "system": patient_system, "value": known_as }));
            o.remove("type");
        } else if let Some(Value::String(local)) = o.remove("reference") {
            let kind = local.split('/').next().unwrap_or_default().to_string();
            if !kind.is_empty() {
                o.insert("type".into(), kind.into());
            }
        }
    };
    for key in ["subject", "sender"] {
        if let Some(r) = resource.get_mut(key) {
            fix(r);
        }
    }
    if let Some(Value::Array(rs)) = resource.get_mut("recipient") {
        rs.iter_mut().for_each(fix);
    }
    if let (Some(found), Some(Value::Array(rs))) = (answers, resource.get_mut("inResponseTo"))
        && let Some(Value::Object(o)) = rs.first_mut()
    {
        o.insert("reference".into(), found.into());
    }
}

/// The ids of a search answer's entries of `kind` (`search.mode` `match`, or unmarked).
fn entry_ids(bundle: &Value, kind: &str) -> Vec<String> {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e.pointer("/search/mode").and_then(Value::as_str).is_none_or(|m| m == "match"))
        .filter_map(|e| e.get("resource"))
        .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some(kind))
        .filter_map(|r| r.get("id").and_then(Value::as_str))
        .filter(|id| is_fhir_id(id))
        .map(str::to_string)
        .collect()
}

/// A FHIR `id`: 1-64 of `[A-Za-z0-9.-]` (so it is safe in a log and in the record).
fn is_fhir_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A non-2xx answer as the outbox needs it: 408, 429 and 5xx are retried (honouring
/// `Retry-After` in seconds); anything else is refused for good, with the `OperationOutcome`'s
/// issue codes.
fn failure(step: &str, status: StatusCode, headers: &reqwest::header::HeaderMap, answer: &Value) -> SendError {
    let mut reason = format!("fhir {step}: HTTP {}", status.as_u16());
    let codes = outcome_codes(answer);
    if !codes.is_empty() {
        reason.push_str(&format!(" (OperationOutcome: {})", codes.join(", ")));
    }
    if status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        let after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
        return SendError::Retry { after, reason };
    }
    SendError::permanent(reason)
}

/// `severity:code` of each issue of an `OperationOutcome` (codes are from a closed FHIR value
/// set; anything else is dropped, as are the free-text parts).
fn outcome_codes(answer: &Value) -> Vec<String> {
    if answer.get("resourceType").and_then(Value::as_str) != Some("OperationOutcome") {
        return Vec::new();
    }
    let word = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
            .map(str::to_string)
    };
    answer
        .get("issue")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| Some(format!("{}:{}", word(i.get("severity"))?, word(i.get("code"))?)))
        .take(8)
        .collect()
}

/// Reads at most `limit` bytes of a body; `None` if it is longer or breaks off.
pub(crate) async fn read_limited(mut response: reqwest::Response, limit: usize) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return None;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Some(body),
            Err(_) => return None,
        }
    }
}

/// A PHI-free description of a transport error (reqwest's Display includes the URL, which may
/// carry a patient's identifier in a search).
pub(crate) fn error_kind(e: &reqwest::Error) -> String {
    let class = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "body error"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            // rustls's certificate errors arrive as `Other`; their text names the problem
            // (`invalid peer certificate: UnknownIssuer`), never the URL.
            if let Some(inner) = io.get_ref().map(ToString::to_string).filter(|t| t.contains("certificate")) {
                return format!("{class} (TLS: {inner}; is ca_file set?)");
            }
            return format!("{class} ({:?})", io.kind());
        }
        source = err.source();
    }
    class.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_issue_codes_leave_an_operation_outcome() {
        let answer = json!({ "resourceType": "OperationOutcome", "issue": [
            { "severity": "error", "code": "business-rule", "diagnostics": "Ann Patient has no chart", "details": { "text": "metformin" } },
            { "severity": "warning", "code": "Not A Code <x>" },
        ]});
        let e = failure("create", StatusCode::UNPROCESSABLE_ENTITY, &Default::default(), &answer);
        assert_eq!(e, SendError::permanent("fhir create: HTTP 422 (OperationOutcome: error:business-rule)"));
        let e = failure("create", StatusCode::SERVICE_UNAVAILABLE, &Default::default(), &Value::Null);
        assert_eq!(e, SendError::retry("fhir create: HTTP 503"));
    }

    #[test]
    fn local_references_point_at_the_server() {
        let mut c = json!({
            "resourceType": "Communication", "id": "rec-0000000003",
            "subject": { "reference": "Patient/p-1", "identifier": { "system": SYSTEM_PATIENT, "value": "p-1" } },
            "sender": { "reference": "Practitioner/s-1", "identifier": { "system": SYSTEM_STAFF, "value": "s-1" } },
            "recipient": [{ "reference": "Patient/p-1", "identifier": { "system": SYSTEM_PATIENT, "value": "p-1" } }],
            "inResponseTo": [{ "type": "Communication", "identifier": { "system": SYSTEM_RECORD, "value": "rec-0000000001" } }],
        })
        .as_object()
        .cloned()
        .unwrap();
        assert_eq!(answered_record(&c).as_deref(), Some("rec-0000000001"));
        assert_eq!(patient_value(&c).unwrap().expose(), "p-1");
        point_at_server(&mut c, "Patient/abc", ("urn:mrn", "p-1"), "p-1", Some("Communication/xyz"));
        let c = Value::Object(c);
        assert!(c.get("id").is_none());
        let patient = json!({ "reference": "Patient/abc", "identifier": { "system": "urn:mrn", "value": "p-1" } });
        assert_eq!(c["subject"], patient);
        assert_eq!(c["recipient"][0], patient);
        assert_eq!(
            c["sender"],
            json!({ "type": "Practitioner", "identifier": { "system": SYSTEM_STAFF, "value": "s-1" } })
        );
        assert_eq!(c["inResponseTo"][0]["reference"], "Communication/xyz");
    }

    #[test]
    fn a_notice_is_keyed_on_its_delivery() {
        let m = json!({ "identifier": [
            { "system": SYSTEM_RECORD, "value": "rec-1" }, { "system": SYSTEM_DELIVERY, "value": "dlv-2" }
        ]});
        assert_eq!(business_key(m.as_object().unwrap()), Some((SYSTEM_DELIVERY.into(), "dlv-2".into())));
        let m = json!({ "identifier": [{ "system": SYSTEM_RECORD, "value": "rec-1" }] });
        assert_eq!(business_key(m.as_object().unwrap()), Some((SYSTEM_RECORD.into(), "rec-1".into())));
    }
}
