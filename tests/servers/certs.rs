//! A CA and a server certificate the test makes with the `openssl` CLI.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::run;

/// The `openssl` CLI, or `None` (and a message) outside CI.
pub(crate) fn openssl_cli() -> Option<()> {
    super::require(
        "the openssl CLI",
        Command::new("openssl")
            .arg("version")
            .output()
            .ok()
            .map(drop),
    )
}

/// A CA, a server certificate it signed (for `localhost` and `127.0.0.1`),
/// and an unrelated CA.
pub(crate) struct Certs {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").current_dir(dir).args(args));
}

impl Certs {
    pub(crate) fn make(dir: &Path) -> Self {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for (name, subject) in [
            ("ca", "/CN=pidlock test CA"),
            ("other-ca", "/CN=someone else's CA"),
        ] {
            let (key, cert) = (format!("{name}.key"), format!("{name}.crt"));
            let mut args = vec!["req", "-x509", "-days", "2", "-subj", subject];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &cert]);
            args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
            args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
            openssl(dir, &args);
        }
        let mut args = vec![
            "req",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ];
        args.extend(ec);
        openssl(dir, &args);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName = DNS:localhost, IP:127.0.0.1\nbasicConstraints = CA:FALSE\n\
             keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n",
        )
        .expect("server.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.crt",
            ],
        );
        let server_key = dir.join("server.key");
        // PostgreSQL refuses a key others can read.
        std::fs::set_permissions(&server_key, std::fs::Permissions::from_mode(0o600))
            .expect("chmod key");
        Self {
            ca: dir.join("ca.crt"),
            other_ca: dir.join("other-ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key,
        }
    }
}
