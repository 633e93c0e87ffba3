//! Exhaustive models of pidlock's lock protocols, checked with
//! [stateright](https://docs.rs/stateright) (DESIGN.md, "What is proven").
//!
//! - [`one_host`]: the PID file with `flock` (DESIGN.md, "The lock protocol
//!   (one host)", "Exit paths", "Processes and places"): racing
//!   instances, crashes, `fork`, `daemonized()`, `restart()`, an outside
//!   `rm`, `pidlock stop` and takeover, PID reuse.
//! - [`lease`]: the PostgreSQL lease (DESIGN.md, "Across hosts") in
//!   discrete time with lost and delayed messages.
//! - [`redis_lease`]: the Redis lease in discrete time with lost, delayed
//!   and duplicated messages, the key's TTL and a paused holder.
//! - [`checking`]: running the checker to the end, for the tests.
//!
//! The tests in `model/tests/` run the checker to completion and print how
//! many states it visited; they also check that each safeguard matters (a
//! mutation of the model without it yields a counterexample) and that the
//! model's steps are the real library's system calls, in order (strace).

pub mod checking;
pub mod lease;
pub mod one_host;
pub mod redis_lease;
