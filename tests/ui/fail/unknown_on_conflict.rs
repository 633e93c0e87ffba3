#[pidlock_core::single_instance(on_conflict = "retry")]
fn main() {}
