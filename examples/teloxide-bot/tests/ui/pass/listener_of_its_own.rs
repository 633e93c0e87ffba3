// A program that builds its own update listener keeps teloxide's
// dispatcher and gives the listener the report.
use std::sync::Arc;

use pidlock_core::InstanceConflictReport;
use pidlock_core::teloxide::UpdateListenerErrors;
use teloxide::prelude::*;
use teloxide::update_listeners::Polling;

async fn run(bot: Bot) {
    let handler = Update::filter_message().endpoint(|| async { respond(()) });
    let mut dispatcher = Dispatcher::builder(bot.clone(), handler).build();
    let listener = Polling::builder(bot.clone()).build();
    dispatcher
        .dispatch_with_listener(listener, InstanceConflictReport::handler())
        .await;
    // Named, for keeping it in a variable first.
    let errors: Arc<UpdateListenerErrors> = InstanceConflictReport::handler();
    let listener = Polling::builder(bot).build();
    dispatcher.dispatch_with_listener(listener, errors).await;
}

fn main() {
    let _ = run;
}
