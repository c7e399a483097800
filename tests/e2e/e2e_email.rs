//! End to end through the real daemon binary and real mail servers (Postfix + Dovecot from
//! `tests/mail-servers.sh`): a patient's email is read over IMAP, recorded, acknowledged
//! (`\Seen`) and forwarded to a webhook sink and to a clinician's mailbox; the clinician's
//! threaded reply from his own mail client comes back through the clinic mailbox and reaches the
//! patient's mailbox with only the new text.
//!
//! The mail is sent and inspected here with tiny raw SMTP/IMAP clients over loopback, so this
//! test depends on nothing of the adapter it checks.
//!
//! Skips loudly when the servers are not running, unless `CAREBRIDGE_REQUIRE_MAIL` is set (CI),
//! in which case a missing server fails the test.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};
use support::SECRET;
use support::daemon::Daemon;
use support::mail_env::{MailEnv, mail_env, tag};
use support::sink::{Mode, Sink};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const WAIT: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------ the mail servers' settings

async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < WAIT, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ------------------------------------------------------------------ a raw SMTP client

async fn smtp_reply(r: &mut BufReader<OwnedReadHalf>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        assert!(!line.is_empty(), "SMTP server closed the connection");
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return all;
        }
    }
}

async fn smtp_step(r: &mut BufReader<OwnedReadHalf>, w: &mut OwnedWriteHalf, cmd: &str, want: &str) {
    w.write_all(format!("{cmd}\r\n").as_bytes()).await.unwrap();
    let reply = smtp_reply(r).await;
    assert!(reply.starts_with(want), "{cmd} → {reply}");
}

/// Sends a message through Postfix like any outside mail client (plain SMTP on loopback).
async fn smtp_send(env: &MailEnv, from: &str, to: &str, raw: &str) {
    let (r, mut w) = TcpStream::connect((env.host.as_str(), env.smtp_port)).await.unwrap().into_split();
    let mut r = BufReader::new(r);
    assert!(smtp_reply(&mut r).await.starts_with("220"));
    smtp_step(&mut r, &mut w, "EHLO e2e.test", "250").await;
    smtp_step(&mut r, &mut w, &format!("MAIL FROM:<{from}>"), "250").await;
    smtp_step(&mut r, &mut w, &format!("RCPT TO:<{to}>"), "250").await;
    smtp_step(&mut r, &mut w, "DATA", "354").await;
    let mut data = String::new();
    for line in raw.replace("\r\n", "\n").lines() {
        if line.starts_with('.') {
            data.push('.');
        }
        data.push_str(line);
        data.push_str("\r\n");
    }
    w.write_all(data.as_bytes()).await.unwrap();
    smtp_step(&mut r, &mut w, ".", "250").await;
    smtp_step(&mut r, &mut w, "QUIT", "221").await;
}

/// A plain RFC 5322 message.
fn email(from: &str, to: &str, id: &str, subject: &str, extra: &str, body: &str) -> String {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{id}>\r\n\
         Date: Mon, 3 Feb 2025 10:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n{extra}\r\n{body}\r\n"
    )
}

// ------------------------------------------------------------------ a raw IMAP client

/// One untagged response: its text with each literal replaced by `{n}`, and the literals.
struct Untagged {
    text: String,
    literals: Vec<Vec<u8>>,
}

struct Imap {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    n: u32,
}

impl Imap {
    async fn login(env: &MailEnv, user: &str) -> Imap {
        let (r, w) = TcpStream::connect((env.host.as_str(), env.imap_port)).await.unwrap().into_split();
        let mut imap = Imap { r: BufReader::new(r), w, n: 0 };
        let mut greeting = String::new();
        imap.r.read_line(&mut greeting).await.unwrap();
        assert!(greeting.starts_with("* OK"), "{greeting}");
        let pass = env.users.get(user).unwrap_or_else(|| panic!("no user {user}"));
        imap.cmd(&format!("LOGIN \"{user}\" \"{pass}\"")).await;
        imap
    }

