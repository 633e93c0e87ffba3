//! The attribute's arguments: one setter per key, every mistake recorded and
//! reported together, each on its own token.

use proc_macro2::TokenStream;
use syn::meta::ParseNestedMeta;
use syn::parse::Parser;
use syn::{Expr, ExprLit, Lit, LitInt, LitStr};

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

/// The keys as written; anything not given takes its default at run time.
#[derive(Default)]
pub(crate) struct Config {
    pub(crate) path: Option<Expr>,
    pub(crate) env: Option<LitStr>,
    pub(crate) exit_code: Option<u8>,
    pub(crate) signals_none: bool,
    /// `log = "info" | "warn" | "error"`, checked; `info` is the default.
    pub(crate) log: Option<LitStr>,
    /// `notify_ready = true`: send READY=1 to systemd once the lock is held.
    pub(crate) notify_ready: bool,
    pub(crate) hint: Option<LitStr>,
    pub(crate) krate: Option<syn::Path>,
    pub(crate) url: Option<Expr>,
    pub(crate) key: Option<Expr>,
    on_conflict: Option<LitStr>,
    /// `on_conflict` was given but its value was refused: checks that depend
    /// on it are skipped, so one mistake gives one error.
    on_conflict_refused: bool,
    timeout: Option<LitStr>,
    /// `timeout` in milliseconds, once it parsed.
    pub(crate) timeout_ms: Option<u64>,
    /// Which keys were seen, to refuse a key given twice.
    seen: Vec<String>,
    errors: Option<syn::Error>,
}

impl Config {
    /// Parses `args`; on any mistake, returns all of them combined.
    pub(crate) fn parse(args: TokenStream) -> syn::Result<Self> {
        let mut config = Self::default();
        // Syntax errors (a value that is not even a literal) end the parse;
        // the setters record every other mistake and let it go on.
        let parser = syn::meta::parser(|meta| config.set(&meta));
        if let Err(error) = parser.parse2(args) {
            config.reject(error);
        }
        config.check();
        match config.errors.take() {
            Some(errors) => Err(errors),
            None => Ok(config),
        }
    }

    fn reject(&mut self, error: syn::Error) {
        match &mut self.errors {
            Some(errors) => errors.combine(error),
            None => self.errors = Some(error),
        }
    }

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
            "path" => value.parse().map(|expr: Expr| match string_literal(&expr) {
                Some(lit) if lit.value().is_empty() => Err(syn::Error::new_spanned(
                    lit,
                    "`path` is empty; give a file path such as \"data/bot.pid\"",
                )),
                _ => {
                    self.path = Some(expr);
                    Ok(())
                }
            }),
            "env" => value.parse().map(|lit: LitStr| {
                if lit.value().is_empty() {
                    Err(syn::Error::new_spanned(
                        lit,
                        "`env` is empty; give a variable name such as \"BOT_PID_FILE\"",
                    ))
                } else {
                    self.env = Some(lit);
                    Ok(())
                }
            }),
            "on_conflict" => value.parse().map(|lit: LitStr| match lit.value().as_str() {
                "exit" | "wait" | "takeover" => {
                    self.on_conflict = Some(lit);
                    Ok(())
                }
                other => {
                    self.on_conflict_refused = true;
                    let mut message =
                        "expected on_conflict = \"exit\", \"wait\" or \"takeover\"".to_owned();
                    if let Some(near) = ["exit", "wait", "takeover"]
                        .into_iter()
                        .find(|known| edit_distance(other, known) <= 2)
                    {
                        message.push_str(&format!("; did you mean \"{near}\"?"));
                    }
                    Err(syn::Error::new_spanned(&lit, message))
                }
            }),
            "timeout" => value.parse().map(|lit: LitStr| {
                let ms = parse_duration(&lit.value())
                    .map_err(|why| syn::Error::new_spanned(&lit, why))?;
                self.timeout_ms = Some(ms);
                self.timeout = Some(lit);
                Ok(())
            }),
            "exit_code" => value.parse().map(|lit: LitInt| {
                let code = lit.base10_parse::<u8>().map_err(|_| {
                    syn::Error::new_spanned(&lit, "`exit_code` must be between 0 and 255")
                })?;
                self.exit_code = Some(code);
                Ok(())
            }),
            "signals" => value.parse().map(|lit: LitStr| match lit.value().as_str() {
                "auto" => Ok(()),
                "none" => {
                    self.signals_none = true;
                    Ok(())
                }
                _ => Err(syn::Error::new_spanned(
                    &lit,
                    "expected signals = \"auto\" or \"none\"",
                )),
            }),
            "log" => value.parse().map(|lit: LitStr| match lit.value().as_str() {
                "info" | "warn" | "error" => {
                    self.log = Some(lit);
                    Ok(())
                }
                _ => Err(syn::Error::new_spanned(
                    &lit,
                    "expected log = \"info\", \"warn\" or \"error\" (errors are always shown)",
                )),
            }),
            "notify_ready" => value.parse().map(|lit: syn::LitBool| {
                self.notify_ready = lit.value;
                Ok(())
            }),
            "url" => value.parse().map(|expr: Expr| {
                self.url = Some(expr);
                Ok(())
            }),
            "key" => value.parse().map(|expr: Expr| match string_literal(&expr) {
                Some(lit) if lit.value().is_empty() => Err(syn::Error::new_spanned(
                    lit,
                    "`key` is empty; give the lock a name such as \"my-bot\"",
                )),
                _ => {
                    self.key = Some(expr);
                    Ok(())
                }
            }),
            "hint" => value.parse().map(|lit: LitStr| {
                self.hint = Some(lit);
                Ok(())
            }),
            "crate" => value.parse().map(|lit: LitStr| {
                self.krate = Some(lit.parse()?);
                Ok(())
            }),
            _ => unreachable!("every key in KEYS has a setter"),
        }?;
        if let Err(error) = outcome {
            self.reject(error);
        }
        Ok(())
    }

    /// The conflict policy: "exit", "wait" or "takeover".
    pub(crate) fn on_conflict(&self) -> String {
        self.on_conflict
            .as_ref()
            .map_or_else(|| "exit".to_owned(), LitStr::value)
    }

    /// Checks across keys, after all of them are read.
    fn check(&mut self) {
        if let Some(key) = &self.key
            && self.url.is_none()
        {
            let error =
                syn::Error::new_spanned(key, "`key` names the PostgreSQL lock: give `url` too");
            self.reject(error);
        }
        if let Some(timeout) = &self.timeout
            && !self.on_conflict_refused
            && self.on_conflict() == "exit"
        {
            let error = syn::Error::new_spanned(
                timeout,
                "`timeout` applies only to on_conflict = \"wait\" or \"takeover\"",
            );
            self.reject(error);
        }
    }
}

