//! One connection to the Redis server: the URL, TCP or TLS, commands and
//! replies, every step against a deadline.
//!
//! The socket is ours, not the `redis` crate's (which supplies the protocol:
//! commands, the reply parser, script hashes): so that TLS is the shared
//! rustls set-up ([`crate::remote::tls`]) rather than the process-wide
//! provider, and so that one deadline bounds a whole round trip, the TLS
//! handshake included.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::{Cmd, Parser, Value};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::remote::tls::{self, Roots, Verify};

/// Where and how to connect, from the URL.
#[derive(Clone)]
pub(super) struct Target {
    host: String,
    port: u16,
    tls: Option<TlsTarget>,
    db: u32,
    user: Option<String>,
    password: Option<String>,
}

/// `rediss://`: the rustls configuration and the name to verify.
#[derive(Clone)]
struct TlsTarget {
    config: Arc<ClientConfig>,
    roots: Roots,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No password, ever.
        f.debug_struct("Target")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// `redis://[[user]:password@]host[:port][/db][?sslrootcert=PATH]`, and
    /// `rediss://` for TLS, which verifies the chain and the host name
    /// against the system's trusted roots, or the CA in `sslrootcert`.
    pub(super) fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("rediss://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("redis://") {
            (false, rest)
        } else {
            return Err("a Redis URL starts with redis:// or rediss://".to_owned());
        };
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        // A password may hold '/' or '@': the host part starts after the
        // last '@'.
        let (userinfo, hostpart) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (authority, path) = hostpart.split_once('/').unwrap_or((hostpart, ""));
        let (host, port) = split_host_port(authority)?;
        let db = match path.trim_end_matches('/') {
            "" => 0,
            number => number
                .parse()
                .map_err(|_| format!("\"/{number}\" is not a database number"))?,
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, password) = info.split_once(':').unwrap_or((info, ""));
                let user = crate::remote::percent_decode(user)?;
                let password = crate::remote::percent_decode(password)?;
                (
                    Some(user).filter(|user| !user.is_empty()),
                    Some(password).filter(|password| !password.is_empty()),
                )
            }
        };
        let mut db = db;
        let mut roots = None;
        for param in query.split('&').filter(|param| !param.is_empty()) {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            let value = crate::remote::percent_decode(value)?;
            match name {
                "sslrootcert" if tls => roots = Some(Roots::named(&value)),
                "sslrootcert" => {
                    return Err("sslrootcert applies to rediss:// (TLS) URLs only".to_owned());
                }
                "db" => {
                    db = value
                        .parse()
                        .map_err(|_| format!("db={value} is not a database number"))?;
                }
                // The protocol version other clients negotiate; this lock
                // speaks RESP2, which every server does.
                "protocol" => {}
                other => {
                    return Err(format!(
                        "unknown parameter \"{other}\" (a Redis URL here takes sslrootcert, db and protocol)"
                    ));
                }
            }
        }
        let tls = if tls {
            let roots = roots.unwrap_or(Roots::System);
            let config = tls::client_config(Verify::ChainAndName, &roots)?;
            let name = ServerName::try_from(host.clone())
                .map_err(|_| format!("\"{host}\" is not a host name or address TLS can verify"))?;
            Some(TlsTarget {
                config: Arc::new(config),
                roots,
                name,
            })
        } else {
            None
        };
        Ok(Self {
            host,
            port,
            tls,
            db,
            user,
            password,
        })
    }

    /// `host:port`, for messages.
    pub(super) fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn split_host_port(authority: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| format!("unclosed '[' in \"{authority}\""))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("the URL names no host".to_owned());
    }
    let port = match port {
        None | Some("") => 6379,
        Some(port) => port
            .parse()
            .map_err(|_| format!("\"{port}\" is not a port number"))?,
    };
    Ok((host.to_owned(), port))
}

/// The socket, with or without TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(tcp) => tcp,
            Self::Tls(tls) => &tls.sock,
        }
    }
}

/// Reads and writes that give up at `deadline` (each call sets the socket's
/// timeout to what is left), and say so.
struct Timed<'a> {
    stream: &'a mut Stream,
    deadline: Instant,
    timed_out: bool,
}

impl Timed<'_> {
    /// What is left before the deadline; an error once it has passed.
    fn left(&mut self) -> std::io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.timed_out = true;
            return Err(ErrorKind::TimedOut.into());
        }
        Ok(left)
    }

    fn note<T>(&mut self, result: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(error) = &result
            && matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
        {
            self.timed_out = true;
        }
        result
    }
}

impl Read for Timed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.left()?;
        self.stream.tcp().set_read_timeout(Some(left))?;
        let read = match self.stream {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        };
        self.note(read)
    }
}