    /// Reads one response line, with any literals it announces.
    async fn read_response(&mut self) -> Untagged {
        let mut text = String::new();
        let mut literals = Vec::new();
        loop {
            let mut line = Vec::new();
            self.r.read_until(b'\n', &mut line).await.unwrap();
            assert!(!line.is_empty(), "IMAP server closed the connection");
            let s = String::from_utf8_lossy(&line).trim_end().to_string();
            if let Some(open) = s.strip_suffix('}').and_then(|x| x.rfind('{').map(|i| (i, x)))
                && let Ok(len) = open.1[open.0 + 1..].parse::<usize>()
            {
                text.push_str(&s);
                let mut lit = vec![0u8; len];
                self.r.read_exact(&mut lit).await.unwrap();
                literals.push(lit);
                continue;
            }
            text.push_str(&s);
            return Untagged { text, literals };
        }
    }

    /// Runs a command; returns its untagged responses; panics unless it ends OK.
    async fn cmd(&mut self, command: &str) -> Vec<Untagged> {
        self.n += 1;
        let t = format!("e{}", self.n);
        self.w.write_all(format!("{t} {command}\r\n").as_bytes()).await.unwrap();
        let mut out = Vec::new();
        loop {
            let resp = self.read_response().await;
            if let Some(rest) = resp.text.strip_prefix(&format!("{t} ")) {
                assert!(rest.starts_with("OK"), "{command} → {rest}");
                return out;
            }
            out.push(resp);
        }
    }

    async fn append(&mut self, folder: &str, raw: &[u8]) {
        self.n += 1;
        let t = format!("e{}", self.n);
        self.w.write_all(format!("{t} APPEND {folder} {{{}}}\r\n", raw.len()).as_bytes()).await.unwrap();
        let cont = self.read_response().await;
        assert!(cont.text.starts_with('+'), "{}", cont.text);
        self.w.write_all(raw).await.unwrap();
        self.w.write_all(b"\r\n").await.unwrap();
        loop {
            let resp = self.read_response().await;
            if let Some(rest) = resp.text.strip_prefix(&format!("{t} ")) {
                assert!(rest.starts_with("OK"), "APPEND → {rest}");
                return;
            }
        }
    }

    async fn search(&mut self, query: &str) -> Vec<u32> {
        self.cmd(&format!("UID SEARCH {query}"))
            .await
            .iter()
            .filter_map(|u| u.text.strip_prefix("* SEARCH"))
            .flat_map(|s| s.split_whitespace().filter_map(|n| n.parse().ok()).collect::<Vec<u32>>())
            .collect()
    }

    /// (seen, raw message) of each message in `folder` matching `query`.
    async fn messages(&mut self, folder: &str, query: &str) -> Vec<(bool, Vec<u8>)> {
        self.cmd(&format!("EXAMINE {folder}")).await;
        let uids = self.search(query).await;
        let mut out = Vec::new();
        for uid in uids {
            for u in self.cmd(&format!("UID FETCH {uid} (FLAGS BODY.PEEK[])")).await {
                if u.text.contains("FETCH") && !u.literals.is_empty() {
                    out.push((u.text.contains("\\Seen"), u.literals[0].clone()));
                }
            }
        }
        out
    }

    async fn logout(mut self) {
        let _ = self.w.write_all(b"z LOGOUT\r\n").await;
    }
}

async fn messages(env: &MailEnv, user: &str, query: &str) -> Vec<(bool, Vec<u8>)> {
    let mut imap = Imap::login(env, user).await;
    let out = imap.messages("INBOX", query).await;
    imap.logout().await;
    out
}

/// Deletes everything in a mailbox's INBOX, so earlier runs leave nothing to pick up.
async fn empty_inbox(env: &MailEnv, user: &str) {
    let mut imap = Imap::login(env, user).await;
    let sel = imap.cmd("SELECT INBOX").await;
    let exists = sel.iter().any(|u| u.text.ends_with("EXISTS") && !u.text.starts_with("* 0 "));
    if exists {
        imap.cmd("STORE 1:* +FLAGS.SILENT (\\Deleted)").await;
        imap.cmd("EXPUNGE").await;
    }
    imap.logout().await;
}

