//! What the compiler says about the teloxide integration: the misuse that
//! used to compile and never report (tests/ui/fail, with .stderr
//! snapshots), and the forms a bot is written in (tests/ui/pass, compiled
//! and run).

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/fail/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}
