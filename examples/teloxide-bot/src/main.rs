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
//!   stop`), stop polling gracefully (the handled updates are confirmed to
//!   Telegram); the PID file is removed when `main` returns.
//! - If Telegram still reports another poller, the error handler explains
//!   what that means (INSTANCE CONFLICT).
//!
//! `TELEGRAM_API_URL` points the bot at another Bot API server (a local one,
//! or the test double); `BOT_PID_FILE` moves the lock from `data/bot.pid`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use pidlock_core::InstanceConflictReport;
use teloxide::prelude::*;
use teloxide::update_listeners::{self, UpdateListener};
use teloxide::utils::command::BotCommands;
use tokio::signal::unix::{SignalKind, signal};
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
        .build();

    // Ctrl-C and SIGTERM (`systemctl stop`, `docker stop`, `pidlock stop`)
    // are registered now, before polling starts, so a signal that comes the
    // moment the bot is up is not missed; until here pidlock's own handler
    // removes the PID file and the bot dies of the signal.
    let (mut interrupt, mut terminate) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(interrupt), Ok(terminate)) => (interrupt, terminate),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("ERROR - cannot listen for Ctrl-C and SIGTERM: {error}");
            std::process::exit(1);
        }
    };

    // Every way to stop goes through the update listener's stop token: the
    // listener drops its in-flight poll, confirms the updates it handled to
    // Telegram (so `/restart` is not delivered again), and ends; the
    // dispatcher then waits for its handlers and returns. (teloxide's own
    // Ctrl-C handler and `ShutdownToken` can miss the request when it comes
    // while the dispatcher is between two updates, and then never stop.)
    let mut listener = update_listeners::polling_default(bot).await;
    let stop = listener.stop_token();
    let restart_requested = Arc::new(AtomicBool::new(false));
    let requested = Arc::clone(&restart_requested);
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
            () = restart.notified() => requested.store(true, Ordering::SeqCst),
        }
        stop.stop();
    });

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
