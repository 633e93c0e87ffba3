//! What the compiler says when the attribute is used: one precise error per
//! misuse (tests/ui/fail, with .stderr snapshots) and every accepted form
//! (tests/ui/pass, compiled and run).

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/fail/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}
