// A bot written as teloxide's examples write one (shared state passed as a
// dependency, teloxide's Ctrl-C handler asked for), with the two lines that
// make it a single instance: the attribute, and pidlock's `Dispatcher`.
// Compiled and not run: it would poll Telegram.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use teloxide::prelude::*;

mod bot {
    use super::*;

    #[pidlock_core::single_instance(path = "data/bot.pid")]
    #[tokio::main]
    pub async fn main() {
        let bot = Bot::from_env();
        let total = Arc::new(AtomicU64::new(0));
        let handler = Update::filter_message().endpoint(
            |bot: Bot, total: Arc<AtomicU64>, msg: Message| async move {
                let before = total.fetch_add(1, Ordering::Relaxed);
                bot.send_message(msg.chat.id, format!("{before} so far")).await?;
                respond(())
            },
        );
        pidlock_core::teloxide::Dispatcher::builder(bot, handler)
            .dependencies(dptree::deps![total])
            .enable_ctrlc_handler()
            .build()
            .dispatch()
            .await;
    }
}

fn main() {
    let _ = bot::main;
}
