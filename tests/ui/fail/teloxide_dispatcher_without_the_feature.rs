// pidlock's teloxide dispatcher without pidlock-core's `teloxide` feature
// (this crate does not turn it on): the error names the feature. The
// arguments stand for a bot and its handlers.
#[pidlock_core::single_instance(path = "data/bot.pid")]
fn main() {
    pidlock_core::teloxide::Dispatcher::builder((), ());
}
