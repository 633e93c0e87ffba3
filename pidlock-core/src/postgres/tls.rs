//! TLS for the lock's connections, with libpq's meaning of `sslmode` and
//! `sslrootcert` (rustls with the ring provider: nothing to build or link
//! from OpenSSL).
//!
//! The `postgres` crate knows `sslmode=disable|prefer|require` only, and no
//! `sslrootcert`. So both are taken out of the URL here ([`split`]), read
//! like libpq reads them, and turned into a rustls configuration; the
//! connection itself is then asked for `disable`, `prefer` or `require`.
//!
//! | `sslmode`     | encrypted                       | certificate chain      | host name |
//! |---------------|---------------------------------|------------------------|-----------|
//! | `disable`     | no                              | -                      | -         |
//! | `allow`       | only if plaintext is refused    | if a root cert is set  | no        |
//! | `prefer`      | if the server and TLS agree     | if a root cert is set  | no        |
//! | `require`     | yes                             | if a root cert is set  | no        |
//! | `verify-ca`   | yes                             | yes                    | no        |
//! | `verify-full` | yes                             | yes                    | yes       |
//!
//! "A root cert is set" is libpq's rule: `sslrootcert` (URL), else
//! `PGSSLROOTCERT`, else `~/.postgresql/root.crt` if that file exists. When
//! there is one, even `require` verifies the chain. `sslrootcert=system`
//! means the operating system's trusted roots and, as in libpq, needs
//! `verify-full` (it is the default then). Without `sslmode` in the URL,
//! `PGSSLMODE` applies, else `prefer`. One deliberate difference: a
//! `sslrootcert` that names a file which cannot be read is an error in every
//! mode, where libpq would silently skip verification under `require`.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};

