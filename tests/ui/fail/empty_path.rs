#[pidlock_core::single_instance(path = "")]
fn main() {}
