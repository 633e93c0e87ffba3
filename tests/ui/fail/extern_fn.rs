#[pidlock_core::single_instance]
extern "C" fn main() {}
