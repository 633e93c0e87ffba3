//! The macro never panics, whatever tokens it is given: 10 000 generated
//! argument lists and items per run, built from the attribute's own
//! vocabulary (keys, values of every literal kind, punctuation, groups) so
//! that most inputs get deep into parsing instead of failing on the first
//! token.

use std::str::FromStr;

use proc_macro2::TokenStream;
use proptest::prelude::*;

use crate::config::KEYS;
use crate::expand::single_instance;

/// Tokens that are neither keys nor values, for the noise inputs.
const PUNCTUATION: &[&str] = &[
    "=", ",", "(", ")", "[", "]", "{", "}", "()", "::", ".", "&", "#", "!", "?", "-", "std", "join",
];

const ITEM_ATOMS: &[&str] = &[
    "#[tokio::main]",
    "#[tokio::main(flavor = \"current_thread\")]",
    "#[async_std::main]",
    "#[main]",
    "#[doc = \"x\"]",
    "#[inline]",
    "/// docs",
    "pub",
    "pub(crate)",
    "const",
    "async",
    "unsafe",
    "extern \"C\"",
    "fn",
    "main",
    "run",
    "<T>",
    "<'a>",
    "(x: u8)",
    "()",
    "-> ()",
    "-> Result<(), String>",
    "-> std::process::ExitCode",
    "where T: Copy",
    "{ }",
    "{ return; }",
    "{ x? }",
    "{ let y = 1; y }",
    "{ .await }",
    "struct",
    "S",
    ";",
    "impl",
    "mod",
    "{",
    "}",
    "(",
    ")",
    "=",
    ",",
    "#",
    "!",
];

/// A well-formed function with random parts, or random item tokens.
fn item() -> impl Strategy<Value = String> {
    let function = (
        prop::collection::vec(prop::sample::select(&ITEM_ATOMS[..7]), 0..3),
        prop::sample::select(&["", "pub", "const", "async", "unsafe", "extern \"C\""][..]),
        prop::sample::select(&["main", "run"][..]),
        prop::sample::select(&["", "<T>"][..]),
        prop::sample::select(&["()", "(x: u8)"][..]),
        prop::sample::select(&["", "-> Result<(), String>", "-> std::process::ExitCode"][..]),
        prop::sample::select(&["{}", "{ return; }", "{ x? }", "{ async {}.await }"][..]),
    )
        .prop_map(|(attrs, qualifier, name, generics, params, ret, body)| {
            format!(
                "{} {qualifier} fn {name}{generics}{params} {ret} {body}",
                attrs.join(" ")
            )
        });
    let noise = prop::collection::vec(prop::sample::select(ITEM_ATOMS), 0..12)
        .prop_map(|atoms| atoms.join(" "));
    prop_oneof![3 => function, 1 => noise]
}

/// Misspelt and foreign keys, besides the real ones (`config::KEYS`).
const OTHER_KEYS: &[&str] = &["pth", "sigals", "lockfile", "std::path"];

const VALUES: &[&str] = &[
    "\"data/bot.pid\"",
    "\"\"",
    "\"exit\"",
    "\"wait\"",
    "\"takeover\"",
    "\"500ms\"",
    "\"5 s\"",
    "\"auto\"",
    "\"none\"",
    "\"pidlock_core\"",
    "\"not a path!\"",
    "\"BOT_PID_FILE\"",
    "0",
    "1",
    "255",
    "256",
    "-1",
    "1.5",
    "1u8",
    "true",
    "b\"x\"",
    "'c'",
    "VAR",
    "std::env::temp_dir().join(\"x\")",
    "(1, 2)",
    "[]",
    "{}",
    "",
];

/// Mostly `key = value` lists (so every setter and check is reached), with
/// some plain noise.
fn args() -> impl Strategy<Value = String> {
    let keys: Vec<&str> = KEYS.iter().chain(OTHER_KEYS).copied().collect();
    let atoms: Vec<&str> = keys
        .iter()
        .chain(VALUES)
        .chain(PUNCTUATION)
        .copied()
        .collect();
    let pair = (
        prop::sample::select(keys),
        prop::sample::select(VALUES),
        prop::bool::weighted(0.9),
    )
        .prop_map(|(key, value, with_equals)| {
            if with_equals {
                format!("{key} = {value}")
            } else {
                format!("{key} {value}")
            }
        });
    let pairs = prop::collection::vec(pair, 0..5).prop_map(|pairs| pairs.join(", "));
    let noise =
        prop::collection::vec(prop::sample::select(atoms), 0..14).prop_map(|atoms| atoms.join(" "));
    prop_oneof![3 => pairs, 1 => noise]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn never_panics_and_always_returns_tokens(args in args(), item in item()) {
        // Unbalanced delimiters are not a token stream at all: the compiler
        // never hands those to a macro.
        let (Ok(args), Ok(item)) = (TokenStream::from_str(&args), TokenStream::from_str(&item)) else {
            return Ok(());
        };
        let out = single_instance(args, item.clone());
        prop_assert!(!out.is_empty());
        // Whatever happened, the item's tokens are still in the output.
        let out = out.to_string();
        if let Some(first) = item.into_iter().next() {
            let first = first.to_string();
            prop_assert!(out.contains(&first), "{} missing from {}", first, out);
        }
    }
}