use postgres::config::SslMode as WireMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::remote::percent_decode;
use crate::remote::tls::{self as shared, Roots, Verify};

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => {
                return Err(format!(
                    "invalid sslmode \"{text}\": use disable, allow, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// What the `postgres` crate is asked for on the first try.
    pub(super) fn first_try(self) -> WireMode {
        match self {
            Self::Disable | Self::Allow => WireMode::Disable,
            Self::Prefer => WireMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => WireMode::Require,
        }
    }
}

/// The TLS side of one lock's connections.
#[derive(Clone)]
pub(super) struct Tls {
    pub(super) mode: SslMode,
    roots: Roots,
    connector: MakeRustlsConnect,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("mode", &self.mode)
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// The settings from the URL's `sslmode` and `sslrootcert` (already taken
    /// out of it by [`split`]), the environment and `~/.postgresql`.
    pub(super) fn new(mode: Option<&str>, root: Option<&str>) -> Result<Self, String> {
        let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let mode_text = mode.map(str::to_owned).or_else(|| env("PGSSLMODE"));
        let root_text = root.map(str::to_owned).or_else(|| env("PGSSLROOTCERT"));
        let roots = match root_text.as_deref() {
            Some(value) => Roots::named(value),
            None => default_root_file().map_or(Roots::None, Roots::File),
        };
        let mode = match (mode_text.as_deref(), &roots) {
            (None, Roots::System) => SslMode::VerifyFull,
            (None, _) => SslMode::Prefer,
            (Some(text), _) => SslMode::parse(text)?,
        };
        if roots == Roots::System && mode != SslMode::VerifyFull {
            return Err(format!(
                "weak sslmode \"{}\" may not be used with sslrootcert=system (use \"verify-full\")",
                mode.name()
            ));
        }
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && roots == Roots::None {
            return Err(format!(
                "sslmode={} needs the certificate of the CA that signed the server's: set sslrootcert=/path/to/ca.crt (or PGSSLROOTCERT), \
                 or sslrootcert=system for the system's trusted roots; ~/.postgresql/root.crt does not exist either",
                mode.name()
            ));
        }
        let verify = match mode {
            SslMode::VerifyFull => Verify::ChainAndName,
            // libpq: a root certificate, where there is one, is checked.
            _ => Verify::Chain,
        };
        let connector = MakeRustlsConnect::new(shared::client_config(verify, &roots)?);
        Ok(Self {
            mode,
            roots,
            connector,
        })
    }

    pub(super) fn connector(&self) -> MakeRustlsConnect {
        self.connector.clone()
    }

    /// What a failed connection attempt means, in words a person can act on;
    /// `None` when it was not about TLS.
    pub(super) fn explain(&self, error: &postgres::Error, host: &str) -> Option<String> {
        if let Some(db) = error.as_db_error() {
            // pg_hba.conf has only `hostssl` lines for us.
            return (db.message().contains("no encryption")
                && matches!(self.mode, SslMode::Disable | SslMode::Allow | SslMode::Prefer))
            .then(|| {
                format!(
                    "{}: the server accepts this connection only over TLS (sslmode={}); use sslmode=require or verify-full",
                    db.message(),
                    self.mode.name()
                )
            });
        }
        let setting = format!("sslmode={}", self.mode.name());
        match rustls_error(error)? {
            Tried::Rustls(error) => Some(shared::explain(
                error,
                &self.roots,
                host,
                &setting,
                "connect by a name the certificate lists, or use sslmode=verify-ca",
            )),
            Tried::NotSupported => Some(format!(
                "the server does not support TLS, and sslmode={} requires it; turn on ssl in the server or choose another sslmode",
                self.mode.name()
            )),
            Tried::Other(text) => Some(format!("the TLS handshake failed: {text}")),
        }
    }

    /// Whether `prefer` should try again without TLS, as libpq does: the
    /// handshake itself failed (not the server, not the network).
    pub(super) fn handshake_failed(error: &postgres::Error) -> bool {
        matches!(
            rustls_error(error),
            Some(Tried::Rustls(_) | Tried::Other(_))
        )
    }
}

/// What went wrong with TLS, if anything did.
enum Tried<'a> {
    Rustls(&'a rustls::Error),
    NotSupported,
    Other(String),
}

/// Finds the TLS failure in a connection error: `postgres` wraps it as "error
/// performing TLS handshake" with the handshake's `io::Error` (which holds the
/// rustls error) as its source.
fn rustls_error(error: &postgres::Error) -> Option<Tried<'_>> {
    let mut cause: Option<&(dyn StdError + 'static)> = error.source();
    let tls_kind = error
        .to_string()
        .starts_with("error performing TLS handshake");
    while let Some(current) = cause {
        if let Some(found) = current.downcast_ref::<rustls::Error>() {
            return Some(Tried::Rustls(found));
        }
        // `io::Error::source` skips the error it wraps, so look inside.
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && let Some(found) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(Tried::Rustls(found));
        }
        if current.to_string() == "server does not support TLS" {
            return Some(Tried::NotSupported);
        }
        if tls_kind && current.source().is_none() {
            return Some(Tried::Other(current.to_string()));
        }
        cause = current.source();
    }
    None
}

/// libpq's default root file, if it exists.
fn default_root_file() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let path = Path::new(&home).join(".postgresql/root.crt");
    path.is_file().then_some(path)
}

/// The URL without `sslmode` and `sslrootcert`, and their values: the
/// `postgres` crate refuses `verify-ca`, `verify-full` and `sslrootcert`, so
/// they are handled here. Both forms libpq accepts: a `postgres://` URL
/// (query parameters) and `key=value` pairs.
pub(super) struct Split {
    pub(super) rest: String,
    pub(super) sslmode: Option<String>,
    pub(super) sslrootcert: Option<String>,
}

pub(super) fn split(url: &str) -> Result<Split, String> {
    let mut split = Split {
        rest: String::new(),
        sslmode: None,
        sslrootcert: None,
    };
    let mut take = |key: &str, value: String| match key {
        "sslmode" => {
            split.sslmode = Some(value);
            Ok(true)
        }
        "sslrootcert" => {
            split.sslrootcert = Some(value);
            Ok(true)
        }
        "sslcert" | "sslkey" | "sslpassword" | "sslcrl" | "sslcrldir" => Err(format!(
            "{key} is not supported (no client certificates or revocation lists); authenticate with a password"
        )),
        _ => Ok(false),
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_url(url, &mut take)?
    } else {
        split_pairs(url, &mut take)?
    };
    split.rest = rest;
    Ok(split)
}

