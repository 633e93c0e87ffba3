#[pidlock_core::single_instance]
const fn main() {}
