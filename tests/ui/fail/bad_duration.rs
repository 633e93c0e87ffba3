#[pidlock_core::single_instance(timeout = "5 minutes")]
fn main() {}
