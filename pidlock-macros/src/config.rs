//! The attribute's arguments, read in two stages:
//!
//! 1. [`Configuration::set`] reads one key, once (a key given twice is an
//!    error), and turns its value into a type right there: `"wait"` becomes
//!    [`OnConflict::Wait`], `"30s"` a [`Timeout`] of 30 000 ms. A refused
//!    value is recorded as an error on its own token and reading goes on, so
//!    the user sees every mistake at once.
//! 2. [`Configuration::build`] runs the checks across keys, once, after every
//!    key is read. A check is skipped when a key it depends on was refused or
//!    never read, so one mistake gives one error. What it returns,
//!    [`FinalConfig`], is all that `expand` sees.

use std::str::FromStr;

use proc_macro2::{Span, TokenStream};
use syn::meta::ParseNestedMeta;
use syn::parse::Parser;
use syn::{Expr, ExprLit, Lit, LitBool, LitInt, LitStr};

/// Every key, in the order the "unknown key" error lists them.
pub(crate) const KEYS: &[&str] = &[
    "path",
    "url",
    "key",
    "env",
    "on_conflict",
    "timeout",
    "exit_code",
    "signals",
    "log",
    "notify_ready",
    "hint",
    "crate",
];

/// Reads and checks the attribute's arguments; on any mistake, returns all
/// of them combined.
pub(crate) fn parse(args: TokenStream) -> syn::Result<FinalConfig> {
    Configuration::parse(args).build()
}

/// What the attribute asks for, checked; anything not given takes its
/// default at run time (the builder of `__private::Entry` holds them).
pub(crate) struct FinalConfig {
    /// The runtime crate (`crate = "..."`), `::pidlock_core` by default.
    pub(crate) krate: syn::Path,
    pub(crate) path: Option<Expr>,
    pub(crate) env: Option<LitStr>,
    /// `url`, and the `key` that only means something with it.
    pub(crate) remote: Option<Remote>,
    pub(crate) policy: Policy,
    pub(crate) exit_code: Option<u8>,
    pub(crate) signals: SignalsMode,
    pub(crate) log: Option<LogLevel>,
    pub(crate) notify_ready: bool,
    pub(crate) hint: Option<LitStr>,
}

/// The lock across hosts.
pub(crate) struct Remote {
    pub(crate) url: Expr,
    pub(crate) key: Option<Expr>,
}

/// `on_conflict` together with its `timeout`, which `exit` has none of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Policy {
    Exit,
    Wait { timeout_ms: Option<u64> },
    Takeover { timeout_ms: Option<u64> },
}

/// `on_conflict = "exit" | "wait" | "takeover"`; with its timeout, a
/// [`Policy`] once built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OnConflict {
    Exit,
    Wait,
    Takeover,
}

impl OnConflict {
    /// The accepted values, as written.
    const NAMES: &[&str] = &["exit", "wait", "takeover"];
}

impl FromStr for OnConflict {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "exit" => Ok(Self::Exit),
            "wait" => Ok(Self::Wait),
            "takeover" => Ok(Self::Takeover),
            other => {
                let message = expected("on_conflict", Self::NAMES);
                Err(match near_miss(other, Self::NAMES) {
                    Some(near) => format!("{message}; did you mean \"{near}\"?"),
                    None => message,
                })
            }
        }
    }
}

/// `signals = "auto" | "none"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum SignalsMode {
    #[default]
    Auto,
    None,
}

impl SignalsMode {
    /// The accepted values, as written.
    const NAMES: &[&str] = &["auto", "none"];
}

impl FromStr for SignalsMode {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "auto" => Ok(Self::Auto),
            "none" => Ok(Self::None),
            _ => Err(expected("signals", Self::NAMES)),
        }
    }
}

/// `log = "info" | "warn" | "error"`: the least severe lines printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogLevel {
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The accepted values, as written.
    const NAMES: &[&str] = &["info", "warn", "error"];
}

impl FromStr for LogLevel {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "info" => Ok(Self::Info),
            "warn" => Ok(Self::Warn),
            "error" => Ok(Self::Error),
            _ => Err(format!(
                "{} (errors are always shown)",
                expected("log", Self::NAMES)
            )),
        }
    }
}

