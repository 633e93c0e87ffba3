#[pidlock_core::single_instance(path = "data/bot.pid")]
fn main() {
    let polls: u32 = "many";
    let _ = polls;
}
