//! A bot-shaped program: a polling loop that logs each second, guarded so
//! that a second copy refuses to start.
//!
//! ```text
//! cargo run --example bot        # in one terminal: polls
//! cargo run --example bot        # in another: the conflict message, exit 1
//! ```
//!
//! Stop it with Ctrl-C: the PID file `data/bot.pid` is removed.

use std::time::Duration;

#[pidlock_core::single_instance(
    path = "data/bot.pid",
    hint = "Or use the /restart command from Telegram."
)]
fn main() {
    let pid = std::process::id();
    for tick in 1.. {
        // Where a real bot would call getUpdates.
        println!("bot {pid}: polling for updates (tick {tick})");
        std::thread::sleep(Duration::from_secs(1));
    }
}