/// `expected key = "a", "b" or "c"`: the error for a value not in `names`.
fn expected(key: &str, names: &[&str]) -> String {
    let mut message = format!("expected {key} = ");
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            message.push_str(if i + 1 == names.len() { " or " } else { ", " });
        }
        message.push_str(&format!("\"{name}\""));
    }
    message
}

/// `timeout = "30s"`, in milliseconds, with the span of the literal it was
/// read from, for the error when it is given where it has no meaning.
#[derive(Clone, Copy, Debug)]
struct Timeout {
    ms: u64,
    span: Span,
}

impl Timeout {
    fn parse(lit: &LitStr) -> syn::Result<Self> {
        let ms = parse_duration(&lit.value()).map_err(|why| syn::Error::new(lit.span(), why))?;
        Ok(Self {
            ms,
            span: lit.span(),
        })
    }
}

/// One key's state once the arguments are read.
#[derive(Default)]
enum Setting<T> {
    /// Not given (or not read, when a syntax error ended the parse first).
    #[default]
    Unset,
    Set(T),
    /// Given, but its value was refused and the error recorded: the checks
    /// that depend on it are skipped, so that mistake gives one error.
    Refused,
}

impl<T> Setting<T> {
    /// Keeps the value, or marks the key refused and hands the error back.
    fn record(&mut self, value: syn::Result<T>) -> syn::Result<()> {
        match value {
            Ok(value) => {
                *self = Self::Set(value);
                Ok(())
            }
            Err(error) => {
                *self = Self::Refused;
                Err(error)
            }
        }
    }

    fn into_option(self) -> Option<T> {
        match self {
            Self::Set(value) => Some(value),
            Self::Unset | Self::Refused => None,
        }
    }
}

/// The keys as written, each value already typed.
#[derive(Default)]
struct Configuration {
    path: Setting<Expr>,
    url: Setting<Expr>,
    key: Setting<Expr>,
    env: Setting<LitStr>,
    on_conflict: Setting<OnConflict>,
    /// Where `on_conflict`'s value was written, for the errors that depend
    /// on other keys.
    on_conflict_span: Option<Span>,
    timeout: Setting<Timeout>,
    exit_code: Setting<u8>,
    signals: Setting<SignalsMode>,
    log: Setting<LogLevel>,
    notify_ready: Setting<bool>,
    hint: Setting<LitStr>,
    krate: Setting<syn::Path>,
    /// Which keys were seen, to refuse a key given twice.
    seen: Vec<String>,
    /// A syntax error ended the parse: the keys after it were never read, so
    /// an unset key may well have been given.
    cut_short: bool,
    errors: Option<syn::Error>,
}

impl Configuration {
    /// Reads every key it can, recording each mistake.
    fn parse(args: TokenStream) -> Self {
        let mut config = Self::default();
        // Syntax errors (a value that is not even a literal) end the parse;
        // the setters record every other mistake and let it go on.
        let parser = syn::meta::parser(|meta| config.set(&meta));
        if let Err(error) = parser.parse2(args) {
            config.cut_short = true;
            config.reject(error);
        }
        config
    }

    fn reject(&mut self, error: syn::Error) {
        match &mut self.errors {
            Some(errors) => errors.combine(error),
            None => self.errors = Some(error),
        }
    }

