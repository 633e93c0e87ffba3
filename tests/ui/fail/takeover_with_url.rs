#[pidlock_core::single_instance(url = "redis://127.0.0.1/1", key = "my-bot", on_conflict = "takeover")]
fn main() {}
