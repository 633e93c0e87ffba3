#![deny(warnings)]
#![warn(clippy::pedantic)]

//! `async fn main` with the attribute above `#[tokio::main]`.

#[locker::single_instance(crate = "locker", path = "target/pidlock-user-crate-above.pid")]
#[tokio::main]
async fn main() {
    tokio::task::yield_now().await;
    println!("user crate ran");
}
