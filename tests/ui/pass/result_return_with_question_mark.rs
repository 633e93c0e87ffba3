use std::error::Error;

#[pidlock_core::single_instance(path = std::env::temp_dir().join("pidlock-ui-result.pid"))]
fn main() -> Result<(), Box<dyn Error>> {
    let port: u16 = "8080".parse()?;
    if port == 0 {
        return Err("port 0".into());
    }
    Ok(())
}
