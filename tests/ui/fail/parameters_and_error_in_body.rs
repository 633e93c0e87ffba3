#[pidlock_core::single_instance(path = "data/bot.pid")]
fn main(token: String) {
    let polls: u32 = token;
    let _ = polls;
}
