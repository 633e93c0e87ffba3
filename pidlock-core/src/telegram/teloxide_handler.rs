//! [`InstanceConflictReport`] as a teloxide error handler.

use std::fmt::Display;
use std::future::{Future, ready};
use std::pin::Pin;
use std::sync::Arc;

use teloxide::error_handlers::ErrorHandler;

use super::InstanceConflictReport;
use crate::messages::{self, Level};

/// The update listener's errors: Telegram's "another poller" conflict gets
/// the INSTANCE CONFLICT report (once in full, then a one-line reminder);
/// any other error is written as an ERROR line, as teloxide's
/// `LoggingErrorHandler` would.
///
/// ```no_run
/// # use teloxide::prelude::*;
/// # async fn run(bot: Bot, mut dispatcher: Dispatcher<Bot, teloxide::RequestError, teloxide::dispatching::DefaultKey>) {
/// use pidlock_core::InstanceConflictReport;
///
/// let listener = teloxide::update_listeners::polling_default(bot).await;
/// dispatcher
///     .dispatch_with_listener(listener, InstanceConflictReport::handler())
///     .await;
/// # }
/// ```
impl<E: Display + Send + 'static> ErrorHandler<E> for InstanceConflictReport {
    fn handle_error(self: Arc<Self>, error: E) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let text = error.to_string();
        if !self.check(&text) {
            messages::emit(Level::Error, &format!("polling: {text}"));
        }
        Box::pin(ready(()))
    }
}

impl InstanceConflictReport {
    /// A new report, shared the way teloxide takes its error handlers.
    #[must_use]
    pub fn handler() -> Arc<Self> {
        Arc::new(Self::new())
    }
}
