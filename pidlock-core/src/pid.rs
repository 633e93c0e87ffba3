//! What a PID file says: a process ID, or bytes that are not one.

use std::fmt;

/// A process ID as the kernel hands it out: always positive.
///
/// ```
/// use pidlock_core::Pid;
///
/// let me = Pid::current();
/// assert!(me.get() > 0);
/// assert_eq!(me.to_string(), me.get().to_string());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid(i32);

impl Pid {
    /// The PID of the calling process.
    #[must_use]
    pub fn current() -> Self {
        Self(nix::unistd::getpid().as_raw())
    }

    /// Wraps a raw PID; `None` unless it is positive (0 and negatives name
    /// process groups to `kill`, never a single process).
    ///
    /// ```
    /// use pidlock_core::Pid;
    ///
    /// assert_eq!(Pid::new(42).map(Pid::get), Some(42));
    /// assert_eq!(Pid::new(0), None);
    /// assert_eq!(Pid::new(-1), None);
    /// ```
    #[must_use]
    pub fn new(raw: i32) -> Option<Self> {
        (raw > 0).then_some(Self(raw))
    }

    /// The raw number.
    #[must_use]
    pub fn get(self) -> i32 {
        self.0
    }

    pub(crate) fn as_nix(self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.0)
    }

    /// Whether a process with this PID exists. `EPERM` (it exists but belongs
    /// to someone else) counts as alive: failing closed, never open.
    pub(crate) fn is_alive(self) -> bool {
        !matches!(
            nix::sys::signal::kill(self.as_nix(), None),
            Err(nix::errno::Errno::ESRCH)
        )
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The text written into a PID file for `pid`: the number and a newline, at
/// the start of `buf` (at least 11 bytes long).
pub(crate) fn render(pid: Pid, buf: &mut [u8]) -> &[u8] {
    // i32::MAX has 10 digits; with '\n' that is 11 bytes. Formatting by hand
    // keeps the hot path free of allocation.
    let mut digits = [0u8; 10];
    let mut n = pid.0.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for (slot, digit) in buf.iter_mut().zip(digits[..len].iter().rev()) {
        *slot = *digit;
    }
    buf[len] = b'\n';
    &buf[..=len]
}

/// The most of a PID file we ever read: a PID is at most 10 digits, so anything
/// longer than this is corrupted whatever follows.
pub(crate) const READ_LIMIT: usize = 64;

/// How many bytes of corrupted content a message quotes.
const QUOTE_LIMIT: usize = 32;

/// What a PID file held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Contents {
    /// A well-formed PID, optionally surrounded by ASCII whitespace.
    Pid(Pid),
    /// Anything else, including an empty or whitespace-only file.
    Corrupted(Quote),
}

impl Contents {
    /// Interprets the first bytes of a file whose whole size is `file_len`.
    pub(crate) fn parse(head: &[u8], file_len: u64) -> Self {
        let complete = head.len() as u64 >= file_len;
        let text = head.trim_ascii();
        let pid = (complete && !text.is_empty() && text.len() <= 10)
            .then(|| std::str::from_utf8(text).ok())
            .flatten()
            .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<i32>().ok())
            .and_then(Pid::new);
        match pid {
            Some(pid) => Self::Pid(pid),
            None => Self::Corrupted(Quote::new(head, file_len)),
        }
    }
}

/// A short, escaped excerpt of a file's bytes, safe to put in a message
/// whatever the file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Quote {
    head: Vec<u8>,
    file_len: u64,
}

impl Quote {
    fn new(head: &[u8], file_len: u64) -> Self {
        let shown = head.len().min(QUOTE_LIMIT);
        Self {
            head: head[..shown].to_vec(),
            file_len,
        }
    }
}

impl fmt::Display for Quote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.head.escape_ascii())?;
        if self.file_len > self.head.len() as u64 {
            write!(f, "... ({} bytes)", self.file_len)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Contents {
        Contents::parse(bytes, bytes.len() as u64)
    }

    #[test]
    fn render_writes_digits_and_newline() {
        let mut buf = [0; 12];
        assert_eq!(render(Pid(1), &mut buf), b"1\n");
        assert_eq!(render(Pid(12345), &mut buf), b"12345\n");
        assert_eq!(render(Pid(i32::MAX), &mut buf), b"2147483647\n");
    }

    #[test]
    fn a_pid_with_or_without_whitespace_parses() {
        assert_eq!(parse(b"12345\n"), Contents::Pid(Pid(12345)));
        assert_eq!(parse(b"  7 \n"), Contents::Pid(Pid(7)));
    }

    #[test]
    fn anything_but_a_positive_pid_is_corrupted() {
        for bad in [
            &b""[..],
            b" \n\t",
            b"abc",
            b"-1",
            b"0",
            b"+5",
            b"99999999999999999999",
            b"2147483648",
            b"12 34",
            b"\xff\x00\x01",
        ] {
            assert!(
                matches!(parse(bad), Contents::Corrupted(_)),
                "{bad:?} should be corrupted"
            );
        }
    }

    #[test]
    fn a_pid_followed_by_more_than_was_read_is_corrupted() {
        assert!(matches!(
            Contents::parse(b"123\n", 1 << 20),
            Contents::Corrupted(_)
        ));
    }

    #[test]
    fn quotes_are_short_and_escaped() {
        let junk = vec![b'J'; READ_LIMIT];
        let Contents::Corrupted(quote) = Contents::parse(&junk, 1 << 20) else {
            panic!("junk parsed as a PID");
        };
        let shown = quote.to_string();
        assert_eq!(shown, format!("\"{}\"... (1048576 bytes)", "J".repeat(32)));
        let Contents::Corrupted(binary) = parse(b"\x00\xffa\n") else {
            panic!("binary parsed as a PID");
        };
        assert_eq!(binary.to_string(), r#""\x00\xffa\n""#);
    }
}
