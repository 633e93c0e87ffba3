#[pidlock_core::single_instance]
fn main(token: String) {
    let _ = token;
}
