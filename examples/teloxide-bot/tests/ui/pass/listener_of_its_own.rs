// A program that builds its own update listener keeps teloxide's
// dispatcher, gives the listener the report and stops it on signals itself:
// the README's recipe, as written there.
use std::sync::Arc;

use pidlock_core::InstanceConflictReport;
use pidlock_core::teloxide::UpdateListenerErrors;
use teloxide::prelude::*;
use teloxide::update_listeners::{self, UpdateListener};
use tokio::signal::unix::{SignalKind, signal};

async fn recipe(bot: Bot) -> std::io::Result<()> {
    let handler = Update::filter_message().endpoint(|| async { respond(()) });
    let mut dispatcher = Dispatcher::builder(bot.clone(), handler).build();
    let (mut interrupt, mut terminate) = (
        signal(SignalKind::interrupt())?,
        signal(SignalKind::terminate())?,
    );
    let mut listener = update_listeners::polling_default(bot).await;
    let stop = listener.stop_token();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        stop.stop();
    });
    dispatcher
        .dispatch_with_listener(listener, InstanceConflictReport::handler())
        .await;
    Ok(())
}

// Named, for keeping it in a variable first.
async fn named(bot: Bot) {
    let handler = Update::filter_message().endpoint(|| async { respond(()) });
    let mut dispatcher = Dispatcher::builder(bot.clone(), handler).build();
    let errors: Arc<UpdateListenerErrors> = InstanceConflictReport::handler();
    let listener = update_listeners::Polling::builder(bot).build();
    dispatcher.dispatch_with_listener(listener, errors).await;
}

fn main() {
    let _ = (recipe, named);
}
