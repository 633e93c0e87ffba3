//! The update listener's error handler: where teloxide hands Telegram's 409.

use std::fmt::{self, Debug, Display};
use std::future::{Future, ready};
use std::pin::Pin;
use std::sync::Arc;

use teloxide::error_handlers::{ErrorHandler, LoggingErrorHandler};

use super::{InstanceConflictReport, ListenerErrorHandler, sealed};

/// A teloxide update listener's error handler: Telegram's "another poller"
/// conflict gets the INSTANCE CONFLICT report (once in full, then a line per
/// 409); any other error is logged as teloxide's own `dispatch()` logs it
/// (`log::error!`, "An error from the update listener").
///
/// Made by [`InstanceConflictReport::handler`]; the bots that start from
/// [`Dispatcher`](super::teloxide::Dispatcher) have one already.
///
/// ```no_run
/// # use teloxide::prelude::*;
/// # async fn run(bot: Bot, mut dispatcher: Dispatcher<Bot, teloxide::RequestError, teloxide::dispatching::DefaultKey>) {
/// use std::sync::Arc;
/// use pidlock_core::InstanceConflictReport;
/// use pidlock_core::teloxide::UpdateListenerErrors;
///
/// let errors: Arc<UpdateListenerErrors> = InstanceConflictReport::handler();
/// let listener = teloxide::update_listeners::polling_default(bot).await;
/// dispatcher.dispatch_with_listener(listener, errors).await;
/// # }
/// ```
pub struct UpdateListenerErrors {
    report: InstanceConflictReport,
    others: Arc<LoggingErrorHandler>,
}

impl UpdateListenerErrors {
    pub(crate) fn new() -> Self {
        Self {
            report: InstanceConflictReport::new(),
            // The words teloxide's `Dispatcher::dispatch` logs them with.
            others: LoggingErrorHandler::with_custom_text("An error from the update listener"),
        }
    }
}

impl Debug for UpdateListenerErrors {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("UpdateListenerErrors")
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

impl<E: Debug + Display + Send + 'static> ErrorHandler<E> for UpdateListenerErrors {
    fn handle_error(self: Arc<Self>, error: E) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        if self.report.check(&error.to_string()) {
            return Box::pin(ready(()));
        }
        Arc::clone(&self.others).handle_error(error)
    }
}

impl sealed::Sealed for Arc<UpdateListenerErrors> {}

impl ListenerErrorHandler for Arc<UpdateListenerErrors> {
    fn new_handler() -> Self {
        Arc::new(UpdateListenerErrors::new())
    }
}
