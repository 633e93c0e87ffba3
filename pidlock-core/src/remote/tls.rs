//! TLS for every engine's connections: rustls with the ring provider (no
//! OpenSSL to build or link), the trusted roots, the verifiers, and what a
//! failed handshake means in words. Which of them a URL asks for is the
//! engine's business (libpq's `sslmode` for PostgreSQL, the `rediss`
//! scheme for Redis); both name a CA file with `sslrootcert`.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// The trusted roots, and where they came from (for error messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Roots {
    /// No root certificate (libpq's `require` without one).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    None,
    File(PathBuf),
    System,
}

impl Roots {
    /// `sslrootcert`'s value: `system`, or a PEM file.
    pub(crate) fn named(value: &str) -> Self {
        if value == "system" {
            Self::System
        } else {
            Self::File(PathBuf::from(value))
        }
    }

    /// "the CA in /etc/bot/ca.crt", for "not signed by ...".
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::None => "no CA".to_owned(),
            Self::File(path) => format!("the CA in {}", path.display()),
            Self::System => "the system's trusted CAs".to_owned(),
        }
    }
}

/// What the server's certificate is checked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// Without roots ([`Roots::None`]: libpq's `require` without a root
/// certificate) nothing is verified beyond the handshake's own signatures.
pub(crate) enum Verify {
    /// The chain leads to a trusted root; any name (libpq's `verify-ca`).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Chain,
    /// The chain, and the name connected to.
    ChainAndName,
}

fn provider() -> Arc<CryptoProvider> {
    // Not the process-wide default: the program may have installed another
    // provider, or none (and with two providers compiled in, rustls's
    // default panics), and neither should change how this lock connects.
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration for `verify` against `roots`; the roots are read
/// here, so a missing CA file is an error before any connection.
pub(crate) fn client_config(verify: Verify, roots: &Roots) -> Result<ClientConfig, String> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match (load_roots(roots)?, verify) {
        (None, _) => Arc::new(Unverified(provider.signature_verification_algorithms)),
        (Some(store), verify) => {
            let full =
                WebPkiServerVerifier::builder_with_provider(Arc::new(store), Arc::clone(&provider))
                    .build()
                    .map_err(|error| format!("cannot use the trusted roots: {error}"))?;
            if verify == Verify::ChainAndName {
                full
            } else {
                Arc::new(ChainOnly(full))
            }
        }
    };
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("cannot set up TLS: {error}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn load_roots(roots: &Roots) -> Result<Option<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::None => return Ok(None),
        Roots::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|error| format!("cannot read sslrootcert {}: {error}", path.display()))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "sslrootcert {} holds no usable CA certificate (PEM expected)",
                    path.display()
                ));
            }
        }
        Roots::System => {
            // Unreadable entries are skipped, as long as some root is found:
            // one broken file in /etc/ssl must not stop the lock.
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "no trusted CA certificates found on this system ({} errors); give the CA file as sslrootcert",
                    found.errors.len()
                ));
            }
        }
    }
    Ok(Some(store))
}

/// What a rustls error in the handshake means, in words a person can act
/// on. `setting` is what asked for the check (`sslmode=verify-full`,
/// `rediss://`); `name_fix` how to get past a host name mismatch.
pub(crate) fn explain(
    error: &rustls::Error,
    roots: &Roots,
    host: &str,
    setting: &str,
    name_fix: &str,
) -> String {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "the server's certificate is not signed by {} (unknown CA; {setting}); give the CA that signed it as sslrootcert",
            roots.describe()
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "host name mismatch: the server's certificate is not valid for \"{host}\" ({setting} checks the name connected to); {name_fix}"
        ),
        rustls::Error::InvalidCertificate(other) => {
            format!("the server's certificate was refused ({other:?}; {setting})")
        }
        other => format!("the TLS handshake failed: {other}"),
    }
}

/// No root certificate: encrypted, nothing verified, as in libpq's
/// `require`. The handshake's signatures are still checked, so the session
/// key really belongs to the certificate shown.
#[derive(Debug)]
struct Unverified(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The chain must lead to a trusted root; the name is not checked. WebPKI
/// checks the chain before the name, so a name error means the chain was
/// good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