impl Write for Timed<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let left = self.left()?;
        self.stream.tcp().set_write_timeout(Some(left))?;
        // TLS reads the handshake's replies while it writes.
        self.stream.tcp().set_read_timeout(Some(left))?;
        let written = match self.stream {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        };
        self.note(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let left = self.left()?;
        self.stream.tcp().set_write_timeout(Some(left))?;
        self.stream.tcp().set_read_timeout(Some(left))?;
        let flushed = match self.stream {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Tls(tls) => tls.flush(),
        };
        self.note(flushed)
    }
}

/// An open, authenticated connection with its database selected.
pub(super) struct Conn {
    stream: Stream,
    parser: Parser,
}

impl Conn {
    /// Connects (every address the host resolves to, in turn), completes
    /// TLS, authenticates and selects the database, all by `deadline`.
    /// Errors are sentences for [`Error::Remote`](crate::Error::Remote).
    pub(super) fn open(target: &Target, deadline: Instant) -> Result<Self, String> {
        let address = target.address();
        let addrs: Vec<_> = (target.host.as_str(), target.port)
            .to_socket_addrs()
            .map_err(|error| format!("cannot resolve {}: {error}", target.host))?
            .collect();
        let mut last = None;
        let mut tcp = None;
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match TcpStream::connect_timeout(&addr, left) {
                Ok(stream) => {
                    tcp = Some(stream);
                    break;
                }
                Err(error) => last = Some(error),
            }
        }
        let tcp = tcp.ok_or_else(|| match last {
            Some(error) if error.kind() == ErrorKind::TimedOut => {
                format!("cannot connect to {address}: no answer within the time allowed")
            }
            Some(error) => format!("cannot connect to {address}: {error}"),
            None => format!("cannot connect to {address}: no address to try in time"),
        })?;
        // Requests are small and each waits for its reply.
        let _ = tcp.set_nodelay(true);
        let stream = match &target.tls {
            None => Stream::Plain(tcp),
            Some(tls) => Stream::Tls(Box::new(handshake(target, tls, tcp, deadline)?)),
        };
        let mut conn = Self {
            stream,
            parser: Parser::new(),
        };
        if let Some(password) = &target.password {
            let mut auth = ::redis::cmd("AUTH");
            if let Some(user) = &target.user {
                auth.arg(user);
            }
            auth.arg(password);
            if let Value::ServerError(error) = conn.call(&auth, deadline)? {
                return Err(format!(
                    "the server refused the password{}: {}",
                    target
                        .user
                        .as_ref()
                        .map_or_else(String::new, |user| format!(" of user \"{user}\"")),
                    server_error_text(&error)
                ));
            }
        }
        if target.db != 0 {
            let mut select = ::redis::cmd("SELECT");
            select.arg(target.db);
            if let Value::ServerError(error) = conn.call(&select, deadline)? {
                return Err(format!(
                    "cannot select database {}: {}",
                    target.db,
                    server_error_text(&error)
                ));
            }
        }
        Ok(conn)
    }

    /// Sends `cmd` and reads its reply by `deadline`. A server error is a
    /// reply (`Value::ServerError`); `Err` means the connection cannot be
    /// trusted any more (the caller drops it).
    pub(super) fn call(&mut self, cmd: &Cmd, deadline: Instant) -> Result<Value, String> {
        let bytes = cmd.get_packed_command();
        let mut timed = Timed {
            stream: &mut self.stream,
            deadline,
            timed_out: false,
        };
        let sent = timed.write_all(&bytes).and_then(|()| timed.flush());
        if let Err(error) = sent {
            return Err(io_failure("send to", &error, timed.timed_out));
        }
        match self.parser.parse_value(&mut timed) {
            Ok(value) => Ok(value),
            Err(_) if timed.timed_out => Err("no reply from the server in time".to_owned()),
            Err(error) if error.is_unrecoverable_error() || error.is_io_error() => {
                Err(format!("the connection broke ({error})"))
            }
            Err(error) => Err(format!("unreadable reply from the server ({error})")),
        }
    }
}

/// A server error as the server wrote it: `NOAUTH Authentication required.`
pub(super) fn server_error_text(error: &::redis::ServerError) -> String {
    match error.details() {
        Some(details) => format!("{} {details}", error.code()),
        None => error.code().to_owned(),
    }
}

fn io_failure(doing: &str, error: &std::io::Error, timed_out: bool) -> String {
    if timed_out {
        return format!("cannot {doing} the server: no progress in time");
    }
    match error.kind() {
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
            "the server closed the connection".to_owned()
        }
        _ => format!("cannot {doing} the server: {error}"),
    }
}

