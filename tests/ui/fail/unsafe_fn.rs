#[pidlock_core::single_instance]
unsafe fn main() {}
