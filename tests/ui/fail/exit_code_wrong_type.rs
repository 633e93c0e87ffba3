#[pidlock_core::single_instance(exit_code = "2")]
fn main() {}
