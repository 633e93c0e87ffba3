// Every method of teloxide's builder on pidlock's, a handler error type of
// the program's own, the restart handle taken by a handler and from the
// dispatcher, and `try_dispatch`. Compiled and not run.
use pidlock_core::teloxide::{Dispatcher, Restart};
use teloxide::error_handlers::LoggingErrorHandler;
use teloxide::prelude::*;

type HandlerResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

async fn restart_command(bot: Bot, msg: Message, restart: Restart) -> HandlerResult {
    bot.send_message(msg.chat.id, "Restarting...").await?;
    restart.request();
    Ok(())
}

async fn run() -> Result<(), teloxide::RequestError> {
    let bot = Bot::new("123456:TOKEN");
    let mut dispatcher = Dispatcher::builder(
        bot,
        Update::filter_message().endpoint(restart_command),
    )
    .dependencies(dptree::deps![String::from("state")])
    .default_handler(|_update| async {})
    .error_handler(LoggingErrorHandler::with_custom_text("A handler failed"))
    .worker_queue_size(16)
    .distribution_function(|update| update.from().map(|user| user.id))
    .enable_ctrlc_handler()
    .build();
    let restart: Restart = dispatcher.restart_handle();
    assert!(!restart.is_requested());
    dispatcher.try_dispatch().await
}

fn main() {
    let _ = run;
}
