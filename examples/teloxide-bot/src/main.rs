//! A teloxide echo bot that refuses to run twice.
//!
//! ```text
//! TELOXIDE_TOKEN=123:ABC cargo run -p teloxide-bot
//! ```
//!
//! - A second copy on the same host exits at once with the conflict message
//!   instead of fighting the first over `getUpdates` (Telegram's 409).
//! - `/restart` re-executes the bot without ever letting go of the lock, after
//!   teloxide has confirmed the updates it handled (so `/restart` is not
//!   delivered again).
//! - Ctrl-C, and SIGTERM too (`systemctl stop`, `docker stop`, `pidlock
//!   stop`), run teloxide's graceful shutdown; the PID file is removed when
//!   `main` returns.
//! - If Telegram still reports another poller, the error handler explains
//!   what that means (INSTANCE CONFLICT).
//!
//! `TELEGRAM_API_URL` points the bot at another Bot API server (a local one,
//! or the test double); `BOT_PID_FILE` moves the lock from `data/bot.pid`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use pidlock_core::InstanceConflictReport;
use teloxide::prelude::*;
use teloxide::update_listeners;
use teloxide::utils::command::BotCommands;
use tokio::sync::Notify;

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

    let restart = Arc::new(Notify::new());
    let handler = Update::filter_message()
        .branch(
            dptree::entry()
                .filter_command::<Command>()
                .endpoint(on_command),
        )
        .branch(dptree::endpoint(echo));
    let mut dispatcher = Dispatcher::builder(bot.clone(), handler)
        .dependencies(dptree::deps![Arc::clone(&restart)])
        .enable_ctrlc_handler()
        .build();

    // `/restart` stops the dispatcher first: polling then confirms the
    // handled updates to Telegram, and only then is the program re-executed.
    let restart_requested = Arc::new(AtomicBool::new(false));
    let shutdown = dispatcher.shutdown_token();
    let requested = Arc::clone(&restart_requested);
    tokio::spawn(async move {
        restart.notified().await;
        requested.store(true, Ordering::SeqCst);
        if let Ok(stopped) = shutdown.shutdown() {
            stopped.await;
        }
    });

    // teloxide shuts down gracefully on Ctrl-C only; supervisors send
    // SIGTERM. The same shutdown runs for both.
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut terminate) => {
            let shutdown = dispatcher.shutdown_token();
            tokio::spawn(async move {
                if terminate.recv().await.is_some()
                    && let Ok(stopped) = shutdown.shutdown()
                {
                    stopped.await;
                }
            });
        }
        Err(error) => eprintln!("WARNING - SIGTERM will not shut down gracefully: {error}"),
    }

    let listener = update_listeners::polling_default(bot).await;
    // Telegram's 409 gets the INSTANCE CONFLICT report; other errors a line.
    dispatcher
        .dispatch_with_listener(listener, InstanceConflictReport::handler())
        .await;

    if restart_requested.load(Ordering::SeqCst) {
        // Returns only if the exec failed; the lock is still held then.
        let error = pidlock_core::restart();
        eprintln!("ERROR - restart failed: {error}");
        std::process::exit(1);
    }
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
    restart: Arc<Notify>,
) -> ResponseResult<()> {
    match command {
        Command::Restart => {
            bot.send_message(message.chat.id, "Restarting...").await?;
            restart.notify_one();
        }
    }
    Ok(())
}
