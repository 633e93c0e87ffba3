//! The PostgreSQL side of a held lock: the connection the keeper thread
//! owns (see `remote::lease` for the thread and the watchdog).
//!
//! The lock is the session, so between heartbeats the keeper sits in a read
//! on the connection: the moment the server ends the session (a `FATAL`
//! from `pg_terminate_backend` or a shutdown, or just a closed socket) it
//! knows, and reports the lock lost at once. Every heartbeat it asks the
//! server, in one statement, whether this backend still holds the key and
//! this connection's marker and nobody else's (see [`super::pooler`]).

use std::io::ErrorKind;
use std::time::Duration;

use postgres::Client;
use postgres::fallible_iterator::FallibleIterator;

use super::pooler::Marker;
use crate::remote::{Keeper, Lost};

/// The connection that holds the lock, and what it must keep holding.
pub(super) struct PgKeeper {
    pub(super) client: Client,
    pub(super) key: String,
    pub(super) id: i64,
    pub(super) marker: Marker,
    pub(super) term: i64,
}

impl Keeper for PgKeeper {
    /// Waits up to `timeout` for anything from the server. `Err` when the
    /// session is over: the server's `FATAL`, or the connection closed.
    fn idle(&mut self, timeout: Duration) -> Result<(), Lost> {
        // Nothing LISTENs on this connection: what the read can return is the
        // end of the session, or a notification some other code could not
        // have asked for; that is ignored.
        let next = self.client.notifications().timeout_iter(timeout).next();
        match next {
            Err(error) => Err(ended(&error)),
            Ok(_) if self.client.is_closed() => Err(Lost::Released(
                "the server closed the connection".to_owned(),
            )),
            Ok(_) => Ok(()),
        }
    }

    fn confirm(&mut self) -> Result<bool, Lost> {
        match self.marker.seen(&mut self.client, self.id) {
            Ok(seen) if seen.pooler().is_some() => Err(Lost::Broken(format!(
                "{}: this connection goes through a transaction- or statement-mode pooler; {}",
                seen.pooler().unwrap_or_default(),
                super::pooler::USE_DIRECT
            ))),
            Ok(seen) if !seen.key => Err(Lost::Released(
                "the server no longer shows this session holding it".to_owned(),
            )),
            Ok(_) => Ok(true),
            Err(error) if self.client.is_closed() => Err(ended(&error)),
            // A slow answer (statement_timeout) is not a verdict: the
            // watchdog decides when the lease runs out.
            Err(_) => Ok(false),
        }
    }

    /// A clean release spares the next holder its handover. Then unlock
    /// explicitly: closing the connection frees the lock too, but only once
    /// the server has read the goodbye, after the guard's drop returned.
    fn release(&mut self) {
        let _ = super::fencing::released(&mut self.client, &self.key, self.term);
        let _ = self.client.batch_execute(&self.marker.unlock_sql(self.id));
    }
}

/// Why the session ended, in the server's own words when it gave some.
fn ended(error: &postgres::Error) -> Lost {
    if let Some(db) = error.as_db_error() {
        return Lost::Released(format!(
            "the server ended the session ({}: {})",
            db.severity(),
            db.message()
        ));
    }
    let io =
        std::error::Error::source(error).and_then(|source| source.downcast_ref::<std::io::Error>());
    match io.map(std::io::Error::kind) {
        // The peer closed or reset the connection: the server's side is gone.
        None
        | Some(ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof) => {
            Lost::Released(format!("the server closed the connection ({error})"))
        }
        // A timeout (ours: keepalive, tcp_user_timeout) says nothing about
        // whether the server has noticed yet.
        Some(_) => Lost::Broken(format!("the connection to the server broke ({error})")),
    }
}
