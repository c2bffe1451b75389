//! Cursors: a position in the event log. Positions are handed out from 1 without gaps, so a cursor
//! is the decimal position of the last event seen and "resume after it" is exact.

/// The cursor of position `p` (0 is "before the first event").
pub fn format(p: u64) -> String {
    p.to_string()
}

/// Reads a cursor; `head` is the newest position, and a cursor beyond it is refused (it comes
/// from another log, or from before this log was reset).
pub fn parse(s: &str, head: u64) -> Result<u64, String> {
    let p: u64 =
        s.trim().parse().map_err(|_| format!("{s:?} is not a cursor (a decimal position from a previous response)"))?;
    if p > head {
        return Err(format!(
            "cursor {p} is beyond the end of the log (newest position is {head}); it is not from this notifier's log"
        ));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_future_ones_are_refused() {
        assert_eq!(parse(&format(42), 100), Ok(42));
        assert_eq!(parse("0", 0), Ok(0));
        assert!(parse("101", 100).unwrap_err().contains("beyond the end"));
        assert!(parse("abc", 100).unwrap_err().contains("not a cursor"));
        assert!(parse("-1", 100).is_err());
    }
}
