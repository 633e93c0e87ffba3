//! A local stand-in for the Telegram Bot API, so no test reaches Telegram.
//!
//! It answers the methods teloxide calls (`getMe`, `getWebhookInfo`,
//! `deleteWebhook`, `getUpdates` with long polling and offsets,
//! `sendMessage`), behaves like Telegram when two pollers share a token (a
//! new `getUpdates` ends the pending one with HTTP 409 and Telegram's exact
//! body), records every call, and can inject a user's message.
//!
//! It speaks HTTP/1.1 itself, on a plain `TcpListener` (keep-alive,
//! `Content-Length` bodies: what teloxide's client sends), because it must
//! see the socket: a long poll whose client hung up is no poller any more.
//! teloxide drops its in-flight `getUpdates` when it stops; Telegram then
//! forgets that request, and so does this double, instead of answering it
//! with a 409 nobody reads.
//!
//! A `getUpdates` returns at most 100 updates, Telegram's default and
//! largest `limit`, so a burst arrives in batches as it does from Telegram.
//! Replies can be held back ([`BotApi::hold_replies`]) to keep a handler
//! busy for as long as a test needs.
//!
//! Each call is recorded with the label of the process that made it (the
//! first segment of the path: `TELEGRAM_API_URL=http://…/<label>`, see
//! [`BotApi::url_for`]) and the address it came from (a network namespace
//! of its own has its own), and each `getUpdates` as a [`Poll`]: when it was
//! opened and closed, and how it ended. The double can listen inside a
//! network namespace a test made ([`BotApi::start_in`]).
#![allow(dead_code)] // each test file uses a different subset

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Telegram's answer to the older of two concurrent `getUpdates`.
pub(crate) const CONFLICT_DESCRIPTION: &str = "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running";

/// The methods the double answers.
const KNOWN: [&str; 5] = [
    "getMe",
    "getWebhookInfo",
    "deleteWebhook",
    "getUpdates",
    "sendMessage",
];

/// The longest a `getUpdates` is held open, whatever timeout it asks for,
/// so that a bot's shutdown (which waits for the pending poll) stays quick.
const LONGEST_POLL: Duration = Duration::from_secs(1);

/// Telegram's default and largest `getUpdates` limit.
const TELEGRAM_LIMIT: usize = 100;

/// One request the double received.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    pub method: String,
    pub params: Value,
    /// When the double read it.
    pub at: Instant,
    /// The first segment of the path, when it is not the `bot<token>` one
    /// (see [`BotApi::url_for`]); empty otherwise.
    pub label: String,
    /// The client's IP address.
    pub peer: String,
}

/// How a `getUpdates` ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Still waiting for updates.
    Open,
    /// Answered with these update ids (none at the end of the timeout).
    Answered(Vec<i64>),
    /// Ended by a newer `getUpdates`: HTTP 409.
    Conflict,
    /// The client hung up before the answer (a bot that stopped or died).
    Abandoned,
}

/// One `getUpdates`, from the moment the double read it to its answer.
#[derive(Clone, Debug)]
pub(crate) struct Poll {
    pub label: String,
    pub peer: String,
    /// The `offset` parameter: every update below it is confirmed.
    pub offset: i64,
    pub opened: Instant,
    pub closed: Option<Instant>,
    pub outcome: Outcome,
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    polls: Vec<Poll>,
    updates: Vec<Value>,
    next_update_id: i64,
    next_message_id: i64,
    conflicts: usize,
    pending_poll: Option<u64>,
    next_poll: u64,
    terminated: HashSet<u64>,
    /// Whether `sendMessage` answers wait (see [`BotApi::hold_replies`]).
    holding_replies: bool,
}

#[derive(Default)]
struct State {
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub(crate) struct BotApi {
    url: String,
    state: Arc<State>,
    stopped: Arc<AtomicBool>,
    /// The network namespace it listens in, if not the test's own.
    netns: Option<String>,
}

/// Runs `work` on a thread of its own that has entered the network
/// namespace `netns` (made by `ip netns add`): a socket it makes stays
/// there, whichever thread uses it later.
fn in_netns<T: Send + 'static>(
    netns: &str,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let path = format!("/var/run/netns/{netns}");
    std::thread::spawn(move || {
        let namespace = File::open(&path)?;
        nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        work()
    })
    .join()
    .expect("the namespace thread panicked")
}

