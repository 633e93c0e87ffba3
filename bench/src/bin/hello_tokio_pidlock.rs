//! The tokio hello-world with the attribute.
#[pidlock_core::single_instance(env = "HELLO_PID_FILE")]
#[tokio::main]
async fn main() {
    println!("hello");
}
