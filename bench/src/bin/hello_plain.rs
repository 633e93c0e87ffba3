//! The baseline of the start-up bench: a release hello-world.
fn main() {
    println!("hello");
}