/// The TLS handshake by `deadline`; failures say what failed.
fn handshake(
    target: &Target,
    tls: &TlsTarget,
    mut tcp: TcpStream,
    deadline: Instant,
) -> Result<StreamOwned<ClientConnection, TcpStream>, String> {
    let mut connection = ClientConnection::new(Arc::clone(&tls.config), tls.name.clone())
        .map_err(|error| format!("cannot start TLS: {error}"))?;
    while connection.is_handshaking() {
        let left = deadline.saturating_duration_since(Instant::now());
        let step = if left.is_zero() {
            Err(ErrorKind::TimedOut.into())
        } else {
            tcp.set_read_timeout(Some(left))
                .and_then(|()| tcp.set_write_timeout(Some(left)))
                .and_then(|()| connection.complete_io(&mut tcp))
        };
        let Err(error) = step else { continue };
        let rustls_error = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if let Some(rustls::Error::InvalidCertificate(_)) = rustls_error {
            return Err(tls::explain(
                rustls_error.unwrap_or(&rustls::Error::HandshakeNotComplete),
                &tls.roots,
                &target.host,
                "rediss://",
                "connect by a name the certificate lists",
            ));
        }
        // Not about the certificate: garbage, a closed connection or
        // silence instead of a handshake. A plaintext Redis answers a line
        // it can parse, or waits for one: ask it in its own words.
        if speaks_plaintext(target) {
            return Err(format!(
                "the server at {} does not speak TLS: it answered a plaintext PING (use redis:// for it, or the port of its TLS listener)",
                target.address()
            ));
        }
        return Err(match rustls_error {
            Some(error) => format!("the TLS handshake failed: {error}"),
            None if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                "no TLS handshake from the server in time".to_owned()
            }
            None => format!("the TLS handshake failed: {error}"),
        });
    }
    Ok(StreamOwned::new(connection, tcp))
}

/// Whether a plaintext `PING` to the server gets a RESP answer (`+PONG`,
/// or `-NOAUTH ...`) within a second.
fn speaks_plaintext(target: &Target) -> bool {
    let patience = Duration::from_secs(1);
    let Ok(Some(addr)) = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map(|mut addrs| addrs.next())
    else {
        return false;
    };
    let Ok(mut tcp) = TcpStream::connect_timeout(&addr, patience) else {
        return false;
    };
    let mut first = [0_u8; 1];
    tcp.set_read_timeout(Some(patience))
        .and_then(|()| tcp.set_write_timeout(Some(patience)))
        .and_then(|()| tcp.write_all(b"PING\r\n"))
        .and_then(|()| tcp.read_exact(&mut first))
        .is_ok_and(|()| matches!(first[0], b'+' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(url: &str) -> (String, u16, bool, u32, Option<String>, Option<String>) {
        let target = Target::parse(url).unwrap();
        (
            target.host,
            target.port,
            target.tls.is_some(),
            target.db,
            target.user,
            target.password,
        )
    }

    #[test]
    fn urls_give_host_port_database_and_credentials() {
        assert_eq!(
            parts("redis://localhost"),
            ("localhost".to_owned(), 6379, false, 0, None, None)
        );
        assert_eq!(
            parts("redis://:s%40cret@10.0.0.5:6380/3"),
            (
                "10.0.0.5".to_owned(),
                6380,
                false,
                3,
                None,
                Some("s@cret".to_owned())
            )
        );
        assert_eq!(
            parts("redis://bot:p@ss/w@[::1]:7000?db=2&protocol=resp3"),
            (
                "::1".to_owned(),
                7000,
                false,
                2,
                Some("bot".to_owned()),
                Some("p@ss/w".to_owned())
            )
        );
        assert!(parts("rediss://localhost:6380").2);
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let error = |url: &str| Target::parse(url).err().unwrap_or_default();
        assert!(error("http://x").contains("starts with redis://"));
        assert!(error("redis://h:port").contains("\"port\" is not a port number"));
        assert!(error("redis://h/x").contains("not a database number"));
        assert!(error("redis://h?sslrootcert=/ca.crt").contains("rediss://"));
        assert!(error("redis://h?tls=1").contains("unknown parameter \"tls\""));
        assert!(
            error("rediss://h?sslrootcert=/nonexistent/ca.crt")
                .contains("cannot read sslrootcert /nonexistent/ca.crt")
        );
        assert!(error("redis://:pass@").contains("names no host"));
    }

    #[test]
    fn the_debug_form_never_shows_the_password() {
        let target = Target::parse("redis://:hunter2@db").unwrap();
        assert!(!format!("{target:?}").contains("hunter2"));
    }
}
