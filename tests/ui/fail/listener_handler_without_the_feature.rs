// The report as a teloxide listener's error handler without pidlock-core's
// `teloxide` feature: the error names the feature. `dispatch_with_listener`
// has the shape of teloxide's, which takes the handler as `Arc<Eh>`.
use std::sync::Arc;

use pidlock_core::InstanceConflictReport;

fn dispatch_with_listener<Eh: Send + Sync>(_listener: (), _handler: Arc<Eh>) {}

fn main() {
    dispatch_with_listener((), InstanceConflictReport::handler());
}
