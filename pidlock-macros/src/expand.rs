//! The rewrite of `main`, as a plain `proc_macro2` function so it can be
//! tested without a compiler run.
//!
//! A sync `fn main` gets one statement in front of its body: the guard that
//! holds the lock until `main`'s locals are dropped. The body itself is kept
//! as tokens (never re-parsed or wrapped), so `return`, `?` and the spans of
//! the user's code are untouched.
//!
//! An `async fn main` is first turned into a sync one by its runtime
//! attribute (`#[tokio::main]` and its kind). So that the lock is taken before
//! the runtime starts its threads and released after it shut down, this
//! attribute, when it sees an `async fn`, moves itself just below the runtime
//! attribute; it then runs again on the sync `main` the runtime produced.

use proc_macro2::{Delimiter, Group, Ident, Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Attribute, Signature, Visibility};

use crate::config::{self, FinalConfig, LogLevel, Policy, SignalsMode};

/// The attribute's whole effect: `args` and `item` in, tokens out. Never
/// panics; every mistake becomes `compile_error!` followed by the unchanged
/// item, so the user sees that one error and nothing else.
pub(crate) fn single_instance(args: TokenStream, item: TokenStream) -> TokenStream {
    let config = config::parse(args.clone());
    let main = match syn::parse2::<MainFn>(item.clone()) {
        Ok(main) => main,
        Err(item_error) => {
            let error = match config {
                Ok(_) => item_error,
                Err(mut error) => {
                    error.combine(item_error);
                    error
                }
            };
            return with_item(&error, item);
        }
    };
    match (config, main.check()) {
        (Ok(config), Ok(())) => rewrite(&config, args, main),
        (Err(error), Ok(())) => with_item(&error, item),
        (config, Err(mut error)) => {
            if let Err(config_error) = config {
                error.combine(config_error);
            }
            let error = error.to_compile_error();
            let stand_in = main.set_aside();
            quote!(#error #stand_in)
        }
    }
}

/// The error, then the item untouched: the user sees this one error, the
/// rest of the crate still resolves, and no "`main` not found" follows.
fn with_item(error: &syn::Error, item: TokenStream) -> TokenStream {
    let error = error.to_compile_error();
    quote!(#error #item)
}

/// A function item with its body kept as raw tokens (as tokio-macros does):
/// only the signature and attributes are parsed.
struct MainFn {
    attrs: Vec<Attribute>,
    vis: Visibility,
    sig: Signature,
    body: Group,
}

impl Parse for MainFn {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        let sig: Signature = input.parse().map_err(|error| {
            syn::Error::new(
                error.span(),
                "#[single_instance] goes on a function, usually `fn main`",
            )
        })?;
        let body = match input.parse::<TokenTree>()? {
            TokenTree::Group(group) if group.delimiter() == Delimiter::Brace => group,
            other => {
                return Err(syn::Error::new_spanned(
                    other,
                    "expected the function's body",
                ));
            }
        };
        Ok(Self {
            attrs,
            vis,
            sig,
            body,
        })
    }
}

impl MainFn {
    /// For a signature we refused: rustc would refuse the same `main` a second
    /// time (async, parameters, generics, ABI), so the function is kept under
    /// another name, where its body is still checked and its own errors still
    /// show, and an empty `main` stands in for it.
    fn set_aside(self) -> TokenStream {
        let Self {
            attrs,
            vis,
            mut sig,
            body,
        } = self;
        if sig.ident != "main" {
            return quote!(#(#attrs)* #vis #sig #body);
        }
        sig.ident = Ident::new("__pidlock_refused_main", sig.ident.span());
        quote! {
            #(#attrs)*
            #[allow(dead_code)]
            #vis #sig #body
            fn main() {}
        }
    }

    /// Refuses signatures the lock cannot wrap, each on the offending token.
    fn check(&self) -> syn::Result<()> {
        let sig = &self.sig;
        let mut errors = Vec::new();
        if let Some(token) = &sig.constness {
            errors.push(syn::Error::new_spanned(
                token,
                "#[single_instance] cannot go on a `const fn`",
            ));
        }
        if let syn::Safety::Unsafe(token) = &sig.safety {
            errors.push(syn::Error::new_spanned(
                token,
                "#[single_instance] cannot go on an `unsafe fn`; make `main` safe",
            ));
        }
        if let Some(abi) = &sig.abi {
            errors.push(syn::Error::new_spanned(
                abi,
                "#[single_instance] cannot go on an `extern` fn",
            ));
        }
        if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
            errors.push(syn::Error::new_spanned(
                &sig.generics,
                "#[single_instance] needs a function without generics, like `fn main()`",
            ));
        }
        if !sig.inputs.is_empty() {
            errors.push(syn::Error::new_spanned(
                &sig.inputs,
                "#[single_instance] needs a function without parameters, like `fn main()`",
            ));
        }
        if sig.asyncness.is_some() && runtime_attribute(&self.attrs).is_none() {
            errors.push(syn::Error::new_spanned(
                sig.asyncness.as_ref(),
                "`async fn main` needs a runtime: add `#[tokio::main]` (or your runtime's attribute) to this function",
            ));
        }
        let mut errors = errors.into_iter();
        let Some(mut first) = errors.next() else {
            return Ok(());
        };
        first.extend(errors);
        Err(first)
    }
}

/// The index of an attribute that runs an `async fn main` on a runtime:
/// `#[tokio::main]`, `#[async_std::main]`, `#[actix_web::main]`, ...
fn runtime_attribute(attrs: &[Attribute]) -> Option<usize> {
    attrs.iter().position(|attr| {
        attr.path()
            .segments
            .last()
            .is_some_and(|segment| segment.ident == "main")
    })
}

fn rewrite(config: &FinalConfig, args: TokenStream, main: MainFn) -> TokenStream {
    let krate = &config.krate;
    let MainFn {
        attrs,
        vis,
        sig,
        body,
    } = main;

    if let Some(at) = runtime_attribute(&attrs)
        && sig.asyncness.is_some()
    {
        let (before, after) = attrs.split_at(at + 1);
        return quote! {
            #(#before)*
            #[#krate::single_instance(#args)]
            #(#after)*
            #vis #sig #body
        };
    }

    let guard = Ident::new("__pidlock_guard", Span::mixed_site());
    let calls = builder_calls(config);
    // Inner attributes (`#![allow(..)]`) must stay first in the block: the
    // guard goes right after them.
    let (inner_attrs, inner) = split_inner_attributes(body.stream());
    let mut new_body = Group::new(
        Delimiter::Brace,
        quote! {
            #inner_attrs
            let #guard = #krate::__private::Entry::new(
                ::core::option_env!("CARGO_BIN_NAME"),
                ::core::env!("CARGO_CRATE_NAME"),
            )
            #calls
            .acquire_or_exit();
            #inner
        },
    );
    new_body.set_span(body.span());
    quote! {
        #(#attrs)*
        #vis #sig #new_body
    }
}

