#[pidlock_core::single_instance(path = std::env::temp_dir().join("pidlock-ui-tokio-ct.pid"))]
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), std::num::ParseIntError> {
    let n: u8 = "7".parse()?;
    tokio::task::yield_now().await;
    assert_eq!(n, 7);
    Ok(())
}
