const VAR: &str = "BOT_PID_FILE";

#[pidlock_core::single_instance(env = VAR)]
fn main() {}
