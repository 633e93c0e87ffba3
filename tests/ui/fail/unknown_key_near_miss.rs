#[pidlock_core::single_instance(pth = "data/bot.pid")]
fn main() {}