impl BotApi {
    pub(crate) fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        Self::serve_on(listener, None)
    }

    /// A double listening on `addr` inside the network namespace `netns`,
    /// for bots that run in namespaces a test made.
    pub(crate) fn start_in(netns: &str, addr: &str) -> Self {
        let addr = addr.to_owned();
        let listener = in_netns(netns, move || TcpListener::bind((addr.as_str(), 0)))
            .unwrap_or_else(|error| panic!("bind in {netns}: {error}"));
        Self::serve_on(listener, Some(netns.to_owned()))
    }

    fn serve_on(listener: TcpListener, netns: Option<String>) -> Self {
        let address = listener.local_addr().expect("a local address");
        let state = Arc::new(State::default());
        let stopped = Arc::new(AtomicBool::new(false));
        let (shared, stopping) = (Arc::clone(&state), Arc::clone(&stopped));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let state = Arc::clone(&shared);
                std::thread::spawn(move || serve(&state, stream));
            }
        });
        Self {
            url: format!("http://{address}/"),
            state,
            stopped,
            netns,
        }
    }

    /// What to put in `TELEGRAM_API_URL`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// What to put in `TELEGRAM_API_URL` for calls recorded with `label`
    /// (one path segment, not starting with `bot`).
    pub(crate) fn url_for(&self, label: &str) -> String {
        format!("{}{label}", self.url)
    }

    /// Every `getUpdates` so far, in the order the double read them.
    pub(crate) fn polls(&self) -> Vec<Poll> {
        self.state.lock().polls.clone()
    }

    /// A user's message in a private chat, delivered by the next `getUpdates`.
    pub(crate) fn inject_message(&self, chat_id: i64, text: &str) -> i64 {
        self.inject_messages(chat_id, [text.to_owned()])[0]
    }

    /// Messages that arrive at once (a burst): all of them are there for the
    /// next `getUpdates`. Returns their update ids.
    pub(crate) fn inject_messages(
        &self,
        chat_id: i64,
        texts: impl IntoIterator<Item = String>,
    ) -> Vec<i64> {
        let mut inner = self.state.lock();
        let mut ids = Vec::new();
        for text in texts {
            inner.next_update_id += 1;
            inner.next_message_id += 1;
            let update_id = inner.next_update_id;
            let mut message = json!({
                "message_id": inner.next_message_id,
                "date": now(),
                "chat": {"id": chat_id, "type": "private", "first_name": "Tester"},
                "from": {"id": chat_id, "is_bot": false, "first_name": "Tester"},
                "text": text,
            });
            if text.starts_with('/') {
                let length = text.split_whitespace().next().map_or(0, str::len);
                message["entities"] =
                    json!([{"type": "bot_command", "offset": 0, "length": length}]);
            }
            inner
                .updates
                .push(json!({"update_id": update_id, "message": message}));
            ids.push(update_id);
        }
        self.state.changed.notify_all();
        ids
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.state.lock().calls.clone()
    }

    pub(crate) fn count(&self, method: &str) -> usize {
        self.state
            .lock()
            .calls
            .iter()
            .filter(|call| call.method == method)
            .count()
    }

    /// Updates not confirmed yet: a bot that starts now gets them.
    pub(crate) fn pending(&self) -> usize {
        self.state.lock().updates.len()
    }

    /// While on, `sendMessage` calls are recorded but not answered, so the
    /// handler that made one stays busy; turning it off answers them.
    pub(crate) fn hold_replies(&self, hold: bool) {
        self.state.lock().holding_replies = hold;
        self.state.changed.notify_all();
    }

    /// How many `getUpdates` were answered with 409.
    pub(crate) fn conflicts(&self) -> usize {
        self.state.lock().conflicts
    }

    /// `sendMessage` calls with exactly this text.
    pub(crate) fn sent(&self, text: &str) -> usize {
        self.state
            .lock()
            .calls
            .iter()
            .filter(|call| call.method == "sendMessage" && call.params["text"] == text)
            .count()
    }

    /// Waits until `done` holds for the calls so far, or `timeout` passes.
    pub(crate) fn wait_until(&self, timeout: Duration, done: impl Fn(&BotApi) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let inner = self.state.lock();
            let _ = self
                .state
                .changed
                .wait_timeout(inner, left.min(Duration::from_millis(50)));
        }
        true
    }
}

