#[pidlock_core::single_instance(url = "postgres://localhost/bot")]
fn main() {}
