use pidlock_core::single_instance;

#[single_instance(path = std::env::temp_dir().join("pidlock-ui-imported.pid"))]
fn main() {}
