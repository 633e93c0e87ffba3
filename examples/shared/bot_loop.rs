//! The bot's work, shared by `bot` and `bot_standby`: a polling loop that
//! logs each second.

use std::time::Duration;

pub(crate) fn poll_forever() -> ! {
    let pid = std::process::id();
    for tick in 1.. {
        // Where a real bot would call getUpdates.
        println!("bot {pid}: polling for updates (tick {tick})");
        std::thread::sleep(Duration::from_secs(1));
    }
    unreachable!("the loop above never ends")
}
