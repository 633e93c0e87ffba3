#![deny(warnings)]

/// The bot: its doc comment stays on `main`.
#[pidlock_core::single_instance(path = std::env::temp_dir().join("pidlock-ui-attrs.pid"))]
#[allow(unused_variables)]
#[cfg_attr(all(), inline(never))]
fn main() {
    let unused = 1;
}
