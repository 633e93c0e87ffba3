//! The same bot as a standby: it waits for the lock instead of refusing,
//! and takes over the moment the running bot exits.
//!
//! ```text
//! cargo run --example bot            # in one terminal: polls
//! cargo run --example bot_standby    # in another: waits, then polls
//! ```
//!
//! Under systemd (`examples/systemd/bot-standby.service`) the waiting
//! standby asks for more start-up time every few seconds, so
//! `TimeoutStartSec=` does not kill it, and `systemctl status` shows whom it
//! waits for.

#[path = "shared/bot_loop.rs"]
mod bot_loop;

#[pidlock_core::single_instance(path = "data/bot.pid", on_conflict = "wait", notify_ready = true)]
fn main() {
    bot_loop::poll_forever();
}