/// Splits a block's tokens into its leading inner attributes (`#![...]`,
/// including `//!` doc comments, which arrive as `#![doc = ...]`) and the
/// statements after them.
fn split_inner_attributes(body: TokenStream) -> (TokenStream, TokenStream) {
    let mut tokens: Vec<TokenTree> = body.into_iter().collect();
    let mut end = 0;
    while let [
        TokenTree::Punct(hash),
        TokenTree::Punct(bang),
        TokenTree::Group(group),
        ..,
    ] = &tokens[end..]
        && hash.as_char() == '#'
        && bang.as_char() == '!'
        && group.delimiter() == Delimiter::Bracket
    {
        end += 3;
    }
    let rest = tokens.split_off(end);
    (tokens.into_iter().collect(), rest.into_iter().collect())
}

/// One builder call per key that was given.
fn builder_calls(config: &FinalConfig) -> TokenStream {
    let krate = &config.krate;
    let mut calls = TokenStream::new();
    if let Some(path) = &config.path {
        // Spanned on the expression, so a type error points at it.
        calls.extend(quote_spanned!(path.span()=> .path(&(#path))));
    }
    if let Some(remote) = &config.remote {
        // Through an identity function whose bound only holds with the
        // runtime crate's `postgres` feature: without it, a compile error
        // on the `url` value that says so, not a failure at run time.
        let url = &remote.url;
        calls.extend(quote_spanned!(url.span()=> .url(&(#krate::__private::remote_url(#url)))));
        if let Some(key) = &remote.key {
            calls.extend(quote_spanned!(key.span()=> .key(&(#key))));
        }
    }
    if let Some(var) = &config.env {
        calls.extend(quote!(.env(#var)));
    }
    if let Some(code) = config.exit_code {
        calls.extend(quote!(.exit_code(#code)));
    }
    if let Some(hint) = &config.hint {
        calls.extend(quote!(.hint(#hint)));
    }
    let timeout = |timeout_ms: Option<u64>| match timeout_ms {
        Some(ms) => quote!(::core::option::Option::Some(#ms)),
        None => quote!(::core::option::Option::None),
    };
    match config.policy {
        Policy::Exit => {}
        Policy::Wait { timeout_ms } => {
            let timeout = timeout(timeout_ms);
            calls.extend(quote!(.wait(#timeout)));
        }
        Policy::Takeover { timeout_ms } => {
            let timeout = timeout(timeout_ms);
            calls.extend(quote!(.takeover(#timeout)));
        }
    }
    match config.signals {
        SignalsMode::Auto => {}
        SignalsMode::None => calls.extend(quote!(.signals(#krate::__private::Signals::None))),
    }
    if config.notify_ready {
        calls.extend(quote!(.notify_ready(true)));
    }
    if let Some(level) = config.log {
        let level = match level {
            LogLevel::Info => quote!(Info),
            LogLevel::Warn => quote!(Warn),
            LogLevel::Error => quote!(Error),
        };
        calls.extend(quote!(.log_level(#krate::__private::LogLevel::#level)));
    }
    calls
}

#[cfg(test)]
mod tests;