    /// One key: `Err` only for a syntax error, which ends the parse; a
    /// refused value is recorded instead.
    fn set(&mut self, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let Some(key) = meta.path.get_ident().map(ToString::to_string) else {
            return Err(syn::Error::new_spanned(
                &meta.path,
                format!("expected one of: {}", KEYS.join(", ")),
            ));
        };
        let value = meta.value()?;
        if !KEYS.contains(&key.as_str()) {
            // Read the value so the keys after it can still be checked.
            let _: Expr = value.parse()?;
            self.reject(syn::Error::new_spanned(&meta.path, unknown_key(&key)));
            return Ok(());
        }
        if self.seen.contains(&key) {
            let _: Expr = value.parse()?;
            self.reject(syn::Error::new_spanned(
                &meta.path,
                format!("`{key}` is given twice"),
            ));
            return Ok(());
        }
        self.seen.push(key.clone());
        let outcome = match key.as_str() {
            "path" => self.path.record(non_empty_expr(
                value.parse()?,
                "`path` is empty; give a file path such as \"data/bot.pid\"",
            )),
            "url" => self.url.record(Ok(value.parse()?)),
            "key" => self.key.record(non_empty_expr(
                value.parse()?,
                "`key` is empty; give the lock a name such as \"my-bot\"",
            )),
            "env" => self.env.record(non_empty_lit(
                value.parse()?,
                "`env` is empty; give a variable name such as \"BOT_PID_FILE\"",
            )),
            "on_conflict" => {
                let lit: LitStr = value.parse()?;
                self.on_conflict_span = Some(lit.span());
                self.on_conflict.record(typed(&lit))
            }
            "timeout" => self.timeout.record(Timeout::parse(&value.parse()?)),
            "exit_code" => self.exit_code.record(exit_code(&value.parse()?)),
            "signals" => self.signals.record(typed(&value.parse()?)),
            "log" => self.log.record(typed(&value.parse()?)),
            "notify_ready" => self
                .notify_ready
                .record(Ok(value.parse::<LitBool>()?.value)),
            "hint" => self.hint.record(Ok(value.parse()?)),
            "crate" => self.krate.record(value.parse::<LitStr>()?.parse()),
            _ => unreachable!("every key in KEYS has a setter"),
        };
        if let Err(error) = outcome {
            self.reject(error);
        }
        Ok(())
    }

    /// Whether a key was surely not given: unset, and every key was read.
    fn surely_unset<T>(&self, setting: &Setting<T>) -> bool {
        matches!(setting, Setting::Unset) && !self.cut_short
    }

    /// The checks across keys, then the typed result.
    fn build(mut self) -> syn::Result<FinalConfig> {
        if let Setting::Set(key) = &self.key
            && self.surely_unset(&self.url)
        {
            let error =
                syn::Error::new_spanned(key, "`key` names the lock across hosts: give `url` too");
            self.reject(error);
        }
        // A lock across hosts can fail or wait, not take over: the other
        // instance may be on another host, where nothing can be signalled
        // (and the local takeover would kill before the remote lock refused).
        if let (Setting::Set(OnConflict::Takeover), Setting::Set(_), Some(span)) =
            (&self.on_conflict, &self.url, self.on_conflict_span)
        {
            let error = syn::Error::new(
                span,
                "on_conflict = \"takeover\" works on one host only: with `url` the other instance may run on another host; use \"wait\" or \"exit\"",
            );
            self.reject(error);
        }
        // A refused `on_conflict` (`"wiat"`) already has its error; whether
        // a timeout fits it is unknown.
        let exits = match self.on_conflict {
            Setting::Set(policy) => policy == OnConflict::Exit,
            Setting::Unset => self.surely_unset(&self.on_conflict),
            Setting::Refused => false,
        };
        if let Setting::Set(timeout) = &self.timeout
            && exits
        {
            let error = syn::Error::new(
                timeout.span,
                "`timeout` applies only to on_conflict = \"wait\" or \"takeover\"",
            );
            self.reject(error);
        }
        if let Some(errors) = self.errors.take() {
            return Err(errors);
        }

        let timeout_ms = self.timeout.into_option().map(|timeout| timeout.ms);
        let policy = match self.on_conflict.into_option() {
            None | Some(OnConflict::Exit) => Policy::Exit,
            Some(OnConflict::Wait) => Policy::Wait { timeout_ms },
            Some(OnConflict::Takeover) => Policy::Takeover { timeout_ms },
        };
        let key = self.key.into_option();
        Ok(FinalConfig {
            krate: self
                .krate
                .into_option()
                .unwrap_or_else(|| syn::parse_quote!(::pidlock_core)),
            path: self.path.into_option(),
            env: self.env.into_option(),
            remote: self.url.into_option().map(|url| Remote { url, key }),
            policy,
            exit_code: self.exit_code.into_option(),
            signals: self.signals.into_option().unwrap_or_default(),
            log: self.log.into_option(),
            notify_ready: self.notify_ready.into_option().unwrap_or(false),
            hint: self.hint.into_option(),
        })
    }
}

/// A string value read through the type's `FromStr`, its error on the literal.
fn typed<T: FromStr<Err = String>>(lit: &LitStr) -> syn::Result<T> {
    lit.value()
        .parse()
        .map_err(|why| syn::Error::new_spanned(lit, why))
}

