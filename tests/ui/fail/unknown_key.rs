#[pidlock_core::single_instance(lockfile = "data/bot.pid")]
fn main() {}
