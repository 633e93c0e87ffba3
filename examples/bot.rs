//! A bot-shaped program: a polling loop that logs each second, guarded so
//! that a second copy refuses to start.
//!
//! ```text
//! cargo run --example bot        # in one terminal: polls
//! cargo run --example bot        # in another: the conflict message, exit 1
//! ```
//!
//! Stop it with Ctrl-C: the PID file `data/bot.pid` is removed. Under
//! systemd (`examples/systemd/bot.service`) it reports the lock in
//! `systemctl status` and is ready (`READY=1`) once it holds the lock.

#[path = "shared/bot_loop.rs"]
mod bot_loop;

#[pidlock_core::single_instance(
    path = "data/bot.pid",
    notify_ready = true,
    hint = "Or stop it with: pidlock stop data/bot.pid"
)]
fn main() {
    bot_loop::poll_forever();
}
