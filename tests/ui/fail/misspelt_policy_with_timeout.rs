#[pidlock_core::single_instance(on_conflict = "wiat", timeout = "5s")]
fn main() {}
