#[pidlock_core::single_instance(path = "data/bot.pid")]
async fn main() {}
