//! TLS to PostgreSQL with libpq's `sslmode` and `sslrootcert`, against a
//! server of the test's own with a CA and certificate the test makes with
//! the `openssl` CLI. One test walks every mode, so the server starts once.
#![cfg(feature = "postgres")]

mod servers;

use pidlock_core::{Error, PgLock};
use servers::certs::{Certs, openssl_cli};
use servers::postgres::{PgServer, Setup, chown_to_server_user, holder_backend};
use servers::unique_key;

/// Takes the lock over `url`; on success reports whether the server sees
/// the holder's session encrypted, then releases it.
fn attempt(server: &PgServer, url: &str) -> Result<bool, String> {
    let key = unique_key("tls");
    let guard = PgLock::new(url, &key)
        .log_level(pidlock_core::LogLevel::Warn)
        .acquire()
        .map_err(|error| match error {
            Error::Remote { reason, .. } => reason,
            other => format!("unexpected error: {other}"),
        })?;
    let mut admin = server.admin();
    let backend = holder_backend(&mut admin, &key).expect("the holder's backend in pg_locks");
    let ssl: bool = admin
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = $1", &[&backend])
        .expect("pg_stat_ssl")
        .get(0);
    drop(guard);
    Ok(ssl)
}

/// New `pg_hba.conf` lines (after the local one) and settings, applied.
fn reload(server: &PgServer, admin: &mut postgres::Client, settings: &str, hba: &str) {
    std::fs::write(
        server.data().join("pg_hba.conf"),
        format!("local all all trust\n{hba}"),
    )
    .expect("pg_hba.conf");
    if !settings.is_empty() {
        admin.batch_execute(settings).expect("settings");
    }
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .expect("reload");
    // The postmaster applies a reload asynchronously: wait until a plaintext
    // connection is let in.
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
        server.port
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while postgres::Client::connect(&url, postgres::NoTls).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "reload not applied\n{}",
            server.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn postgres_tls_modes_behave_like_libpq() {
    let Some(()) = openssl_cli() else {
        return;
    };
    let certs_dir = tempfile::tempdir().expect("tempdir");
    let certs = Certs::make(certs_dir.path());
    chown_to_server_user(&certs.server_key);
    // The server reads its certificate as the server user from our dir.
    chown_to_server_user(certs_dir.path());
    let Some(server) = PgServer::start(Setup {
        conf: format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            certs.server_cert.display(),
            certs.server_key.display()
        ),
        // TLS or nothing over TCP.
        hba: Some("local all all trust\nhostssl all all 127.0.0.1/32 trust\n".to_owned()),
        ..Setup::default()
    }) else {
        return;
    };
    let port = server.port;
    let (ca, other_ca) = (certs.ca.display(), certs.other_ca.display());
    let at =
        |host: &str, query: &str| format!("postgres://postgres@{host}:{port}/postgres?{query}");
    let wrong_name = |query: &str| {
        format!("postgres://postgres@wrong-name.invalid:{port}/postgres?hostaddr=127.0.0.1&{query}")
    };

    let results = std::cell::RefCell::new(Vec::new());
    let expect = |label: &str, url: String, expected: Result<bool, &str>| {
        let got = attempt(&server, &url);
        results.borrow_mut().push(format!("{label:<44} -> {got:?}"));
        match (&got, expected) {
            (Ok(ssl), Ok(want_ssl)) => assert_eq!(*ssl, want_ssl, "{label}: encrypted?"),
            (Err(reason), Err(needle)) => assert!(reason.contains(needle), "{label}: {reason}"),
            _ => panic!(
                "{label}: got {got:?}, expected {expected:?}\n{}",
                server.log()
            ),
        }
    };

    expect(
        "verify-full, right CA, localhost",
        at(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        Ok(true),
    );
    expect(
        "verify-full, right CA, 127.0.0.1",
        at(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        Ok(true),
    );
    expect(
        "verify-full, wrong CA",
        at(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={other_ca}"),
        ),
        Err("unknown CA"),
    );
    expect(
        "verify-full, right CA, wrong host name",
        wrong_name(&format!("sslmode=verify-full&sslrootcert={ca}")),
        Err("host name mismatch: the server's certificate is not valid for \"wrong-name.invalid\""),
    );
    expect(
        "verify-ca, right CA, wrong host name",
        wrong_name(&format!("sslmode=verify-ca&sslrootcert={ca}")),
        Ok(true),
    );
    expect(
        "verify-ca, wrong CA",
        at(
            "localhost",
            &format!("sslmode=verify-ca&sslrootcert={other_ca}"),
        ),
        Err("unknown CA"),
    );
    expect(
        "require, no CA",
        at("127.0.0.1", "sslmode=require"),
        Ok(true),
    );
    expect(
        "require, wrong CA (a root cert means verify)",
        at(
            "127.0.0.1",
            &format!("sslmode=require&sslrootcert={other_ca}"),
        ),
        Err("unknown CA"),
    );
    expect(
        "prefer, TLS server",
        at("127.0.0.1", "sslmode=prefer"),
        Ok(true),
    );
    expect(
        "disable, hostssl-only server",
        at("127.0.0.1", "sslmode=disable"),
        Err(
            "accepts this connection only over TLS (sslmode=disable); use sslmode=require or verify-full",
        ),
    );
    expect(
        "key=value form, verify-full",
        format!(
            "host=localhost port={port} user=postgres dbname=postgres sslmode=verify-full sslrootcert='{ca}'"
        ),
        Ok(true),
    );

    // Without sslmode in the URL, PGSSLMODE and PGSSLROOTCERT apply (in a
    // program of its own, to leave this process's environment alone).
    for (root, expected) in [(&certs.ca, None), (&certs.other_ca, Some("unknown CA"))] {
        let mut engine = servers::engine(&at("localhost", ""), &unique_key("tls-env"));
        engine
            .env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", root);
        let holder = servers::Process::start(engine);
        let outcome = holder.try_line(servers::DEADLINE);
        results.borrow_mut().push(format!(
            "PGSSLMODE=verify-full, PGSSLROOTCERT={} -> {outcome:?}",
            root.display()
        ));
        match expected {
            None => assert!(
                outcome.is_some_and(|line| line.starts_with("held")),
                "{}",
                holder.stderr_all()
            ),
            Some(needle) => {
                assert_eq!(outcome, None);
                let stderr = holder.stderr_all();
                assert!(stderr.contains(needle), "{stderr}");
            }
        }
    }

    // TLS and plaintext both accepted: `prefer` falls back to plaintext
    // when the handshake fails, as libpq does.
    let mut admin = server.admin();
    reload(&server, &mut admin, "", "host all all 127.0.0.1/32 trust\n");
    expect(
        "prefer, wrong CA, plaintext allowed",
        at(
            "127.0.0.1",
            &format!("sslmode=prefer&sslrootcert={other_ca}"),
        ),
        Ok(false),
    );
    expect(
        "prefer, plaintext allowed",
        at("127.0.0.1", "sslmode=prefer"),
        Ok(true),
    );

    // The same server without TLS: prefer goes plaintext, the rest refuse.
    reload(
        &server,
        &mut admin,
        "ALTER SYSTEM SET ssl = off",
        "host all all 127.0.0.1/32 trust\n",
    );
    expect(
        "prefer, server without TLS",
        at("127.0.0.1", "sslmode=prefer"),
        Ok(false),
    );
    expect(
        "default (prefer), server without TLS",
        at("127.0.0.1", ""),
        Ok(false),
    );
    expect(
        "require, server without TLS",
        at("127.0.0.1", "sslmode=require"),
        Err("the server does not support TLS"),
    );
    expect(
        "verify-full, server without TLS",
        at(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        Err("the server does not support TLS"),
    );
    eprintln!("{}", results.borrow().join("\n"));
}