/// `postgres://...?a=1&sslmode=verify-full`: the query after the host part
/// (a password may hold a `?`, so look after the last `@`).
fn split_url(
    url: &str,
    take: &mut impl FnMut(&str, String) -> Result<bool, String>,
) -> Result<String, String> {
    let after_credentials = url.rfind('@').map_or(0, |at| at + 1);
    let Some(question) = url[after_credentials..]
        .find('?')
        .map(|q| q + after_credentials)
    else {
        return Ok(url.to_owned());
    };
    let kept: Vec<&str> = url[question + 1..]
        .split('&')
        .filter(|param| !param.is_empty())
        .map(|param| {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            Ok::<_, String>(
                (!take(&percent_decode(key)?, percent_decode(value)?)?).then_some(param),
            )
        })
        .filter_map(Result::transpose)
        .collect::<Result<_, _>>()?;
    let base = &url[..question];
    Ok(if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    })
}

/// `host=db sslmode=verify-full`: libpq's `key = value` pairs, values plain
/// or in single quotes, `\` escaping the next character. The pairs that stay
/// are written back quoted.
fn split_pairs(
    text: &str,
    take: &mut impl FnMut(&str, String) -> Result<bool, String>,
) -> Result<String, String> {
    let mut kept = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|&c| !c.is_whitespace() && c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            if chars.peek().is_some() {
                return Err("expected a key before `=`".to_owned());
            }
            break;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("expected `=` after \"{key}\""));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let quoted = chars.next_if_eq(&'\'').is_some();
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\'') if quoted => break,
                Some('\\') => value.extend(chars.next()),
                Some(c) if !quoted && c.is_whitespace() => break,
                Some(c) => value.push(c),
                None if quoted => return Err(format!("unterminated quoted value for \"{key}\"")),
                None => break,
            }
        }
        if !take(&key, value.clone())? {
            let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{escaped}'"));
        }
    }
    Ok(kept.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(url: &str) -> (String, Option<String>, Option<String>) {
        let split = split(url).unwrap();
        (split.rest, split.sslmode, split.sslrootcert)
    }

    #[test]
    fn ssl_parameters_leave_a_url() {
        assert_eq!(
            parts(
                "postgres://u:p?w@h:5/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.crt"
            ),
            (
                "postgres://u:p?w@h:5/db?application_name=x".to_owned(),
                Some("verify-full".to_owned()),
                Some("/tmp/ca.crt".to_owned())
            )
        );
        assert_eq!(
            parts("postgresql://h/db?sslmode=require"),
            (
                "postgresql://h/db".to_owned(),
                Some("require".to_owned()),
                None
            )
        );
        assert_eq!(
            parts("postgres://h/db"),
            ("postgres://h/db".to_owned(), None, None)
        );
        assert!(split("postgres://h/db?sslrootcert=%zz").is_err());
        assert!(
            split("postgres://h/db?sslcert=/c.crt")
                .is_err_and(|e| e.contains("sslcert is not supported"))
        );
    }

    #[test]
    fn ssl_parameters_leave_key_value_pairs() {
        assert_eq!(
            parts(
                "host=h  sslmode = verify-ca password='it\\'s' sslrootcert='/a b/ca.crt' user=a\\ b"
            ),
            (
                "host='h' password='it\\'s' user='a b'".to_owned(),
                Some("verify-ca".to_owned()),
                Some("/a b/ca.crt".to_owned())
            )
        );
        assert_eq!(
            parts("password='x\\'y'"),
            ("password='x\\'y'".to_owned(), None, None)
        );
        assert!(split("host='h").is_err());
        assert!(split("host").is_err());
    }

    #[test]
    fn libpq_rules_for_modes_and_roots() {
        let error =
            |mode: Option<&str>, root: Option<&str>| Tls::new(mode, root).err().unwrap_or_default();
        assert!(error(Some("verify-full"), None).contains("needs the certificate of the CA"));
        assert!(error(Some("strict"), None).contains("invalid sslmode \"strict\""));
        assert!(error(Some("require"), Some("system")).contains("weak sslmode \"require\""));
        assert!(
            error(Some("require"), Some("/nonexistent/ca.crt"))
                .contains("cannot read sslrootcert /nonexistent/ca.crt")
        );
        assert_eq!(
            Tls::new(Some("require"), None).map(|tls| tls.mode).ok(),
            Some(SslMode::Require)
        );
        assert_eq!(
            Tls::new(Some("disable"), None).map(|tls| tls.mode).ok(),
            Some(SslMode::Disable)
        );
    }
}
