#[pidlock_core::single_instance(key = "my-bot")]
fn main() {}
