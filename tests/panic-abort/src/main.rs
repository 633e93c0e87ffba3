//! Panics in a `panic = "abort"` build: no unwinding, no destructors; the
//! process dies of SIGABRT, and pidlock's SIGABRT handler removes the file.

use std::io::Write;

#[pidlock_core::single_instance(env = "PIDLOCK_TEST_PID_FILE")]
fn main() {
    println!("ready");
    std::io::stdout().flush().expect("stdout closed");
    panic!("the program panicked under panic = \"abort\"");
}
