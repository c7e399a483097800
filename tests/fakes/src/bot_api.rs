//! A faithful local Telegram Bot API server for tests (axum on `127.0.0.1:0`).
//!
//! It speaks the real wire format: `POST /bot<token>/<method>` with JSON, query-string or
//! multipart parameters; answers `{"ok":true,"result":…}` or the error envelope
//! `{"ok":false,"error_code":…,"description":…,"parameters":{"retry_after":…}}` with the HTTP status
//! equal to `error_code` (never 5xx unless a test asks for it: teloxide sleeps 10 s on 5xx);
//! files are downloaded from `GET /file/bot<token>/<file_path>`. Method names are matched
//! case-insensitively, like Telegram (teloxide sends `GetMe`, `SendMessage`).
//!
//! Semantics kept faithfully:
//! - getUpdates: an update is confirmed (and dropped) once a call carries `offset` > its id;
//!   without `offset` the earliest unconfirmed update comes first; an empty long poll is held for
//!   `min(timeout, 1 s)`; a newer getUpdates ends a pending one with 409 Conflict; 409 while a
//!   webhook is set.
//! - message ids increase per chat, shared by pushed updates and the bot's own messages, so
//!   replies reference real messages (`reply_to_message` is embedded as Telegram does).
//! - setWebhook: pending updates are pushed to the URL (plain HTTP, one at a time, with the
//!   `X-Telegram-Bot-Api-Secret-Token` header) until it answers 2xx.
//!
//! Faults a test can program: a 429 storm on sends ([`FakeBotApi::rate_limit_sends`]), a chat
//! that blocked the bot ([`FakeBotApi::block_chat`]) or any error per chat, malformed updates
//! ([`FakeBotApi::push_raw`]), and stalled polls ([`FakeBotApi::stall_polls`]).
//!
//! Only axum, tokio and serde_json; used as `carebridge_fakes::bot_api::FakeBotApi` by the
//! Telegram adapter's tests and the end-to-end tests.
#![allow(dead_code)]

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// The token the fake accepts (`<bot id>:<secret>`, like a real one).
pub const TOKEN: &str = "123456:TEST-TOKEN_abcdefghijklmnopqrstuvwxyz";
/// The bot's user id.
pub const BOT_ID: i64 = 123456;
/// Longest time an empty getUpdates is held.
const MAX_HOLD: Duration = Duration::from_secs(1);

/// One API call as received.
#[derive(Clone, Debug)]
pub struct Call {
    /// The method name in lower case (`sendmessage`).
    pub method: String,
    /// Its parameters as JSON (multipart files are left out; see [`SentMessage::document`]).
    pub params: Value,
}

/// A message the bot sent (sendMessage or sendDocument that succeeded).
#[derive(Clone, Debug, PartialEq)]
pub struct SentMessage {
    /// `sendMessage` or `sendDocument`.
    pub method: &'static str,
    /// The target chat.
    pub chat_id: i64,
    /// The id the fake assigned.
    pub message_id: i64,
    /// `text` (sendMessage).
    pub text: Option<String>,
    /// `parse_mode`, if given.
    pub parse_mode: Option<String>,
    /// `reply_parameters.message_id`, if given.
    pub reply_to: Option<i64>,
    /// sendDocument: the uploaded file name and bytes.
    pub document: Option<(Option<String>, Vec<u8>)>,
}

/// Ids of a pushed update and of its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// `update_id`.
    pub update_id: i64,
    /// `message_id` within its chat.
    pub message_id: i64,
}

#[derive(Clone, Debug)]
struct Webhook {
    url: String,
    secret: Option<String>,
}

#[derive(Default)]
struct Inner {
    updates: VecDeque<Value>,
    next_update_id: i64,
    next_message_id: HashMap<i64, i64>,
    messages: HashMap<(i64, i64), Value>,
    calls: Vec<Call>,
    sent: Vec<SentMessage>,
    files: HashMap<String, (String, Vec<u8>)>,
    next_file: u64,
    rate_limit_skip: u32,
    rate_limited_sends: u32,
    retry_after: u64,
    chat_errors: HashMap<i64, (u16, String)>,
    webhook: Option<Webhook>,
    webhook_posts: Vec<(i64, u16)>,
    poll_generation: u64,
    stall_polls: bool,
    stall_after_batch: bool,
    deliveries: HashMap<i64, u32>,
    allowed_updates: Option<Vec<String>>,
}

