#[tokio::main]
#[pidlock_core::single_instance(path = std::env::temp_dir().join("pidlock-ui-tokio-above.pid"))]
async fn main() {
    tokio::task::yield_now().await;
}
