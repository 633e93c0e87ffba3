#[pidlock_core::single_instance(path = "data/bot.pid")]
fn main() {
    let token = std::env::var("TELOXIDE_TOKEN")?;
    let _ = token;
}