fn exit_code(lit: &LitInt) -> syn::Result<u8> {
    lit.base10_parse::<u8>()
        .map_err(|_| syn::Error::new_spanned(lit, "`exit_code` must be between 0 and 255"))
}

/// Any expression, except an empty string literal.
fn non_empty_expr(expr: Expr, message: &str) -> syn::Result<Expr> {
    match &expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) if lit.value().is_empty() => Err(syn::Error::new_spanned(lit, message)),
        _ => Ok(expr),
    }
}

fn non_empty_lit(lit: LitStr, message: &str) -> syn::Result<LitStr> {
    if lit.value().is_empty() {
        Err(syn::Error::new_spanned(lit, message))
    } else {
        Ok(lit)
    }
}

fn unknown_key(key: &str) -> String {
    let message = format!("unknown key `{key}`; expected one of: {}", KEYS.join(", "));
    match near_miss(key, KEYS) {
        Some(near) => format!("{message}; did you mean `{near}`?"),
        None => message,
    }
}

/// The first of `known` within two edits of `word`, for "did you mean".
fn near_miss<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .copied()
        .find(|known| edit_distance(word, known) <= 2)
}

/// Levenshtein distance, for "did you mean" on short names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = (previous + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(current + 1);
            previous = current;
        }
    }
    row[b.len()]
}

