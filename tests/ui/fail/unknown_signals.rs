#[pidlock_core::single_instance(signals = "all")]
fn main() {}
