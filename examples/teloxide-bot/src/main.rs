//! A teloxide echo bot that refuses to run twice.
//!
//! ```text
//! TELOXIDE_TOKEN=123:ABC cargo run -p teloxide-bot
//! ```
//!
//! It is an ordinary teloxide bot plus two lines: the attribute above
//! `main`, and `pidlock_core::teloxide::Dispatcher::builder` where teloxide's
//! examples write `Dispatcher::builder`. With them:
//!
//! - A second copy on the same host exits at once with the conflict message
//!   instead of fighting the first over `getUpdates` (Telegram's 409).
//! - Ctrl-C and SIGTERM (`systemctl stop`, `docker stop`, `pidlock stop`)
//!   stop polling cleanly, under load too: the updates already fetched are
//!   handled and confirmed to Telegram, and the PID file is removed when
//!   `main` returns.
//! - If Telegram still reports another poller, the INSTANCE CONFLICT report
//!   says what that means and where to look.
//! - `/restart` re-executes the bot without ever letting go of the lock,
//!   after the `/restart` update is confirmed (so it is not delivered
//!   again): its handler takes a `Restart` and calls `request()`.
//!
//! `TELEGRAM_API_URL` points the bot at another Bot API server (a local one,
//! or the test double); `BOT_PID_FILE` moves the lock from `data/bot.pid`.

use pidlock_core::teloxide::Restart;
use teloxide::prelude::*;
use teloxide::utils::command::BotCommands;

#[derive(BotCommands, Clone)]
#[command(rename_rule = "lowercase", description = "Commands:")]
enum Command {
    #[command(description = "restart the bot without letting another instance in")]
    Restart,
}

#[pidlock_core::single_instance(
    path = "data/bot.pid",
    env = "BOT_PID_FILE",
    hint = "Or use the /restart command from Telegram."
)]
#[tokio::main]
async fn main() {
    if std::env::var_os("TELOXIDE_TOKEN").is_none() {
        eprintln!("ERROR - set TELOXIDE_TOKEN to the bot's token (from @BotFather)");
        std::process::exit(2);
    }
    let mut bot = Bot::from_env();
    if let Ok(url) = std::env::var("TELEGRAM_API_URL") {
        match url.parse() {
            Ok(url) => bot = bot.set_api_url(url),
            Err(error) => {
                eprintln!("ERROR - TELEGRAM_API_URL is not a URL ({error}): {url}");
                std::process::exit(2);
            }
        }
    }

    let handler = Update::filter_message()
        .branch(
            dptree::entry()
                .filter_command::<Command>()
                .endpoint(on_command),
        )
        .branch(dptree::endpoint(echo));

    pidlock_core::teloxide::Dispatcher::builder(bot, handler)
        .enable_ctrlc_handler()
        .build()
        .dispatch()
        .await;
}

async fn echo(bot: Bot, message: Message) -> ResponseResult<()> {
    if let Some(text) = message.text() {
        bot.send_message(message.chat.id, text).await?;
    }
    Ok(())
}

async fn on_command(
    bot: Bot,
    message: Message,
    command: Command,
    restart: Restart,
) -> ResponseResult<()> {
    match command {
        Command::Restart => {
            bot.send_message(message.chat.id, "Restarting...").await?;
            restart.request();
        }
    }
    Ok(())
}
