#[pidlock_core::single_instance(exit_code = 300, signals = "loud")]
fn main() {}
