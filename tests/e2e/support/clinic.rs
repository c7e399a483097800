//! A small clinic on webhooks, through the real daemon: the patients' SMS gateway
//! (`webhook.sms`, in and out, insecure), the EHR (`webhook.ehr`, in and out, trusted; clinicians
//! answer through it), a secure patient portal (`webhook.portal`, out, trusted; the policy's
//! secure account), one patient, one clinician, and the admin API for the CLI.

use super::daemon::{Daemon, wait_http};
use super::sink::{Mode, Sink};
use super::{SECRET, free_port};
use std::time::Duration;

/// The patient's phone, as the directory has it.
pub const PATIENT_PHONE: &str = "+14165550199";

/// A running clinic; the temporary directory holds its config and store.
pub struct Clinic {
    /// The daemon.
    pub d: Daemon,
    /// Where the SMS gateway posts patients' messages.
    pub sms_port: u16,
    /// Where the EHR posts clinicians' answers.
    pub ehr_port: u16,
    /// The SMS gateway's send API (what reaches the patient's phone).
    pub sms: Sink,
    /// The EHR's inbox.
    pub ehr: Sink,
    /// The secure patient portal.
    pub portal: Sink,
    /// The admin API (bearer token `admin-test-token`).
    pub admin_port: u16,
    _dir: tempfile::TempDir,
}

impl Clinic {
    /// Starts it. `policy` adds keys to `[policy]` (e.g. `over_ceiling = "hold"`), `channels`
    /// adds lines to `[policy.channels]`.
    pub async fn start(policy: &str, channels: &str) -> Clinic {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        std::fs::write(dir.path().join("admin-token"), "admin-test-token").unwrap();
        let (sms, ehr, portal) =
            (Sink::start(Mode::Accept).await, Sink::start(Mode::Accept).await, Sink::start(Mode::Accept).await);
        let (sms_port, ehr_port, admin_port) = (free_port(), free_port(), free_port());
        let toml = format!(
            r#"
[daemon]
data_dir = "{data}"
[outbox]
retry_initial_ms = 50
retry_max_secs = 1
[admin]
listen = "127.0.0.1:{admin_port}"
token_file = "admin-token"
[webhook.sms]
listen = "127.0.0.1:{sms_port}"
url = "{sms_url}"
secret_file = "secret"
from_kind = "phone"
[webhook.ehr]
listen = "127.0.0.1:{ehr_port}"
url = "{ehr_url}"
secret_file = "secret"
from_kind = "opaque"
[webhook.portal]
url = "{portal_url}"
secret_file = "secret"
[[route]]
name = "patients-to-ehr"
from = ["webhook.sms"]
to = ["webhook.ehr"]
[[directory.patient]]
id = "p-0001"
addresses = ["phone:{PATIENT_PHONE}"]
[[directory.staff]]
id = "s-lee"
addresses = ["opaque:dr-lee"]
[policy]
secure_account = "webhook.portal"
{policy}
[policy.channels]
"webhook.ehr" = "secure"
"webhook.portal" = "secure"
{channels}
"#,
            data = dir.path().join("data").display(),
            sms_url = sms.url(),
            ehr_url = ehr.url(),
            portal_url = portal.url(),
        );
        let d = Daemon::start(dir.path(), &toml);
        for p in [sms_port, ehr_port] {
            assert!(wait_http(&format!("http://127.0.0.1:{p}/healthz"), Duration::from_secs(20)).await);
        }
        Clinic { d, sms_port, ehr_port, sms, ehr, portal, admin_port, _dir: dir }
    }

    /// `carebridge review <args>` against the running daemon, parsed.
    pub fn review(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["review"];
        all.extend_from_slice(args);
        let (ok, out, err) = self.d.cli(&all);
        assert!(ok, "review {args:?} failed: {err}");
        serde_json::from_str(&out).unwrap()
    }
}

/// A JSON body.
pub fn msg(v: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}
