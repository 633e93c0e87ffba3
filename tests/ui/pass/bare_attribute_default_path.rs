#[pidlock_core::single_instance]
fn main() {
    println!("running with the default PID file path");
}
