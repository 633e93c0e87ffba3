#[pidlock_core::single_instance]
struct Bot;

fn main() {}
