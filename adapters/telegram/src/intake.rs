//! One update, from raw bytes to an answer for its source: parse, fetch attachments, submit, and
//! say whether Telegram may forget it ([`Outcome::Ack`]) or must deliver it again
//! ([`Outcome::Retry`]). Shared by long polling ([`crate::inbound`]) and the webhook server
//! ([`crate::webhook`]), so both follow exactly the same rules.

use crate::api::{ApiError, BotApi, Download, FileInfo};
use crate::parse::{self, Action, Draft, FileRef, ParseOptions};
use carebridge_contract::{Attachment, Receipt, Redacted, SourceKey, Submission, Submitter};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tracing::{debug, info, warn};

/// After this many transient download failures of one update, it is submitted with a note
/// instead of its file, so one unreachable file cannot hold up the queue forever.
const MAX_FETCH_ATTEMPTS: u32 = 3;

/// What the source should be told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Recorded, quarantined or deliberately ignored: confirm it.
    Ack,
    /// Not recorded: do not confirm; Telegram delivers it again.
    Retry,
}

/// How to submit: pull sources wait for the router, push sources give up after a while.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    /// [`Submitter::submit`]: wait as long as it takes.
    Forever,
    /// [`Submitter::submit_within`].
    AtMost(Duration),
}

/// The per-account intake.
pub(crate) struct Intake {
    api: BotApi,
    opts: ParseOptions,
    failed_fetches: Mutex<HashMap<i64, u32>>,
}

enum Fetched {
    Attachment(Attachment),
    Note(String),
}

impl Intake {
    pub(crate) fn new(api: BotApi, opts: ParseOptions) -> Self {
        Self { api, opts, failed_fetches: Mutex::new(HashMap::new()) }
    }

    /// Handles one update's raw bytes end to end.
    pub(crate) async fn handle(&self, raw: &[u8], submitter: &Submitter, wait: Wait) -> Outcome {
        let account = &self.opts.account;
        let Ok(text) = std::str::from_utf8(raw) else {
            let source = SourceKey { account: account.clone(), native_id: parse::hashed_native_id(raw) };
            let reason = "update is not UTF-8 text".to_string();
            return self.submit_malformed(source, raw, reason, submitter, wait).await;
        };
        let parsed = parse::parse_update(text, &self.opts);
        let update_id = parsed.update_id;
        match parsed.action {
            Action::Ignore(reason) => {
                info!(account = %account, update_id, reason, "Update ignored.");
                Outcome::Ack
            }
            Action::Malformed { source, reason } => self.submit_malformed(source, raw, reason, submitter, wait).await,
            Action::Submit(draft) => {
                let Some(envelope) = self.complete(*draft, update_id).await else {
                    return Outcome::Retry;
                };
                let source = envelope.source.clone();
                let receipt = submit(submitter, Submission::Message(envelope), wait).await;
                self.answer(&source, update_id, receipt)
            }
        }
    }

    async fn submit_malformed(
        &self,
        source: SourceKey,
        raw: &[u8],
        reason: String,
        submitter: &Submitter,
        wait: Wait,
    ) -> Outcome {
        warn!(account = %source.account, source = %source, reason = %reason, "Malformed update; quarantining it.");
        let submission = Submission::Malformed { source: source.clone(), raw: Redacted::new(raw.to_vec()), reason };
        let receipt = submit(submitter, submission, wait).await;
        self.answer(&source, None, receipt)
    }

    fn answer(&self, source: &SourceKey, update_id: Option<i64>, receipt: Receipt) -> Outcome {
        match &receipt {
            Receipt::Recorded(r) => {
                info!(account = %source.account, source = %source, record_id = %r, "Update recorded.")
            }
            Receipt::Duplicate(r) => {
                info!(account = %source.account, source = %source, record_id = %r, "Update already recorded.")
            }
            Receipt::Quarantined { id, reason } => {
                warn!(account = %source.account, source = %source, record_id = %id, reason = %reason, "Update quarantined.")
            }
            Receipt::Unavailable => {
                warn!(account = %source.account, source = %source, "Router unavailable; the update will be fetched again.")
            }
        }
        if receipt.may_ack() {
            if let Some(id) = update_id
                && let Ok(mut failed) = self.failed_fetches.lock()
            {
                failed.remove(&id);
            }
            Outcome::Ack
        } else {
            Outcome::Retry
        }
    }

