const PID_FILE: &str = "target/pidlock-ui-every-key.pid";

#[pidlock_core::single_instance(
    path = PID_FILE,
    env = "PIDLOCK_UI_PID_FILE",
    on_conflict = "exit",
    exit_code = 75,
    signals = "none",
    hint = "Or use the /restart command from Telegram.",
    crate = "pidlock_core",
)]
fn main() {}
