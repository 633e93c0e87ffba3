// The 409 report handed to teloxide's dispatcher as the handlers' error
// hook, where Telegram's 409 never arrives: a compile error that says
// where it goes instead.
use pidlock_core::InstanceConflictReport;
use teloxide::prelude::*;

#[tokio::main]
async fn main() {
    let bot = Bot::new("123456:TOKEN");
    let handler = Update::filter_message().endpoint(|| async { respond(()) });
    Dispatcher::builder(bot, handler)
        .error_handler(InstanceConflictReport::handler())
        .build()
        .dispatch()
        .await;
}
