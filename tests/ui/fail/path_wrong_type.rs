#[pidlock_core::single_instance(path = 42)]
fn main() {}
