#![deny(warnings)]
#![warn(clippy::pedantic)]

//! `async fn main` with the attribute below `#[tokio::main]`.

#[tokio::main]
#[locker::single_instance(crate = "locker", path = "target/pidlock-user-crate-below.pid")]
async fn main() {
    tokio::task::yield_now().await;
    println!("user crate ran");
}
