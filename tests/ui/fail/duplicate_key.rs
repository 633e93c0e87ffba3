#[pidlock_core::single_instance(path = "a.pid", path = "b.pid")]
fn main() {}