fn string_literal(expr: &Expr) -> Option<&LitStr> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Some(lit),
        _ => None,
    }
}

fn unknown_key(key: &str) -> String {
    let message = format!("unknown key `{key}`; expected one of: {}", KEYS.join(", "));
    match KEYS.iter().find(|known| edit_distance(key, known) <= 2) {
        Some(near) => format!("{message}; did you mean `{near}`?"),
        None => message,
    }
}

/// Levenshtein distance, for "did you mean" on short key names.
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
pub(crate) fn parse_duration(text: &str) -> Result<u64, String> {
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
    use quote::quote;

    fn error_of(args: TokenStream) -> String {
        match Config::parse(args) {
            Ok(_) => panic!("accepted"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn every_key_is_accepted() {
        let config = Config::parse(quote!(
            path = "data/bot.pid",
            env = "BOT_PID_FILE",
            on_conflict = "exit",
            exit_code = 3,
            signals = "none",
            hint = "h",
            crate = "pl"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.exit_code, Some(3));
        assert!(config.signals_none);
    }

    #[test]
    fn near_misses_get_a_suggestion() {
        assert!(error_of(quote!(pth = "x")).contains("did you mean `path`?"));
    }

    #[test]
    fn two_mistakes_give_two_errors() {
        let errors = Config::parse(quote!(exit_code = 300, signals = "loud"))
            .err()
            .unwrap();
        assert_eq!(errors.into_iter().count(), 2);
    }

    #[test]
    fn duplicates_and_ranges_are_refused() {
        assert!(error_of(quote!(hint = "a", hint = "b")).contains("given twice"));
        assert!(error_of(quote!(exit_code = 256)).contains("between 0 and 255"));
        assert!(error_of(quote!(path = "")).contains("empty"));
        assert!(error_of(quote!(timeout = "5s")).contains("applies only"));
    }

    #[test]
    fn a_misspelt_policy_with_a_timeout_is_one_error() {
        let errors = Config::parse(quote!(on_conflict = "wiat", timeout = "5s"))
            .err()
            .unwrap();
        let messages: Vec<String> = errors.into_iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(
            messages[0].contains("did you mean \"wait\"?"),
            "{messages:?}"
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("30s"), Ok(30_000));
        assert_eq!(parse_duration("5m"), Ok(300_000));
        assert!(parse_duration("5 s").is_err());
        assert!(parse_duration("s").is_err());
    }
}
