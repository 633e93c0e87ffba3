#[pidlock_core::single_instance(exit_code = 256)]
fn main() {}