/// Headers (unfolded, lower-cased names) and the decoded text body of a simple message.
fn parse_simple(raw: &[u8]) -> (HashMap<String, String>, String) {
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut headers: HashMap<String, String> = HashMap::new();
    let mut last: Option<String> = None;
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(k) = &last {
                headers.entry(k.clone()).and_modify(|v| v.push_str(line.trim_start()));
            }
        } else if let Some((k, v)) = line.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            headers.entry(k.clone()).or_insert_with(|| v.trim().to_string());
            last = Some(k);
        }
    }
    let qp = headers.get("content-transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("quoted-printable"));
    let body = if qp { decode_qp(body) } else { body.to_string() };
    (headers, body)
}

fn decode_qp(s: &str) -> String {
    let s = s.replace("=\n", "");
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'='
            && let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `local+token` part's token of an address in a header value.
fn plus_token(header: &str, local: &str, domain: &str) -> Option<String> {
    let start = header.find(&format!("{local}+"))? + local.len() + 1;
    let rest = &header[start..];
    let end = rest.find(&format!("@{domain}"))?;
    Some(rest[..end].to_string())
}

// ------------------------------------------------------------------ the daemon

fn write_secrets(dir: &Path, env: &MailEnv) {
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    for (user, pass) in &env.users {
        std::fs::write(dir.join(format!("{user}.pass")), format!("{pass}\n")).unwrap();
    }
}

/// `[email.<name>]` for mailbox `user`: IMAPS in, STARTTLS + AUTH out, trusting the test CA.
fn email_account(env: &MailEnv, name: &str, user: &str, forward_to: Option<&str>) -> String {
    let forward = forward_to.map(|f| format!("forward_to = \"{f}\"\n")).unwrap_or_default();
    format!(
        r#"
[email.{name}]
address = "{user}"
display_name = "Clinic (carebridge)"
{forward}
[email.{name}.imap]
host = "{host}"
port = {imaps}
tls = "implicit"
tls_name = "{tls_name}"
ca_file = "{ca}"
username = "{user}"
password_file = "{user}.pass"
reconnect_max_secs = 2

[email.{name}.smtp]
host = "{host}"
port = {smtp}
tls = "starttls"
tls_name = "{tls_name}"
ca_file = "{ca}"
username = "{user}"
password_file = "{user}.pass"
"#,
        host = env.host,
        imaps = env.imaps_port,
        smtp = env.smtp_port,
        tls_name = env.tls_name,
        ca = env.ca.display(),
    )
}

fn daemon_config(dir: &Path, sink_url: &str, accounts: &str, routes: &str) -> String {
    format!(
        r#"
[daemon]
data_dir = "{data}"
status_interval_secs = 1

[outbox]
retry_initial_ms = 50
retry_max_secs = 1
max_attempts = 5

[webhook.sink]
url = "{sink_url}"
secret_file = "secret"
{accounts}
{routes}

[[directory.patient]]
id = "p-0001"
addresses = ["email:ann@patients.test"]

[[directory.staff]]
id = "s-lee"
addresses = ["email:dr.lee@clinic.test"]
"#,
        data = dir.join("data").display()
    )
}

fn records(export: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    export.iter().filter(|l| l["type"] == "record").collect()
}

// ------------------------------------------------------------------ the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_email_is_recorded_forwarded_and_the_clinicians_reply_reaches_the_patient() {
    let Some(env) = mail_env() else { return };
    for user in ["clinic@clinic.test", "dr.lee@clinic.test", "ann@patients.test"] {
        empty_inbox(&env, user).await;
    }
    let dir = tempfile::tempdir().unwrap();
    write_secrets(dir.path(), &env);
    let sink = Sink::start(Mode::Accept).await;
    let toml = daemon_config(
        dir.path(),
        &sink.url(),
        &email_account(&env, "clinic", "clinic@clinic.test", Some("dr.lee@clinic.test")),
        "[[route]]\nname = \"patients-to-clinic\"\nfrom = [\"email.clinic\"]\nto = [\"webhook.sink\", \"email.clinic\"]\n",
    );
    let mut d = Daemon::start(dir.path(), &toml);
    assert!(d.wait_log("IMAP connected", 0, WAIT), "the daemon's IMAP reader connects: {:?}", d.logs());

    // 1. Ann writes to the clinic from her own mailbox.
    let ann_id = tag("ann");
    let ann_text = "Hello, could I book an appointment next week please?";
    smtp_send(
        &env,
        "ann@patients.test",
        "clinic@clinic.test",
        &email(
            "Ann Example <ann@patients.test>",
            "clinic@clinic.test",
            &ann_id,
            "Appointment e2e-subject",
            "",
            ann_text,
        ),
    )
    .await;

    // 2. Recorded and forwarded to the sink (the EHR) with her patient id.
    assert!(sink.wait_for(1, WAIT).await, "forward reached the sink; logs: {:?}", d.logs());
    let fwd = sink.received()[0].body.clone();
    assert_eq!(fwd["kind"], "forward");
    assert_eq!(fwd["patient_id"], "p-0001");
    assert!(fwd["text"].as_str().unwrap_or("").contains("book an appointment"), "{fwd}");

    // 3. Acknowledged at the source only now: \Seen in the clinic mailbox.
    let query = format!("HEADER Message-ID \"{ann_id}\"");
    wait_until("Ann's message marked \\Seen after it was recorded", || async {
        messages(&env, "clinic@clinic.test", &query).await.first().is_some_and(|(seen, _)| *seen)
    })
    .await;

    // 4. Dr Lee got the forward in his own mailbox, from the clinic's plus-address.
    wait_until("the forward reached Dr Lee", || async {
        !messages(&env, "dr.lee@clinic.test", "HEADER X-Carebridge-Delivery \"dlv-\"").await.is_empty()
    })
    .await;
    let forwards = messages(&env, "dr.lee@clinic.test", "HEADER X-Carebridge-Delivery \"dlv-\"").await;
    let (headers, body) = parse_simple(&forwards[0].1);
    assert_eq!(headers.get("subject").map(String::as_str), Some("New patient message"), "PHI-free subject");
    assert!(body.contains("Patient: p-0001") && body.contains("book an appointment"), "{body}");
    let from = headers.get("from").cloned().unwrap_or_default();
    let token = plus_token(&from, "clinic", "clinic.test").expect("forward comes from clinic+<token>@clinic.test");
    let forward_id = headers.get("message-id").cloned().expect("forward has a Message-ID");

    // 5. Dr Lee answers from his mail client: to the plus-address, threaded, quoting everything.
    let reply_id = tag("lee");
    let reply_text = "Your appointment is confirmed for Tuesday at 10.";
    smtp_send(
        &env,
        "dr.lee@clinic.test",
        &format!("clinic+{token}@clinic.test"),
        &email(
            "Dr Lee <dr.lee@clinic.test>",
            &format!("Clinic (carebridge) <clinic+{token}@clinic.test>"),
            &reply_id,
            "Re: New patient message",
            &format!("In-Reply-To: {forward_id}\r\nReferences: {forward_id}\r\n"),
            &format!(
                "{reply_text}\n\n-- \nDr Lee, Clinic\n\nOn Mon, 3 Feb 2025, Clinic (carebridge) wrote:\n\
                 > Patient: p-0001\n> {ann_text}\n"
            ),
        ),
    )
    .await;

    // 6. It reaches Ann's mailbox with only the new text, threaded under her message.
    let in_reply = format!("HEADER In-Reply-To \"{ann_id}\"");
    wait_until("the reply reached Ann", || async { !messages(&env, "ann@patients.test", &in_reply).await.is_empty() })
        .await;
    let got = messages(&env, "ann@patients.test", &in_reply).await;
    let (headers, body) = parse_simple(&got[0].1);
    assert_eq!(body.trim(), reply_text, "only the clinician's new text reaches the patient");
    assert_eq!(headers.get("subject").map(String::as_str), Some("Reply from your clinic"));
    let from = headers.get("from").cloned().unwrap_or_default();
    assert_eq!(plus_token(&from, "clinic", "clinic.test").as_deref(), Some(token.as_str()), "same conversation");

    // 7. The reply was acknowledged in the clinic mailbox too.
    let reply_query = format!("HEADER Message-ID \"{reply_id}\"");
    wait_until("Dr Lee's reply marked \\Seen", || async {
        messages(&env, "clinic@clinic.test", &reply_query).await.first().is_some_and(|(seen, _)| *seen)
    })
    .await;

    // 8. Both are in the record store, with who sent them; nothing PHI in the logs.
    assert!(d.terminate(), "clean exit on SIGTERM");
    let export = d.export();
    let recs = records(&export);
    let patient = recs.iter().find(|r| r["record"]["native_message_id"] == ann_id.as_str()).expect("Ann's record");
    assert_eq!(patient["record"]["sender"]["role"], "patient");
    assert_eq!(patient["record"]["patient_id"], "p-0001");
    let staff = recs.iter().find(|r| r["record"]["native_message_id"] == reply_id.as_str()).expect("Dr Lee's record");
    assert_eq!(staff["record"]["sender"]["role"], "staff");
    assert_eq!(staff["record"]["body"], reply_text, "the record keeps the stripped text");
    let logs = d.logs().join("\n");
    for phi in
        ["ann@patients.test", "dr.lee@clinic.test", "book an appointment", "e2e-subject", "Ann Example", reply_text]
    {
        assert!(!logs.contains(phi), "{phi:?} reached the daemon's logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_mail_is_quarantined_and_acknowledged_and_reading_goes_on() {
    let Some(env) = mail_env() else { return };
    let user = "box8@clinic.test";
    empty_inbox(&env, user).await;
    let dir = tempfile::tempdir().unwrap();
    write_secrets(dir.path(), &env);
    let sink = Sink::start(Mode::Accept).await;
    let toml = daemon_config(
        dir.path(),
        &sink.url(),
        &email_account(&env, "box", user, None),
        "[[route]]\nname = \"box-to-sink\"\nfrom = [\"email.box\"]\nto = [\"webhook.sink\"]\n",
    );
    let mut d = Daemon::start(dir.path(), &toml);
    assert!(d.wait_log("IMAP connected", 0, WAIT), "{:?}", d.logs());

    let mut imap = Imap::login(&env, user).await;
    imap.append("INBOX", b"this is not an email at all\r\n").await;
    imap.logout().await;
    let good = tag("good");
    smtp_send(&env, "ann@patients.test", user, &email("ann@patients.test", user, &good, "x", "", "after the bad one"))
        .await;

    assert!(sink.wait_for(1, WAIT).await, "the good message is forwarded: {:?}", d.logs());
    assert_eq!(sink.received()[0].body["text"], "after the bad one");
    wait_until("both messages acknowledged", || async {
        let mut imap = Imap::login(&env, user).await;
        imap.cmd("EXAMINE INBOX").await;
        let unseen = imap.search("UNSEEN").await;
        imap.logout().await;
        unseen.is_empty()
    })
    .await;
    assert!(d.logs().iter().any(|l| l.contains("quarantined")), "{:?}", d.logs());
    assert!(d.alive());
    assert!(d.terminate());
    assert_eq!(sink.received().len(), 1, "the malformed message is not forwarded");
}

/// Issue 15, items 12, 8 and 13: a clinician's clinical answer to a patient who wrote by plain
/// email is rerouted to the secure account; the patient gets only a "new secure message" notice
/// by email. That notice was threaded under the clinician's internal Message-ID; it must thread
/// under the patient's own message. Mailboxes: box1 the clinic, box2 the clinician, box3 the
/// patient (apart from the other tests', which run at the same time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerouted_answers_notice_threads_under_the_patients_own_message() {
    let Some(env) = mail_env() else { return };
    let (clinic, doctor, patient) = ("box1@clinic.test", "box2@clinic.test", "box3@clinic.test");
    for user in [clinic, doctor, patient] {
        empty_inbox(&env, user).await;
    }
    let dir = tempfile::tempdir().unwrap();
    write_secrets(dir.path(), &env);
    let sink = Sink::start(Mode::Accept).await;
    let toml = daemon_config(
        dir.path(),
        &sink.url(),
        &email_account(&env, "clinic", clinic, Some(doctor)),
        "[[route]]\nname = \"patients-to-clinic\"\nfrom = [\"email.clinic\"]\nto = [\"webhook.sink\", \"email.clinic\"]\n\
         [policy]\nsecure_account = \"webhook.sink\"\n[policy.channels]\n\"webhook.sink\" = \"secure\"\n",
    )
    .replace("\"email:ann@patients.test\"", &format!("\"email:{patient}\", \"phone:+14165550199\""))
    .replace("\"email:dr.lee@clinic.test\"", &format!("\"email:{doctor}\""));
    let mut d = Daemon::start(dir.path(), &toml);
    assert!(d.wait_log("IMAP connected", 0, WAIT), "{:?}", d.logs());

    let asked = tag("ask");
    smtp_send(&env, patient, clinic, &email(patient, clinic, &asked, "Question", "", "Could you call me back?")).await;
    wait_until("the forward reached the clinician", || async {
        !messages(&env, doctor, "HEADER X-Carebridge-Delivery \"dlv-\"").await.is_empty()
    })
    .await;
    let forwards = messages(&env, doctor, "HEADER X-Carebridge-Delivery \"dlv-\"").await;
    let (headers, _) = parse_simple(&forwards[0].1);
    let token = plus_token(&headers["from"], "box1", "clinic.test").expect("from the plus-address");
    let forward_id = headers["message-id"].clone();

    let answer_id = tag("answer");
    let answer = "Renewed: amoxicillin 500 mg, three times a day for 7 days.";
    smtp_send(
        &env,
        doctor,
        &format!("box1+{token}@clinic.test"),
        &email(
            doctor,
            &format!("box1+{token}@clinic.test"),
            &answer_id,
            "Re: New patient message",
            &format!("In-Reply-To: {forward_id}\r\nReferences: {forward_id}\r\n"),
            answer,
        ),
    )
    .await;

    // The answer goes to the secure account, addressed to the patient there.
    assert!(sink.wait_for(2, WAIT).await, "the rerouted answer reaches the secure account: {:?}", d.logs());
    let secure = sink.received().into_iter().find(|r| r.body["kind"] == "reply").expect("the rerouted reply");
    assert_eq!(secure.body["text"], answer);
    assert_eq!(secure.body["rerouted_from"], "email.clinic", "the portal learns where it was meant to go");

    // By email, only the notice, threaded under the patient's own message.
    wait_until("the notice reached the patient", || async {
        !messages(&env, patient, "HEADER Auto-Submitted \"auto-generated\"").await.is_empty()
    })
    .await;
    let got = messages(&env, patient, "ALL").await;
    assert_eq!(got.len(), 1, "the patient gets the notice, not the answer");
    let (headers, body) = parse_simple(&got[0].1);
    assert!(body.contains("secure message") && !body.contains("amoxicillin"), "{body}");
    let parent = headers.get("in-reply-to").cloned().unwrap_or_default();
    assert_eq!(parent.trim_matches(['<', '>']), asked.trim_matches(['<', '>']), "under the patient's own message");
    assert!(!got[0].1.windows(6).any(|w| w == b"answer"), "the clinician's Message-ID is not shown to the patient");
    assert_ne!(headers.get("subject").map(String::as_str), Some("Secure message from your clinic"));

    assert!(d.terminate());
}
