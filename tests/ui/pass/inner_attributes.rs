//! Inner attributes stay first in `main`'s body.
#[pidlock_core::single_instance(path = "data/inner.pid")]
fn main() {
    #![allow(unused_variables)]
    let unused = 1;
}
