// The same mistake on pidlock's dispatcher, which reports the 409 already.
use pidlock_core::InstanceConflictReport;
use teloxide::prelude::*;

#[tokio::main]
async fn main() {
    let bot = Bot::new("123456:TOKEN");
    let handler = Update::filter_message().endpoint(|| async { respond(()) });
    pidlock_core::teloxide::Dispatcher::builder(bot, handler)
        .error_handler(InstanceConflictReport::handler())
        .build()
        .dispatch()
        .await;
}