struct Shared {
    inner: Mutex<Inner>,
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock must not hide the original panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn touch(&self) {
        self.changed.notify_waiters();
    }
}

/// The running fake. Dropping it stops the server.
pub struct FakeBotApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeBotApi {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl FakeBotApi {
    /// Starts the fake on a free loopback port.
    pub async fn start() -> FakeBotApi {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner { next_update_id: 700_000_000, retry_after: 1, ..Inner::default() }),
            changed: Notify::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake Bot API");
        let addr = listener.local_addr().expect("fake Bot API address");
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let pusher = tokio::spawn(push_webhooks(shared.clone()));
        FakeBotApi { addr, shared, tasks: vec![server, pusher] }
    }

    /// The base URL to configure as `api_url` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token the fake accepts.
    pub fn token(&self) -> &'static str {
        TOKEN
    }

    // ---- pushing updates -------------------------------------------------------------------

    /// Queues an update `{"update_id": <new id>, <kind>: <payload>}` and returns its id.
    pub fn push_update(&self, kind: &str, payload: Value) -> i64 {
        self.push_raw(|id| json!({ "update_id": id, kind: payload }))
    }

    /// Queues whatever JSON `build(update_id)` returns, however malformed.
    pub fn push_raw(&self, build: impl FnOnce(i64) -> Value) -> i64 {
        let id = {
            let mut s = self.shared.lock();
            let id = s.next_update_id;
            s.next_update_id += 1;
            let u = build(id);
            s.updates.push_back(u);
            id
        };
        self.shared.touch();
        id
    }

    /// Queues an update whose message lacks `date` (teloxide reads it as `UpdateKind::Error`).
    pub fn push_malformed(&self, chat_id: i64) -> i64 {
        self.push_raw(|id| {
            json!({"update_id": id, "message": {
                "message_id": 1, "chat": {"id": chat_id, "type": "private"}, "text": "no date here"
            }})
        })
    }

    /// A new message in a chat (private if `chat_id > 0`, supergroup otherwise) from `user_id`,
    /// with `content` merged in (`{"text": …}`, `{"photo": …, "caption": …}`, …).
    pub fn push_message(
        &self,
        chat_id: i64,
        user_id: i64,
        first_name: &str,
        content: Value,
        reply_to: Option<i64>,
    ) -> Pushed {
        let (message_id, message) = {
            let mut s = self.shared.lock();
            let message_id = s.next_message_id(chat_id);
            let mut m = json!({
                "message_id": message_id,
                "date": now_unix(),
                "chat": chat_json(chat_id, first_name),
                "from": {"id": user_id, "is_bot": false, "first_name": first_name, "language_code": "en"},
            });
            merge(&mut m, content);
            if let Some(r) = reply_to
                && let Some(original) = s.messages.get(&(chat_id, r)).cloned()
            {
                m["reply_to_message"] = original;
            }
            s.messages.insert((chat_id, message_id), m.clone());
            (message_id, m)
        };
        let update_id = self.push_update("message", message);
        Pushed { update_id, message_id }
    }

    /// A patient's text in their private chat (chat id = user id).
    pub fn patient_text(&self, user_id: i64, first_name: &str, text: &str) -> Pushed {
        self.push_message(user_id, user_id, first_name, json!({ "text": text }), None)
    }

    /// A patient's `/start CODE` (what a `t.me/<bot>?start=CODE` deep link sends).
    pub fn patient_start(&self, user_id: i64, first_name: &str, code: &str) -> Pushed {
        let text = format!("/start {code}");
        let content = json!({"text": text, "entities": [{"type": "bot_command", "offset": 0, "length": 6}]});
        self.push_message(user_id, user_id, first_name, content, None)
    }

    /// A patient's reply to an earlier message of their chat.
    pub fn patient_reply(&self, user_id: i64, first_name: &str, text: &str, reply_to: i64) -> Pushed {
        self.push_message(user_id, user_id, first_name, json!({ "text": text }), Some(reply_to))
    }

    /// A patient's photo (registered as a downloadable file, in three sizes like Telegram).
    pub fn patient_photo(&self, user_id: i64, first_name: &str, caption: Option<&str>, bytes: Vec<u8>) -> Pushed {
        let size = bytes.len();
        let (big, big_u) = self.add_file("photos", bytes);
        let (small, small_u) = self.add_file("photos", vec![0u8; 16]);
        let mut content = json!({"photo": [
            {"file_id": small, "file_unique_id": small_u, "width": 90, "height": 90, "file_size": 16},
            {"file_id": big, "file_unique_id": big_u, "width": 1280, "height": 960, "file_size": size},
        ]});
        if let Some(c) = caption {
            content["caption"] = c.into();
        }
        self.push_message(user_id, user_id, first_name, content, None)
    }

    /// A patient's document.
    pub fn patient_document(
        &self,
        user_id: i64,
        first_name: &str,
        file_name: &str,
        mime: &str,
        bytes: Vec<u8>,
    ) -> Pushed {
        let size = bytes.len();
        let (id, unique) = self.add_file("documents", bytes);
        let content = json!({"document": {
            "file_id": id, "file_unique_id": unique, "file_name": file_name, "mime_type": mime, "file_size": size
        }});
        self.push_message(user_id, user_id, first_name, content, None)
    }

    /// An edit of an earlier message: `edited_message` with the same `message_id` and `edit_date`.
    pub fn edit_message(&self, chat_id: i64, message_id: i64, new_text: &str) -> i64 {
        let edited = {
            let mut s = self.shared.lock();
            let Some(mut m) = s.messages.get(&(chat_id, message_id)).cloned() else {
                panic!("fake Bot API: no message {message_id} in that chat to edit");
            };
            m["text"] = new_text.into();
            m["edit_date"] = (now_unix() + 1).into();
            s.messages.insert((chat_id, message_id), m.clone());
            m
        };
        self.push_update("edited_message", edited)
    }

    /// A staff member's text in a group, optionally replying to a message there (for example
    /// one the bot forwarded).
    pub fn group_text(
        &self,
        chat_id: i64,
        user_id: i64,
        first_name: &str,
        text: &str,
        reply_to: Option<i64>,
    ) -> Pushed {
        self.push_message(chat_id, user_id, first_name, json!({ "text": text }), reply_to)
    }

    /// Registers a downloadable file; returns `(file_id, file_unique_id)`.
    pub fn add_file(&self, folder: &str, bytes: Vec<u8>) -> (String, String) {
        let mut s = self.shared.lock();
        s.next_file += 1;
        let n = s.next_file;
        let id = format!("BQACAgQAAx{n:06}");
        let path = format!("{folder}/file_{n}.bin");
        s.files.insert(id.clone(), (path, bytes));
        (id, format!("AgAD{n}"))
    }

    // ---- faults ------------------------------------------------------------------------------

    /// The next `n` send calls (sendMessage, sendDocument) answer 429 with `retry_after`.
    pub fn rate_limit_sends(&self, n: u32, retry_after_secs: u64) {
        self.rate_limit_sends_after(0, n, retry_after_secs);
    }

    /// Like [`rate_limit_sends`](Self::rate_limit_sends), but only after `ok_first` more sends
    /// have succeeded (a 429 in the middle of a multi-part delivery).
    pub fn rate_limit_sends_after(&self, ok_first: u32, n: u32, retry_after_secs: u64) {
        let mut s = self.shared.lock();
        s.rate_limit_skip = ok_first;
        s.rate_limited_sends = n;
        s.retry_after = retry_after_secs;
    }

    /// Sends to `chat_id` answer 403 "Forbidden: bot was blocked by the user".
    pub fn block_chat(&self, chat_id: i64) {
        self.fail_chat(chat_id, 403, "Forbidden: bot was blocked by the user");
    }

    /// Sends to `chat_id` answer `code` with `description` (e.g. 400 "Bad Request: chat not found").
    pub fn fail_chat(&self, chat_id: i64, code: u16, description: &str) {
        self.shared.lock().chat_errors.insert(chat_id, (code, description.to_string()));
    }

    /// Undoes [`block_chat`](Self::block_chat) / [`fail_chat`](Self::fail_chat).
    pub fn heal_chat(&self, chat_id: i64) {
        self.shared.lock().chat_errors.remove(&chat_id);
    }

    /// While on, getUpdates calls are recorded but neither applied (their offset confirms
    /// nothing) nor answered: like a network that loses requests.
    pub fn stall_polls(&self, on: bool) {
        self.shared.lock().stall_polls = on;
        self.shared.touch();
    }

    /// Serves the next non-empty getUpdates batch normally, then stalls every later poll (see
    /// [`stall_polls`](Self::stall_polls)): the adapter got the updates, but whatever it
    /// confirms next is lost, like a daemon killed right after fetching.
    pub fn stall_after_next_batch(&self) {
        self.shared.lock().stall_after_batch = true;
    }

    // ---- inspection --------------------------------------------------------------------------

    /// Every message the bot sent, in order.
    pub fn sent(&self) -> Vec<SentMessage> {
        self.shared.lock().sent.clone()
    }

    /// The messages the bot sent to one chat, in order.
    pub fn sent_to(&self, chat_id: i64) -> Vec<SentMessage> {
        self.sent().into_iter().filter(|m| m.chat_id == chat_id).collect()
    }

    /// Every call of `method` (case-insensitive), in order.
    pub fn calls(&self, method: &str) -> Vec<Call> {
        let m = method.to_ascii_lowercase();
        self.shared.lock().calls.iter().filter(|c| c.method == m).cloned().collect()
    }

    /// Ids of the updates not yet confirmed.
    pub fn pending_update_ids(&self) -> Vec<i64> {
        self.shared.lock().updates.iter().filter_map(|u| u["update_id"].as_i64()).collect()
    }

    /// How many times an update was handed out (getUpdates results and webhook posts).
    pub fn delivery_count(&self, update_id: i64) -> u32 {
        self.shared.lock().deliveries.get(&update_id).copied().unwrap_or(0)
    }

    /// The webhook URL and secret set with setWebhook, if any.
    pub fn webhook(&self) -> Option<(String, Option<String>)> {
        self.shared.lock().webhook.as_ref().map(|w| (w.url.clone(), w.secret.clone()))
    }

    /// `(update_id, HTTP status)` of every webhook POST, in order (status 0: no connection).
    pub fn webhook_posts(&self) -> Vec<(i64, u16)> {
        self.shared.lock().webhook_posts.clone()
    }

    /// Waits until `cond` holds, re-checking on every change and every 50 ms. Panics after 30 s
    /// naming `what` (a hang guard, not a timing assertion).
    pub async fn wait_until(&self, what: &str, mut cond: impl FnMut(&FakeBotApi) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let changed = self.shared.changed.notified();
            if cond(self) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("fake Bot API: timed out waiting for {what}");
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), changed).await;
        }
    }

    /// Waits until at least `n` messages were sent to `chat_id` and returns them all.
    pub async fn wait_sent_to(&self, chat_id: i64, n: usize) -> Vec<SentMessage> {
        self.wait_until(&format!("{n} message(s) sent to chat {chat_id}"), |f| f.sent_to(chat_id).len() >= n).await;
        self.sent_to(chat_id)
    }
}

