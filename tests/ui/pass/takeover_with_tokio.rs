#[pidlock_core::single_instance(path = std::env::temp_dir().join("pidlock-ui-takeover.pid"), on_conflict = "takeover")]
#[tokio::main]
async fn main() {}