/// "500ms", "30s", "5m", "1h" → milliseconds.
fn parse_duration(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || {
        format!("cannot read {text:?} as a duration; write it like \"500ms\", \"30s\" or \"5m\"")
    };
    let number: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    number.checked_mul(scale).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::{ToTokens, quote};

    fn accepted(args: TokenStream) -> FinalConfig {
        parse(args).unwrap_or_else(|error| panic!("refused: {error}"))
    }

    /// Every message, in order.
    fn errors_of(args: TokenStream) -> Vec<String> {
        match parse(args) {
            Ok(_) => panic!("accepted"),
            Err(errors) => errors.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    fn error_of(args: TokenStream) -> String {
        let errors = errors_of(args);
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors[0].clone()
    }

    #[test]
    fn every_key_is_accepted_and_typed() {
        let config = accepted(quote!(
            path = "data/bot.pid",
            url = "postgres://db/app",
            key = "my-bot",
            env = "BOT_PID_FILE",
            on_conflict = "wait",
            timeout = "5m",
            exit_code = 3,
            signals = "none",
            log = "warn",
            notify_ready = true,
            hint = "h",
            crate = "pl"
        ));
        assert_eq!(
            config.path.to_token_stream().to_string(),
            "\"data/bot.pid\""
        );
        let remote = config.remote.expect("url was given");
        assert_eq!(
            remote.url.to_token_stream().to_string(),
            "\"postgres://db/app\""
        );
        assert_eq!(remote.key.to_token_stream().to_string(), "\"my-bot\"");
        assert_eq!(
            config.env.map(|env| env.value()),
            Some("BOT_PID_FILE".into())
        );
        assert_eq!(
            config.policy,
            Policy::Wait {
                timeout_ms: Some(300_000)
            }
        );
        assert_eq!(config.exit_code, Some(3));
        assert_eq!(config.signals, SignalsMode::None);
        assert_eq!(config.log, Some(LogLevel::Warn));
        assert!(config.notify_ready);
        assert_eq!(config.hint.map(|hint| hint.value()), Some("h".into()));
        assert_eq!(config.krate.to_token_stream().to_string(), "pl");
    }

    #[test]
    fn nothing_given_is_every_default() {
        let config = accepted(quote!());
        assert!(config.path.is_none() && config.env.is_none() && config.remote.is_none());
        assert_eq!(config.policy, Policy::Exit);
        assert_eq!(config.exit_code, None);
        assert_eq!(config.signals, SignalsMode::Auto);
        assert_eq!(config.log, None);
        assert!(!config.notify_ready);
        assert!(config.hint.is_none());
        assert_eq!(
            config.krate.to_token_stream().to_string(),
            ":: pidlock_core"
        );
    }

    #[test]
    fn the_policy_carries_its_timeout() {
        assert_eq!(
            accepted(quote!(on_conflict = "wait")).policy,
            Policy::Wait { timeout_ms: None }
        );
        assert_eq!(
            accepted(quote!(timeout = "500ms", on_conflict = "wait")).policy,
            Policy::Wait {
                timeout_ms: Some(500)
            }
        );
        assert_eq!(
            accepted(quote!(on_conflict = "takeover")).policy,
            Policy::Takeover { timeout_ms: None }
        );
        assert_eq!(accepted(quote!(on_conflict = "exit")).policy, Policy::Exit);
    }

    #[test]
    fn values_parse_into_their_types() {
        assert_eq!("wait".parse(), Ok(OnConflict::Wait));
        assert_eq!(
            "wiat".parse::<OnConflict>(),
            Err(
                "expected on_conflict = \"exit\", \"wait\" or \"takeover\"; did you mean \"wait\"?"
                    .into()
            )
        );
        assert_eq!(
            "retry".parse::<OnConflict>(),
            Err("expected on_conflict = \"exit\", \"wait\" or \"takeover\"".into())
        );
        assert_eq!("none".parse(), Ok(SignalsMode::None));
        assert_eq!("auto".parse(), Ok(SignalsMode::Auto));
        assert_eq!(
            "all".parse::<SignalsMode>(),
            Err("expected signals = \"auto\" or \"none\"".into())
        );
        assert_eq!("error".parse(), Ok(LogLevel::Error));
        assert_eq!(
            "debug".parse::<LogLevel>(),
            Err("expected log = \"info\", \"warn\" or \"error\" (errors are always shown)".into())
        );
    }

    #[test]
    fn near_misses_get_a_suggestion() {
        assert_eq!(
            error_of(quote!(pth = "x")),
            "unknown key `pth`; expected one of: path, url, key, env, on_conflict, timeout, \
             exit_code, signals, log, notify_ready, hint, crate; did you mean `path`?"
        );
    }

    #[test]
    fn two_mistakes_give_two_errors() {
        assert_eq!(
            errors_of(quote!(exit_code = 300, signals = "loud")),
            [
                "`exit_code` must be between 0 and 255",
                "expected signals = \"auto\" or \"none\""
            ]
        );
    }

    #[test]
    fn duplicates_and_ranges_are_refused() {
        assert_eq!(
            error_of(quote!(hint = "a", hint = "b")),
            "`hint` is given twice"
        );
        assert_eq!(
            error_of(quote!(exit_code = 256)),
            "`exit_code` must be between 0 and 255"
        );
        assert_eq!(
            error_of(quote!(path = "")),
            "`path` is empty; give a file path such as \"data/bot.pid\""
        );
        assert_eq!(
            error_of(quote!(key = "", url = "postgres://db")),
            "`key` is empty; give the lock a name such as \"my-bot\""
        );
    }

    #[test]
    fn checks_across_keys_run_after_every_key_is_read() {
        let timeout = "`timeout` applies only to on_conflict = \"wait\" or \"takeover\"";
        assert_eq!(error_of(quote!(timeout = "5s")), timeout);
        assert_eq!(
            error_of(quote!(timeout = "5s", on_conflict = "exit")),
            timeout
        );
        let key = "`key` names the lock across hosts: give `url` too";
        assert_eq!(error_of(quote!(key = "my-bot")), key);
        // `url` after `key` is seen before the check.
        accepted(quote!(key = "my-bot", url = "postgres://db"));
    }

    #[test]
    fn a_misspelt_policy_with_a_timeout_is_one_error() {
        assert_eq!(
            error_of(quote!(on_conflict = "wiat", timeout = "5s")),
            "expected on_conflict = \"exit\", \"wait\" or \"takeover\"; did you mean \"wait\"?"
        );
        assert_eq!(
            error_of(quote!(timeout = "5s", on_conflict = "wiat")),
            "expected on_conflict = \"exit\", \"wait\" or \"takeover\"; did you mean \"wait\"?"
        );
    }

    #[test]
    fn a_bad_duration_is_one_error_whatever_the_policy() {
        assert_eq!(
            error_of(quote!(timeout = "5 minutes")),
            "cannot read \"5 minutes\" as a duration; write it like \"500ms\", \"30s\" or \"5m\""
        );
    }

    #[test]
    fn takeover_with_url_is_refused_on_the_policy_whatever_the_order() {
        let takeover = "on_conflict = \"takeover\" works on one host only: with `url` the other instance may run on another host; use \"wait\" or \"exit\"";
        assert_eq!(
            error_of(quote!(url = "redis://cache", on_conflict = "takeover")),
            takeover
        );
        assert_eq!(
            error_of(quote!(
                on_conflict = "takeover",
                path = "a.pid",
                url = db_url()
            )),
            takeover
        );
        accepted(quote!(url = "redis://cache", on_conflict = "wait"));
        accepted(quote!(path = "a.pid", on_conflict = "takeover"));
    }

    #[test]
    fn a_syntax_error_skips_the_checks_that_depend_on_keys_after_it() {
        // `url` was never read: "give `url` too" would be wrong.
        assert_eq!(error_of(quote!(key = "my-bot", url)), "expected `=`");
        // Nor is it known whether `on_conflict` was going to be "wait".
        assert_eq!(
            error_of(quote!(
                timeout = "5s",
                exit_code = "2",
                on_conflict = "wait"
            )),
            "expected integer literal"
        );
        // A key read before the syntax error still counts.
        assert_eq!(
            errors_of(quote!(
                on_conflict = "exit",
                timeout = "5s",
                exit_code = "2"
            )),
            [
                "expected integer literal",
                "`timeout` applies only to on_conflict = \"wait\" or \"takeover\""
            ]
        );
    }

    /// The first column of the first table in `markdown`: the keys, for the
    /// rows that start with one (`| `path` | ...`).
    fn table_rows(markdown: &str) -> Vec<(&str, &str)> {
        markdown
            .lines()
            .skip_while(|line| !line.starts_with('|'))
            .take_while(|line| line.starts_with('|'))
            .filter_map(|row| row.strip_prefix("| `")?.split_once('`'))
            .collect()
    }

    fn sorted<'a>(keys: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
        let mut keys: Vec<&str> = keys.into_iter().collect();
        keys.sort_unstable();
        keys
    }

    /// The table in the attribute's documentation (lib.rs includes keys.md).
    const DOC_TABLE: &str = include_str!("keys.md");

    #[test]
    fn the_attribute_doc_lists_every_key_once() {
        let documented = table_rows(DOC_TABLE).into_iter().map(|(key, _)| key);
        assert_eq!(sorted(documented), sorted(KEYS.iter().copied()));
    }

    #[test]
    fn the_readme_lists_every_key_once() {
        // The workspace's README, read at run time: a packaged copy of this
        // crate has its own short README and no Keys table.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let Ok(readme) = std::fs::read_to_string(&path) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI=true and {} is missing",
                path.display()
            );
            return;
        };
        let (_, section) = readme
            .split_once("\n### Keys\n")
            .expect("README.md has a \"### Keys\" section");
        let documented = table_rows(section).into_iter().map(|(key, _)| key);
        assert_eq!(sorted(documented), sorted(KEYS.iter().copied()));
    }

    /// Each accepted value is named in its key's row, and parses.
    #[test]
    fn the_attribute_doc_names_every_value() {
        let rows = table_rows(DOC_TABLE);
        let row = |key: &str| {
            rows.iter()
                .find(|(name, _)| *name == key)
                .map(|(_, row)| *row)
                .unwrap_or_else(|| panic!("no row for `{key}`"))
        };
        for (key, names, parses) in [
            (
                "on_conflict",
                OnConflict::NAMES,
                (|name: &str| name.parse::<OnConflict>().is_ok()) as fn(&str) -> bool,
            ),
            ("signals", SignalsMode::NAMES, |name| {
                name.parse::<SignalsMode>().is_ok()
            }),
            ("log", LogLevel::NAMES, |name| {
                name.parse::<LogLevel>().is_ok()
            }),
        ] {
            for name in names {
                assert!(
                    row(key).contains(&format!("`\"{name}\"`")),
                    "`{key}`: {name}"
                );
                assert!(parses(name), "`{key}`: {name}");
            }
        }
        for duration in ["500ms", "30s", "5m", "1h"] {
            assert!(row("timeout").contains(&format!("`\"{duration}\"`")));
            assert!(parse_duration(duration).is_ok());
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("30s"), Ok(30_000));
        assert_eq!(parse_duration("5m"), Ok(300_000));
        assert_eq!(parse_duration("1h"), Ok(3_600_000));
        assert!(parse_duration("5 s").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }
}
