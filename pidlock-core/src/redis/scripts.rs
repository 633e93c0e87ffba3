//! The lock's three steps, each one script the server runs atomically: no
//! other command runs between a script's check and its write, so "renew
//! only while the key holds our token" is one step, not a race.
//!
//! Three keys per lock, all with the same hash tag (`{...}`), so a cluster
//! would keep them on one node:
//!
//! - `pidlock:{KEY}`: the lock. Its value is `TOKEN TERM PID HOST` (a
//!   random 128-bit token, the fencing term, who holds it), set with a TTL.
//! - `pidlock:{KEY}:fence`: a hash with no TTL: the last `term`, the
//!   holder's `host` and `pid`, when its key `expires` (server time, ms) and
//!   whether it `released` it. The term survives the lock key, so it grows.
//! - `pidlock:{KEY}:released`: a list a release pushes to, which a standby
//!   blocks on (`BLPOP`): woken by the release, not by polling.
//!
//! **The fencing term** is the previous term + 1 or the server's clock in
//! milliseconds, whichever is larger. While the server keeps its data it
//! grows by one per acquisition; when the server lost the fence (a restart
//! without persistence, a failover to a replica the last bump had not
//! reached) the next term is still larger than every term handed out
//! before, as long as the server's clock has not gone back by more than the
//! time since: a lost counter cannot hand out an old number again.

use ::redis::{Cmd, Script, Value};

/// Takes the lock if it is free. Returns `{1, value, previous, host, pid}`
/// (`previous`: `none` without a fence, `gone` when the last holder released
/// or its key's time ran out, `unreleased` when its key vanished early), or
/// `{0, holder's value, its PTTL}`.
const ACQUIRE: &str = r"
local held = redis.call('GET', KEYS[1])
if held then
  return {0, held, redis.call('PTTL', KEYS[1])}
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = tonumber(ARGV[4])
local fence = redis.call('HMGET', KEYS[2], 'term', 'released', 'expires', 'host', 'pid')
local term = now
local previous = 'none'
if fence[1] then
  term = math.max(tonumber(fence[1]) + 1, now)
  if fence[2] == '1' or tonumber(fence[3] or '0') <= now then
    previous = 'gone'
  else
    previous = 'unreleased'
  end
end
local term_text = string.format('%.0f', term)
local value = ARGV[1] .. ' ' .. term_text .. ' ' .. ARGV[2] .. ' ' .. ARGV[3]
redis.call('SET', KEYS[1], value, 'PX', ttl)
redis.call('HSET', KEYS[2], 'term', term_text, 'released', '0',
  'expires', string.format('%.0f', now + ttl), 'host', ARGV[3], 'pid', ARGV[2])
redis.call('DEL', KEYS[3])
return {1, value, previous, fence[4] or '', fence[5] or ''}
";

/// Extends the lock's TTL if the key still holds our value: `{1, ''}`, or
/// `{0, what the key holds now ('' when it is gone)}`.
const RENEW: &str = r"
local held = redis.call('GET', KEYS[1])
if held ~= ARGV[1] then
  return {0, held or ''}
end
local ttl = tonumber(ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('HSET', KEYS[2], 'expires', string.format('%.0f', now + ttl))
return {1, ''}
";

/// Deletes the lock if the key still holds our value, records the clean
/// release, and wakes one standby. 1 if it was ours, 0 if not.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], 'released', '1')
redis.call('DEL', KEYS[3])
redis.call('RPUSH', KEYS[3], '1')
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return 1
";

/// The names of one lock's keys.
#[derive(Clone, Debug)]
pub(super) struct Keys {
    pub(super) lock: String,
    pub(super) fence: String,
    pub(super) released: String,
}

impl Keys {
    pub(super) fn new(key: &str) -> Self {
        Self {
            lock: format!("pidlock:{{{key}}}"),
            fence: format!("pidlock:{{{key}}}:fence"),
            released: format!("pidlock:{{{key}}}:released"),
        }
    }
}

/// A script as `EVALSHA`, and as `EVAL` for a server that does not have it
/// cached (a restart empties the cache).
pub(super) struct Lua {
    source: &'static str,
    hash: String,
}

impl Lua {
    fn new(source: &'static str) -> Self {
        Self {
            source,
            hash: Script::new(source).get_hash().to_owned(),
        }
    }

    pub(super) fn acquire() -> Self {
        Self::new(ACQUIRE)
    }

    pub(super) fn renew() -> Self {
        Self::new(RENEW)
    }

    pub(super) fn release() -> Self {
        Self::new(RELEASE)
    }

    /// The `EVALSHA` command, then the `EVAL` one.
    pub(super) fn commands(&self, keys: &[&str], args: &[&str]) -> (Cmd, Cmd) {
        let build = |verb: &str, script: &str| {
            let mut cmd = ::redis::cmd(verb);
            cmd.arg(script).arg(keys.len()).arg(keys).arg(args);
            cmd
        };
        (build("EVALSHA", &self.hash), build("EVAL", self.source))
    }
}

/// Whether a reply says the server does not have the script cached.
pub(super) fn is_noscript(value: &Value) -> bool {
    matches!(value, Value::ServerError(error) if error.code() == "NOSCRIPT")
}

/// A lock key's value, `TOKEN TERM PID HOST`, read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Holding {
    pub(super) term: u64,
    pub(super) pid: Option<i32>,
    pub(super) host: Option<String>,
}

impl Holding {
    pub(super) fn parse(value: &str) -> Self {
        let mut words = value.splitn(4, ' ');
        let _token = words.next();
        let term = words.next().and_then(|term| term.parse().ok()).unwrap_or(0);
        let pid = words.next().and_then(|pid| pid.parse().ok());
        let host = words.next().map(str::to_owned);
        Self { term, pid, host }
    }
}

/// A reply's text: bulk and simple strings, integers as digits.
pub(super) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Some(text.clone()),
        Value::Int(number) => Some(number.to_string()),
        Value::Okay => Some("OK".to_owned()),
        _ => None,
    }
}

/// A reply's integer (an integer, or a string of digits).
pub(super) fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(number) => Some(*number),
        other => text(other)?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_read_back() {
        assert_eq!(
            Holding::parse("0f1e 1796489297452 4242 web-2"),
            Holding {
                term: 1_796_489_297_452,
                pid: Some(4242),
                host: Some("web-2".to_owned())
            }
        );
        // A value someone set by hand names no one.
        assert_eq!(
            Holding::parse("set by hand"),
            Holding {
                term: 0,
                pid: None,
                host: None
            }
        );
    }

    #[test]
    fn every_key_of_a_lock_has_the_same_hash_tag() {
        let keys = Keys::new("my-bot");
        for name in [&keys.lock, &keys.fence, &keys.released] {
            assert!(name.starts_with("pidlock:{my-bot}"), "{name}");
        }
    }
}
