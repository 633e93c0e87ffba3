//! The tokio baseline of the start-up bench.
#[tokio::main]
async fn main() {
    println!("hello");
}