    /// Downloads the draft's files and appends notes. `None` means a transient failure: try the
    /// whole update again later.
    async fn complete(&self, draft: Draft, update_id: Option<i64>) -> Option<carebridge_contract::Envelope> {
        let Draft { mut envelope, files, mut notes } = draft;
        for file in &files {
            match self.fetch(file).await {
                Ok(Fetched::Attachment(a)) => envelope.attachments.push(a),
                Ok(Fetched::Note(n)) => notes.push(n),
                Err(e) => {
                    let attempts = self.count_failure(update_id);
                    if attempts < MAX_FETCH_ATTEMPTS {
                        warn!(account = %envelope.source.account, source = %envelope.source, what = file.what, error = %e, attempts, "Attachment download failed; will retry the update.");
                        return None;
                    }
                    warn!(account = %envelope.source.account, source = %envelope.source, what = file.what, error = %e, attempts, "Attachment download keeps failing; submitting without it.");
                    notes.push(format!("[carebridge: a {} could not be downloaded from Telegram]", file.what));
                }
            }
        }
        if !notes.is_empty() {
            let mut body = envelope.body.expose().clone();
            for n in notes {
                if !body.is_empty() {
                    body.push_str("\n\n");
                }
                body.push_str(&n);
            }
            envelope.body = Redacted::new(body);
        }
        Some(envelope)
    }

    fn count_failure(&self, update_id: Option<i64>) -> u32 {
        let Some(id) = update_id else { return MAX_FETCH_ATTEMPTS };
        let Ok(mut failed) = self.failed_fetches.lock() else { return MAX_FETCH_ATTEMPTS };
        if failed.len() > 1024 {
            failed.clear();
        }
        let n = failed.entry(id).or_insert(0);
        *n += 1;
        *n
    }

    /// getFile + download with the size limit. Permanent problems become notes; transient ones
    /// are errors.
    async fn fetch(&self, file: &FileRef) -> Result<Fetched, ApiError> {
        let max = self.opts.max_attachment_bytes;
        let too_large = || {
            Fetched::Note(format!(
                "[carebridge: a {} was not downloaded because it is larger than the {max}-byte limit]",
                file.what
            ))
        };
        if file.size.is_some_and(|s| s > max) {
            return Ok(too_large());
        }
        let info: FileInfo = match self.api.call("getFile", &serde_json::json!({"file_id": file.file_id})).await {
            Ok(info) => info,
            Err(e) if e.is_transient() => return Err(e),
            // "file is too big" (over the Bot API's 20 MB), an expired file id, …
            Err(e) => {
                debug!(account = %self.opts.account, what = file.what, error = %e, "getFile refused.");
                return Ok(Fetched::Note(format!(
                    "[carebridge: a {} could not be downloaded from Telegram]",
                    file.what
                )));
            }
        };
        if info.file_size.is_some_and(|s| s > max) {
            return Ok(too_large());
        }
        let Some(path) = info.file_path else {
            return Ok(Fetched::Note(format!("[carebridge: a {} could not be downloaded from Telegram]", file.what)));
        };
        match self.api.download(&path, max).await {
            Ok(Download::Complete(data)) => Ok(Fetched::Attachment(Attachment {
                filename: file.filename.clone(),
                content_type: file.content_type.clone(),
                data: Redacted::new(data),
            })),
            Ok(Download::TooLarge) => Ok(too_large()),
            Err(e) if e.is_transient() => Err(e),
            Err(_) => Ok(Fetched::Note(format!("[carebridge: a {} could not be downloaded from Telegram]", file.what))),
        }
    }
}

async fn submit(submitter: &Submitter, submission: Submission, wait: Wait) -> Receipt {
    match wait {
        Wait::Forever => submitter.submit(submission).await,
        Wait::AtMost(d) => submitter.submit_within(submission, d).await,
    }
}
