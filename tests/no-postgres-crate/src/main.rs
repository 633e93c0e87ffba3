#[pidlock_core::single_instance(url = "postgres://db.internal/bots", key = "my-bot")]
fn main() {}
