//! The hello-world with the attribute (its PID file path comes from the bench).
#[pidlock_core::single_instance(env = "HELLO_PID_FILE")]
fn main() {
    println!("hello");
}
