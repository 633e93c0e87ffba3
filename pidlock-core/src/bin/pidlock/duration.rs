//! Durations as the command line writes them: `--timeout 500ms|10s|5m|1h`
//! read and written back in the same grammar, and a process's age.

use std::time::Duration;

const UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// "500ms", "10s", "5m", "1h": a whole number and one unit, the grammar of
/// the attribute's `timeout`.
pub(crate) fn parse(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let (_, millis) = UNITS.iter().find(|(name, _)| *name == unit)?;
    number.checked_mul(*millis).map(Duration::from_millis)
}

/// The inverse of [`parse`]: the largest unit that states `duration`
/// exactly, so a message repeats the value the user typed.
pub(crate) fn format(duration: Duration) -> String {
    let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let (unit, size) = UNITS
        .iter()
        .find(|(_, size)| millis.is_multiple_of(*size) && millis != 0)
        .unwrap_or(&("ms", 1));
    format!("{}{unit}", millis / size)
}

/// "42s", "3m 12s", "5h 2m", "12d 3h": how long a process has run, to the
/// two largest units (an uptime of days in minutes would not read).
pub(crate) fn age(duration: Duration) -> String {
    let secs = duration.as_secs();
    let parts = [
        (secs / 86_400, "d"),
        (secs % 86_400 / 3_600, "h"),
        (secs % 3_600 / 60, "m"),
        (secs % 60, "s"),
    ];
    let first = parts.iter().position(|&(n, _)| n > 0).unwrap_or(3);
    parts[first..]
        .iter()
        .take(2)
        .filter(|&&(n, _)| n > 0 || first == 3)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_grammar_parses() {
        assert_eq!(parse("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Some(Duration::from_secs(3_600)));
        assert_eq!(parse("10"), None);
        assert_eq!(parse("s"), None);
        assert_eq!(parse("1.5s"), None);
        assert_eq!(parse("99999999999999999999h"), None);
    }

    #[test]
    fn formatting_repeats_what_was_typed() {
        for typed in ["500ms", "1500ms", "10s", "90s", "5m", "1h", "0ms"] {
            let parsed = parse(typed).expect(typed);
            assert_eq!(format(parsed), typed);
        }
    }

    #[test]
    fn ages_read_to_two_units() {
        assert_eq!(age(Duration::from_secs(0)), "0s");
        assert_eq!(age(Duration::from_secs(42)), "42s");
        assert_eq!(age(Duration::from_secs(192)), "3m 12s");
        assert_eq!(age(Duration::from_secs(180)), "3m");
        assert_eq!(age(Duration::from_secs(5 * 3_600 + 2 * 60 + 7)), "5h 2m");
        assert_eq!(age(Duration::from_secs(12 * 86_400 + 3 * 3_600)), "12d 3h");
        assert_eq!(age(Duration::from_secs(86_400 + 59)), "1d");
    }
}