impl Inner {
    fn next_message_id(&mut self, chat_id: i64) -> i64 {
        let n = self.next_message_id.entry(chat_id).or_insert(0);
        *n += 1;
        *n
    }
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn chat_json(chat_id: i64, first_name: &str) -> Value {
    if chat_id > 0 {
        json!({"id": chat_id, "type": "private", "first_name": first_name})
    } else {
        json!({"id": chat_id, "type": "supergroup", "title": "Clinic staff"})
    }
}

fn bot_user() -> Value {
    json!({"id": BOT_ID, "is_bot": true, "first_name": "FakeBot", "username": "fake_bot"})
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

// ---- HTTP ----------------------------------------------------------------------------------

fn ok(result: Value) -> Response {
    (StatusCode::OK, axum::Json(json!({"ok": true, "result": result}))).into_response()
}

fn err(code: u16, description: &str) -> Response {
    err_with(code, description, None)
}

fn err_with(code: u16, description: &str, parameters: Option<Value>) -> Response {
    let mut body = json!({"ok": false, "error_code": code, "description": description});
    if let Some(p) = parameters {
        body["parameters"] = p;
    }
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    (status, axum::Json(body)).into_response()
}

/// A parsed request: parameters plus uploaded files (`name → (filename, bytes)`).
struct Request {
    params: Value,
    files: HashMap<String, (Option<String>, Vec<u8>)>,
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    if let Some(rest) = path.strip_prefix("/file/bot") {
        return download(&shared, &method, rest);
    }
    let Some(rest) = path.strip_prefix("/bot") else {
        return err(404, "Not Found");
    };
    let Some((token, api_method)) = rest.split_once('/') else {
        return err(404, "Not Found");
    };
    if token != TOKEN {
        return err(401, "Unauthorized");
    }
    let req = match parse_request(uri.query(), &headers, &body) {
        Ok(r) => r,
        Err(e) => return err(400, &format!("Bad Request: {e}")),
    };
    let name = api_method.to_ascii_lowercase();
    shared.lock().calls.push(Call { method: name.clone(), params: req.params.clone() });
    shared.touch();
    match name.as_str() {
        "getme" => ok(json!({
            "id": BOT_ID, "is_bot": true, "first_name": "FakeBot", "username": "fake_bot",
            "can_join_groups": true, "can_read_all_group_messages": false,
            "supports_inline_queries": false, "has_main_web_app": false
        })),
        "getupdates" => get_updates(&shared, &req.params).await,
        "sendmessage" | "senddocument" => send(&shared, &name, &req),
        "getfile" => get_file(&shared, &req.params),
        "setwebhook" => {
            let url = req.params["url"].as_str().unwrap_or("").to_string();
            let secret = req.params["secret_token"].as_str().map(str::to_string);
            {
                let mut s = shared.lock();
                s.webhook = (!url.is_empty()).then_some(Webhook { url, secret });
                if req.params["drop_pending_updates"].as_bool() == Some(true) {
                    s.updates.clear();
                }
            }
            shared.touch();
            ok(json!(true))
        }
        "deletewebhook" => {
            {
                let mut s = shared.lock();
                s.webhook = None;
                if req.params["drop_pending_updates"].as_bool() == Some(true) {
                    s.updates.clear();
                }
            }
            shared.touch();
            ok(json!(true))
        }
        "getwebhookinfo" => {
            let s = shared.lock();
            let url = s.webhook.as_ref().map_or("", |w| w.url.as_str());
            ok(json!({"url": url, "has_custom_certificate": false, "pending_update_count": s.updates.len()}))
        }
        _ => err(404, "Not Found"),
    }
}

fn parse_request(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Result<Request, String> {
    let mut params = serde_json::Map::new();
    let mut files = HashMap::new();
    for (k, v) in form_pairs(query.unwrap_or("")) {
        params.insert(k, Value::String(v));
    }
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if ct.starts_with("application/json") {
        if !body.is_empty() {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(m)) => params.extend(m),
                _ => return Err("can't parse JSON object".to_string()),
            }
        }
    } else if ct.starts_with("multipart/form-data") {
        let boundary = ct
            .split(';')
            .find_map(|p| p.trim().strip_prefix("boundary="))
            .map(|b| b.trim_matches('"').to_string())
            .ok_or("multipart without boundary")?;
        for part in multipart_parts(body, &boundary) {
            match part.filename {
                Some(_) => {
                    files.insert(part.name.clone(), (part.filename.clone(), part.data.clone()));
                }
                None => {
                    params.insert(part.name, Value::String(String::from_utf8_lossy(&part.data).into_owned()));
                }
            }
        }
    } else if ct.starts_with("application/x-www-form-urlencoded") {
        for (k, v) in form_pairs(&String::from_utf8_lossy(body)) {
            params.insert(k, Value::String(v));
        }
    }
    Ok(Request { params: Value::Object(params), files })
}

fn form_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Part {
    name: String,
    filename: Option<String>,
    data: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    (from..=hay.len() - needle.len()).find(|&i| &hay[i..i + needle.len()] == needle)
}

fn multipart_parts(body: &[u8], boundary: &str) -> Vec<Part> {
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    let mut parts = Vec::new();
    let Some(mut pos) = find(body, delim, 0) else { return parts };
    loop {
        let start = pos + delim.len();
        if body.get(start..start + 2) == Some(b"--") {
            break;
        }
        let Some(next) = find(body, delim, start) else { break };
        // Part = CRLF headers CRLF CRLF data CRLF
        let chunk = &body[start..next];
        let chunk = chunk.strip_prefix(b"\r\n").unwrap_or(chunk);
        let chunk = chunk.strip_suffix(b"\r\n").unwrap_or(chunk);
        if let Some(split) = find(chunk, b"\r\n\r\n", 0) {
            let head = String::from_utf8_lossy(&chunk[..split]).into_owned();
            let data = chunk[split + 4..].to_vec();
            let mut name = String::new();
            let mut filename = None;
            for line in head.lines() {
                if line.to_ascii_lowercase().starts_with("content-disposition") {
                    for attr in line.split(';').map(str::trim) {
                        if let Some(v) = attr.strip_prefix("name=") {
                            name = v.trim_matches('"').to_string();
                        } else if let Some(v) = attr.strip_prefix("filename=") {
                            filename = Some(v.trim_matches('"').to_string());
                        }
                    }
                }
            }
            parts.push(Part { name, filename, data });
        }
        pos = next;
    }
    parts
}

fn int_param(params: &Value, key: &str) -> Option<i64> {
    match &params[key] {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn object_param(params: &Value, key: &str) -> Option<Value> {
    match &params[key] {
        Value::Object(_) => Some(params[key].clone()),
        Value::String(s) => serde_json::from_str::<Value>(s).ok().filter(Value::is_object),
        _ => None,
    }
}

fn update_kind(u: &Value) -> Option<String> {
    u.as_object()?.keys().find(|k| *k != "update_id").cloned()
}

async fn get_updates(shared: &Arc<Shared>, params: &Value) -> Response {
    if shared.lock().stall_polls {
        // Lost on the way: never applied, never answered.
        std::future::pending::<()>().await;
    }
    let offset = int_param(params, "offset");
    let limit = int_param(params, "limit").unwrap_or(100).clamp(1, 100) as usize;
    let timeout = Duration::from_secs(int_param(params, "timeout").unwrap_or(0).max(0) as u64);
    let allowed: Option<Vec<String>> = match &params["allowed_updates"] {
        Value::Array(a) => Some(a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()),
        Value::String(s) => serde_json::from_str(s).ok(),
        _ => None,
    };
    let my_generation = {
        let mut s = shared.lock();
        if s.webhook.is_some() {
            return err(
                409,
                "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first",
            );
        }
        if let Some(a) = allowed {
            s.allowed_updates = (!a.is_empty()).then_some(a);
        }
        if let Some(o) = offset
            && o > 0
        {
            s.updates.retain(|u| u["update_id"].as_i64().is_none_or(|id| id >= o));
        }
        s.poll_generation += 1;
        s.poll_generation
    };
    shared.touch();
    let deadline = tokio::time::Instant::now() + timeout.min(MAX_HOLD);
    loop {
        let changed = shared.changed.notified();
        {
            let mut s = shared.lock();
            if s.poll_generation != my_generation {
                return err(
                    409,
                    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
                );
            }
            let allowed = s.allowed_updates.clone();
            let batch: Vec<Value> = s
                .updates
                .iter()
                .filter(|u| match (&allowed, update_kind(u)) {
                    (Some(a), Some(k)) => a.contains(&k),
                    _ => true,
                })
                .take(limit)
                .cloned()
                .collect();
            if !batch.is_empty() || tokio::time::Instant::now() >= deadline {
                if !batch.is_empty() && s.stall_after_batch {
                    s.stall_after_batch = false;
                    s.stall_polls = true;
                }
                for u in &batch {
                    if let Some(id) = u["update_id"].as_i64() {
                        *s.deliveries.entry(id).or_insert(0) += 1;
                    }
                }
                drop(s);
                shared.touch();
                return ok(Value::Array(batch));
            }
        }
        let _ = tokio::time::timeout_at(deadline, changed).await;
    }
}

fn send(shared: &Arc<Shared>, name: &str, req: &Request) -> Response {
    let p = &req.params;
    let mut s = shared.lock();
    if s.rate_limited_sends > 0 && s.rate_limit_skip == 0 {
        s.rate_limited_sends -= 1;
        let after = s.retry_after;
        return err_with(429, &format!("Too Many Requests: retry after {after}"), Some(json!({"retry_after": after})));
    }
    let Some(chat_id) = int_param(p, "chat_id") else {
        return err(400, "Bad Request: chat_id is empty");
    };
    if let Some((code, description)) = s.chat_errors.get(&chat_id) {
        return err(*code, description);
    }
    let reply = object_param(p, "reply_parameters");
    let reply_to = reply.as_ref().and_then(|r| int_param(r, "message_id"));
    let allow_without = reply.as_ref().and_then(|r| r["allow_sending_without_reply"].as_bool()).unwrap_or(false);
    let original = reply_to.and_then(|r| s.messages.get(&(chat_id, r)).cloned());
    if reply_to.is_some() && original.is_none() && !allow_without {
        return err(400, "Bad Request: message to be replied not found");
    }
    let parse_mode = p["parse_mode"].as_str().map(str::to_string);
    let mut message = json!({"date": now_unix(), "chat": chat_json(chat_id, "Patient"), "from": bot_user()});
    let mut record =
        SentMessage { method: "sendMessage", chat_id, message_id: 0, text: None, parse_mode, reply_to, document: None };
    if name == "sendmessage" {
        let text = p["text"].as_str().unwrap_or("");
        if text.trim().is_empty() {
            return err(400, "Bad Request: message text is empty");
        }
        if text.encode_utf16().count() > 4096 {
            return err(400, "Bad Request: message is too long");
        }
        message["text"] = text.into();
        record.text = Some(text.to_string());
    } else {
        let Some((filename, bytes)) = req.files.get("document").cloned() else {
            return err(400, "Bad Request: there is no document in the request");
        };
        s.next_file += 1;
        let n = s.next_file;
        let file_id = format!("BQACAgQAAx{n:06}");
        s.files.insert(file_id.clone(), (format!("documents/file_{n}.bin"), bytes.clone()));
        message["document"] = json!({
            "file_id": file_id, "file_unique_id": format!("AgAD{n}"),
            "file_name": filename.clone().unwrap_or_else(|| "document".to_string()), "file_size": bytes.len()
        });
        record.method = "sendDocument";
        record.document = Some((filename, bytes));
    }
    let message_id = s.next_message_id(chat_id);
    message["message_id"] = message_id.into();
    if let Some(o) = original {
        message["reply_to_message"] = o;
    }
    record.message_id = message_id;
    s.rate_limit_skip = s.rate_limit_skip.saturating_sub(1);
    s.messages.insert((chat_id, message_id), message.clone());
    s.sent.push(record);
    drop(s);
    shared.touch();
    ok(message)
}

fn get_file(shared: &Arc<Shared>, params: &Value) -> Response {
    let id = params["file_id"].as_str().unwrap_or("");
    let s = shared.lock();
    match s.files.get(id) {
        Some((path, bytes)) => ok(json!({
            "file_id": id, "file_unique_id": format!("u-{id}"), "file_size": bytes.len(), "file_path": path
        })),
        None => err(400, "Bad Request: invalid file_id"),
    }
}

fn download(shared: &Arc<Shared>, method: &Method, rest: &str) -> Response {
    if method != Method::GET {
        return err(405, "Method Not Allowed");
    }
    let Some((token, path)) = rest.split_once('/') else {
        return err(404, "Not Found");
    };
    if token != TOKEN {
        return err(401, "Unauthorized");
    }
    let s = shared.lock();
    match s.files.values().find(|(p, _)| p == path) {
        Some((_, bytes)) => (StatusCode::OK, Body::from(bytes.clone())).into_response(),
        None => err(404, "Not Found"),
    }
}

// ---- webhook pushing -----------------------------------------------------------------------

async fn push_webhooks(shared: Arc<Shared>) {
    loop {
        let changed = shared.changed.notified();
        let job = {
            let s = shared.lock();
            match (&s.webhook, s.updates.front()) {
                (Some(w), Some(u)) => Some((w.clone(), u.clone())),
                _ => None,
            }
        };
        let Some((hook, update)) = job else {
            let _ = tokio::time::timeout(Duration::from_millis(200), changed).await;
            continue;
        };
        let id = update["update_id"].as_i64().unwrap_or(-1);
        {
            let mut s = shared.lock();
            *s.deliveries.entry(id).or_insert(0) += 1;
        }
        let status = post_json(&hook.url, hook.secret.as_deref(), &update.to_string()).await;
        {
            let mut s = shared.lock();
            s.webhook_posts.push((id, status));
            if (200..300).contains(&status) && s.updates.front().and_then(|u| u["update_id"].as_i64()) == Some(id) {
                s.updates.pop_front();
            }
        }
        shared.touch();
        if !(200..300).contains(&status) {
            // Telegram retries failed deliveries after a while.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A minimal HTTP/1.1 POST over plain TCP; returns the status (0 when there is none).
async fn post_json(url: &str, secret: Option<&str>, body: &str) -> u16 {
    let Some(rest) = url.strip_prefix("http://") else { return 0 };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(authority)).await
    else {
        return 0;
    };
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(s) = secret {
        req.push_str(&format!("X-Telegram-Bot-Api-Secret-Token: {s}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    if stream.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut resp = Vec::new();
    if tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut resp)).await.is_err() {
        return 0;
    }
    let head = String::from_utf8_lossy(&resp);
    head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}
