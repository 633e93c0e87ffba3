//! The fencing term: one row per key in the table `pidlock_fencing`, bumped
//! by every acquisition and carrying the holder's host and PID (which the
//! conflict message names), and whether that holder released the lock
//! cleanly (which decides the handover, see [`crate::PgLock::handover`]).
//! Only the lock's holder writes its key's row, so reading it and then
//! writing it needs no more locking than the lock itself.
//!
//! It is an ordinary table, so it is as durable as any commit: it survives a
//! server restart, and a streaming replica has it. After a failover the
//! promoted replica has every term whose bump it received; with asynchronous
//! replication the last bump before the failure may be lost, and the next
//! holder is then given the same number again. Where terms must never
//! repeat, replicate synchronously (`synchronous_commit = on` with a
//! synchronous standby).

use postgres::Client;
use postgres::error::SqlState;

use crate::pid::Pid;
use crate::remote::Previous;

/// Bumps the key's term and records this process as its holder; returns the
/// new term and how the previous holder let go.
pub(super) fn bump(client: &mut Client, key: &str) -> Result<(i64, Previous), postgres::Error> {
    let host = crate::remote::host_name();
    create_table(client)?;
    let previous = match client.query_opt(
        "SELECT released, host, pid FROM pidlock_fencing WHERE key = $1",
        &[&key],
    )? {
        None => Previous::Gone,
        Some(row) if row.get::<_, bool>(0) => Previous::Gone,
        Some(row) => Previous::Unreleased {
            host: row.get(1),
            pid: row.get(2),
        },
    };
    let term = client
        .query_one(
            "INSERT INTO pidlock_fencing AS f (key, term, host, pid) VALUES ($1, 1, $2, $3)
             ON CONFLICT (key) DO UPDATE
               SET term = f.term + 1, host = $2, pid = $3, acquired_at = now(), released = false
             RETURNING term",
            &[&key, &host, &Pid::current().get()],
        )?
        .get(0);
    Ok((term, previous))
}

/// Marks the term as released by its holder, just before it unlocks.
pub(super) fn released(client: &mut Client, key: &str, term: i64) -> Result<(), postgres::Error> {
    client
        .execute(
            "UPDATE pidlock_fencing SET released = true WHERE key = $1 AND term = $2",
            &[&key, &term],
        )
        .map(drop)
}

fn create_table(client: &mut Client) -> Result<(), postgres::Error> {
    // Two first holders of different keys may create the table at once;
    // PostgreSQL then fails one of them with a unique violation on its
    // catalog even with IF NOT EXISTS. The table exists either way.
    let created = client.batch_execute(
        "CREATE TABLE IF NOT EXISTS pidlock_fencing (
            key text PRIMARY KEY, term bigint NOT NULL, host text NOT NULL,
            pid integer NOT NULL, acquired_at timestamptz NOT NULL DEFAULT now(),
            released boolean NOT NULL DEFAULT false)",
    );
    match created {
        Ok(()) => {}
        Err(error)
            if error.code() == Some(&SqlState::UNIQUE_VIOLATION)
                || error.code() == Some(&SqlState::DUPLICATE_TABLE) => {}
        Err(error) => return Err(error),
    }
    // A table made before `released` existed gets it; only then, since
    // ALTER TABLE needs the table's owner and locks it.
    let missing: bool = client
        .query_one(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_attribute
               WHERE attrelid = to_regclass('pidlock_fencing') AND attname = 'released' AND NOT attisdropped)",
            &[],
        )?
        .get(0);
    if missing {
        client.batch_execute(
            "ALTER TABLE pidlock_fencing ADD COLUMN IF NOT EXISTS released boolean NOT NULL DEFAULT false",
        )?;
    }
    Ok(())
}

/// The host and PID the key's holder recorded, if it did.
pub(super) fn holder(client: &mut Client, key: &str) -> (Option<String>, Option<Pid>) {
    let row = client
        .query_opt(
            "SELECT host, pid FROM pidlock_fencing WHERE key = $1",
            &[&key],
        )
        .ok()
        .flatten();
    (
        row.as_ref().map(|row| row.get::<_, String>(0)),
        row.and_then(|row| Pid::new(row.get(1))),
    )
}
