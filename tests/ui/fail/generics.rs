#[pidlock_core::single_instance]
fn main<T>() {}