impl Drop for BotApi {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag (from inside its
        // namespace, if it listens in one).
        let address = self
            .url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        match &self.netns {
            Some(netns) => {
                let _ = in_netns(netns, move || TcpStream::connect(address));
            }
            None => {
                let _ = TcpStream::connect(address);
            }
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One connection: requests one after another (keep-alive) until it closes.
fn serve(state: &State, stream: TcpStream) {
    let Ok(reading) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(reading);
    let _ = stream.set_nodelay(true);
    let mut writer = stream;
    while let Some((path, body)) = read_request(&mut reader) {
        let Some((status, answer)) = answer(state, &path, &body, &writer) else {
            return; // the client hung up during a long poll
        };
        let body = answer.to_string();
        let reason = if status == 200 { "OK" } else { "Error" };
        // One write, as a server does: a head and a body written apart wait
        // for the client's delayed ACK (Nagle), 40 ms an answer on Linux,
        // which no real Bot API server adds.
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// The request's path and body; `None` when the connection closes.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<(String, String)> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((path, String::from_utf8_lossy(&body).into_owned()))
}

/// Whether the client has closed its side of the connection.
fn hung_up(stream: &TcpStream) -> bool {
    let mut byte = [0];
    let _ = stream.set_nonblocking(true);
    let closed = match stream.peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => error.kind() != ErrorKind::WouldBlock,
    };
    let _ = stream.set_nonblocking(false);
    closed
}

/// The answer to one call; `None` if the client hung up before it was ready.
fn answer(state: &State, path: &str, body: &str, stream: &TcpStream) -> Option<(u16, Value)> {
    // Telegram's method names are case-insensitive (teloxide sends `GetMe`):
    // record them as the Bot API documents them.
    let requested = path.rsplit('/').next().unwrap_or_default().to_owned();
    let label = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .filter(|first| !first.starts_with("bot"))
        .unwrap_or_default()
        .to_owned();
    let peer = stream
        .peer_addr()
        .map(|addr: SocketAddr| addr.ip().to_string())
        .unwrap_or_default();
    let method = KNOWN
        .iter()
        .find(|known| known.eq_ignore_ascii_case(&requested))
        .map_or(requested, |known| (*known).to_owned());
    let params: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    {
        let mut inner = state.lock();
        inner.calls.push(Call {
            method: method.clone(),
            params: params.clone(),
            at: Instant::now(),
            label: label.clone(),
            peer: peer.clone(),
        });
        state.changed.notify_all();
    }
    Some(match method.as_str() {
        "getMe" => ok(json!({
            "id": 1, "is_bot": true, "first_name": "Test", "username": "test_bot",
            "can_join_groups": true, "can_read_all_group_messages": false,
            "supports_inline_queries": false, "can_connect_to_business": false,
            "has_main_web_app": false,
        })),
        "getWebhookInfo" => {
            ok(json!({"url": "", "has_custom_certificate": false, "pending_update_count": 0}))
        }
        "deleteWebhook" => ok(json!(true)),
        "getUpdates" => {
            let poll = Poll {
                label,
                peer,
                offset: params["offset"].as_i64().unwrap_or(0),
                opened: Instant::now(),
                closed: None,
                outcome: Outcome::Open,
            };
            let index = {
                let mut inner = state.lock();
                inner.polls.push(poll);
                inner.polls.len() - 1
            };
            let answer = get_updates(state, &params, stream);
            let outcome = match &answer {
                None => Outcome::Abandoned,
                Some((409, _)) => Outcome::Conflict,
                Some((_, body)) => Outcome::Answered(
                    body["result"]
                        .as_array()
                        .map(|updates| {
                            updates
                                .iter()
                                .filter_map(|update| update["update_id"].as_i64())
                                .collect()
                        })
                        .unwrap_or_default(),
                ),
            };
            let mut inner = state.lock();
            let poll = &mut inner.polls[index];
            poll.closed = Some(Instant::now());
            poll.outcome = outcome;
            state.changed.notify_all();
            return answer;
        }
        "sendMessage" => {
            let mut inner = state.lock();
            while inner.holding_replies {
                if hung_up(stream) {
                    return None;
                }
                inner = state
                    .changed
                    .wait_timeout(inner, Duration::from_millis(20))
                    .map(|(inner, _)| inner)
                    .unwrap_or_else(|poisoned| poisoned.into_inner().0);
            }
            inner.next_message_id += 1;
            ok(json!({
                "message_id": inner.next_message_id,
                "date": now(),
                "chat": {"id": params["chat_id"], "type": "private", "first_name": "Tester"},
                "from": {"id": 1, "is_bot": true, "first_name": "Test", "username": "test_bot"},
                "text": params["text"],
            }))
        }
        _ => (
            404,
            json!({"ok": false, "error_code": 404, "description": "Not Found: method not found"}),
        ),
    })
}

fn ok(result: Value) -> (u16, Value) {
    (200, json!({"ok": true, "result": result}))
}

/// Long polling with offsets, and Telegram's rule for a second poller: the
/// pending request is ended with 409 and the new one takes its place.
fn get_updates(state: &State, params: &Value, stream: &TcpStream) -> Option<(u16, Value)> {
    let offset = params["offset"].as_i64().unwrap_or(0);
    let limit = params["limit"]
        .as_u64()
        .map_or(TELEGRAM_LIMIT, |limit| (limit as usize).min(TELEGRAM_LIMIT));
    let timeout = Duration::from_secs(params["timeout"].as_u64().unwrap_or(0)).min(LONGEST_POLL);
    let deadline = Instant::now() + timeout;
    // A request read after its client hung up (a poll dropped by a bot that
    // stopped, read late) ends nobody's poll: there is no poller behind it.
    if hung_up(stream) {
        return None;
    }
    let mut inner = state.lock();
    // An offset confirms every update below it: Telegram forgets them.
    inner
        .updates
        .retain(|update| update["update_id"].as_i64().unwrap_or(0) >= offset);
    if let Some(previous) = inner.pending_poll.take() {
        inner.terminated.insert(previous);
        state.changed.notify_all();
    }
    let me = inner.next_poll;
    inner.next_poll += 1;
    inner.pending_poll = Some(me);
    loop {
        if inner.terminated.remove(&me) {
            // A client that already gave up on this request (teloxide drops
            // its in-flight poll when it stops) is not a second poller: give
            // its hang-up a moment to arrive. A live poller waits for the
            // answer and gets the 409.
            drop(inner);
            let grace = Instant::now() + Duration::from_millis(100);
            while Instant::now() < grace {
                if hung_up(stream) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            state.lock().conflicts += 1;
            state.changed.notify_all();
            return Some((
                409,
                json!({"ok": false, "error_code": 409, "description": CONFLICT_DESCRIPTION}),
            ));
        }
        let now = Instant::now();
        if !inner.updates.is_empty() || now >= deadline || hung_up(stream) {
            if inner.pending_poll == Some(me) {
                inner.pending_poll = None;
            }
            if hung_up(stream) {
                return None;
            }
            let updates: Vec<Value> = inner.updates.iter().take(limit).cloned().collect();
            return Some(ok(Value::Array(updates)));
        }
        // Look at the socket now and then: the client may hang up.
        let slice = (deadline - now).min(Duration::from_millis(20));
        inner = state
            .changed
            .wait_timeout(inner, slice)
            .map(|(inner, _)| inner)
            .unwrap_or_else(|poisoned| poisoned.into_inner().0);
    }
}
