//! Maintenance windows as Argo CD writes sync windows: a five-field cron `schedule` that opens the
//! window, a `duration` it stays open, and an IANA `timeZone` the schedule is read in. A window is
//! open at `t` when some start `s` of the schedule has `s <= t < s + duration`.

use std::{fmt, time::Duration};

use jiff::{SignedDuration, Timestamp, ToSpan, civil::DateTime, tz::TimeZone};

/// How far ahead the next opening is looked for; a schedule that does not fire within it
/// (`0 0 30 2 *`) is reported as never opening.
const HORIZON_DAYS: i64 = 5 * 366;

/// One cron field: the allowed values as a bit set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Field {
    bits: u64,
    /// Written as `*` (matters for the day-of-month / day-of-week rule).
    any: bool,
}

impl Field {
    fn has(self, v: u32) -> bool {
        self.bits & (1 << v) != 0
    }
}

/// A parsed five-field cron expression (minute hour day-of-month month day-of-week).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minute: Field,
    hour: Field,
    day: Field,
    month: Field,
    weekday: Field,
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(text: &str, min: u32, max: u32, names: &[&str], name_base: u32) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = names.iter().position(|n| *n == lower) {
        return Ok(name_base + i as u32);
    }
    let v: u32 = text.parse().map_err(|_| format!("{text:?} is not a number"))?;
    if v < min || v > max {
        return Err(format!("{v} is not in {min}..={max}"));
    }
    Ok(v)
}

fn field(text: &str, what: &str, min: u32, max: u32, names: &[&str], name_base: u32) -> Result<Field, String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| format!("{what}: step {s:?} is not a number"))?;
                if step == 0 {
                    return Err(format!("{what}: step must be at least 1"));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let lo = value(a, min, max, names, name_base).map_err(|e| format!("{what}: {e}"))?;
            let hi = value(b, min, max, names, name_base).map_err(|e| format!("{what}: {e}"))?;
            if lo > hi {
                return Err(format!("{what}: range {range:?} runs backwards"));
            }
            (lo, hi)
        } else {
            let v = value(range, min, max, names, name_base).map_err(|e| format!("{what}: {e}"))?;
            // `5/15` means from 5 to the end in steps of 15, as in cron.
            (v, if step > 1 { max } else { v })
        };
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(Field { bits, any: text == "*" })
}

impl Schedule {
    /// Parses `minute hour day-of-month month day-of-week`; numbers, `*`, ranges, lists, steps,
    /// and month and day names (`jan`, `mon`); day-of-week 0 and 7 are Sunday.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(format!(
                "{text:?} has {} fields; a schedule has five (minute hour day-of-month month day-of-week)",
                parts.len()
            ));
        }
        let mut weekday = field(parts[4], "day-of-week", 0, 7, &DAYS, 0)?;
        if weekday.has(7) {
            weekday.bits = (weekday.bits | 1) & !(1 << 7);
        }
        Ok(Schedule {
            minute: field(parts[0], "minute", 0, 59, &[], 0)?,
            hour: field(parts[1], "hour", 0, 23, &[], 0)?,
            day: field(parts[2], "day-of-month", 1, 31, &[], 0)?,
            month: field(parts[3], "month", 1, 12, &MONTHS, 1)?,
            weekday,
        })
    }

    fn day_matches(&self, dt: DateTime) -> bool {
        let dom = self.day.has(dt.day() as u32);
        let dow = self.weekday.has(dt.weekday().to_sunday_zero_offset() as u32);
        // Cron: when both day fields are restricted, either one matching is enough.
        match (self.day.any, self.weekday.any) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }

    /// The first start strictly after `after`, read in `tz`; `None` within the horizon.
    fn next_start(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let local = after.to_zoned(tz.clone()).datetime();
        // Start at the next whole minute after `after`'s local time.
        let mut dt = local.with().second(0).subsec_nanosecond(0).build().ok()?.checked_add(1.minute()).ok()?;
        let end = local.checked_add(HORIZON_DAYS.days()).ok()?;
        while dt < end {
            if !self.month.has(dt.month() as u32) || !self.day_matches(dt) {
                dt = dt.date().tomorrow().ok()?.to_datetime(jiff::civil::Time::midnight());
                continue;
            }
            if !self.hour.has(dt.hour() as u32) {
                dt = dt.with().minute(0).build().ok()?.checked_add(1.hour()).ok()?;
                continue;
            }
            if self.minute.has(dt.minute() as u32) {
                let at = tz.to_ambiguous_zoned(dt).compatible().ok()?.timestamp();
                if at > after {
                    return Some(at);
                }
            }
            dt = dt.checked_add(1.minute()).ok()?;
        }
        None
    }
}

/// A parsed maintenance window.
#[derive(Clone, Debug)]
pub struct Window {
    schedule: Schedule,
    duration: Duration,
    tz: TimeZone,
    text: String,
}

/// Where `now` stands relative to a set of windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowState {
    /// Inside a window that closes at this Unix time (seconds).
    Open { closes_at: i64 },
    /// Outside every window; the next opens at this Unix time.
    Closed { opens_at: i64 },
    /// No window opens within five years.
    Never,
}

/// The IANA time zone `name` (empty: UTC).
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    if name.is_empty() || name == "UTC" {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name).map_err(|_| format!("{name:?} is not a known IANA time zone"))
}

impl Window {
    /// Parses a window; the error names what is wrong.
    pub fn new(schedule: &str, duration: Duration, zone: &str) -> Result<Window, String> {
        let tz = time_zone(zone)?;
        if duration.is_zero() {
            return Err("duration must be greater than 0".into());
        }
        Ok(Window {
            schedule: Schedule::parse(schedule)?,
            duration,
            tz,
            text: format!("{schedule} for {} ({})", hopngo_kit::args::format_duration(duration), time_zone_name(zone)),
        })
    }

    fn state(&self, now: Timestamp) -> WindowState {
        let span = SignedDuration::try_from(self.duration).unwrap_or(SignedDuration::MAX);
        let earliest = now.checked_sub(span).unwrap_or(Timestamp::MIN);
        // The first start after `now - duration`: if it is not later than now, we are inside it.
        match self.schedule.next_start(earliest, &self.tz) {
            Some(start) if start <= now => {
                WindowState::Open { closes_at: start.checked_add(span).unwrap_or(Timestamp::MAX).as_second() }
            }
            _ => match self.schedule.next_start(now, &self.tz) {
                Some(start) => WindowState::Closed { opens_at: start.as_second() },
                None => WindowState::Never,
            },
        }
    }
}

fn time_zone_name(tz: &str) -> &str {
    if tz.is_empty() { "UTC" } else { tz }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether any of `windows` is open at Unix time `now_secs`, else when the next one opens.
pub fn window_state(windows: &[Window], now_secs: i64) -> WindowState {
    let now = Timestamp::from_second(now_secs).unwrap_or(Timestamp::UNIX_EPOCH);
    let mut next: Option<i64> = None;
    let mut open: Option<i64> = None;
    for w in windows {
        match w.state(now) {
            WindowState::Open { closes_at } => open = Some(open.map_or(closes_at, |o| o.max(closes_at))),
            WindowState::Closed { opens_at } => next = Some(next.map_or(opens_at, |n| n.min(opens_at))),
            WindowState::Never => {}
        }
    }
    match (open, next) {
        (Some(closes_at), _) => WindowState::Open { closes_at },
        (None, Some(opens_at)) => WindowState::Closed { opens_at },
        (None, None) => WindowState::Never,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        text.parse::<Timestamp>().unwrap().as_second()
    }

    fn w(schedule: &str, hours: u64, tz: &str) -> Window {
        Window::new(schedule, Duration::from_secs(hours * 3600), tz).unwrap()
    }

    #[test]
    fn weekday_nights_in_utc() {
        // 22:00 Monday to Friday for 4 h; 2026-12-01 is a Tuesday.
        let win = [w("0 22 * * 1-5", 4, "UTC")];
        assert_eq!(
            window_state(&win, at("2026-12-01T21:59:00Z")),
            WindowState::Closed { opens_at: at("2026-12-01T22:00:00Z") }
        );
        assert_eq!(
            window_state(&win, at("2026-12-01T22:00:00Z")),
            WindowState::Open { closes_at: at("2026-12-02T02:00:00Z") }
        );
        // Still open after midnight (the window started on a weekday).
        assert_eq!(
            window_state(&win, at("2026-12-02T01:59:59Z")),
            WindowState::Open { closes_at: at("2026-12-02T02:00:00Z") }
        );
        assert_eq!(
            window_state(&win, at("2026-12-02T02:00:00Z")),
            WindowState::Closed { opens_at: at("2026-12-02T22:00:00Z") }
        );
        // Friday night's window, then nothing until Monday 22:00.
        assert_eq!(
            window_state(&win, at("2026-12-05T03:00:00Z")),
            WindowState::Closed { opens_at: at("2026-12-07T22:00:00Z") }
        );
    }

    #[test]
    fn time_zone_and_daylight_saving() {
        // 02:00 Berlin time is 01:00Z in winter and 00:00Z in summer.
        let win = [w("0 2 * * *", 1, "Europe/Berlin")];
        assert_eq!(
            window_state(&win, at("2026-12-01T00:30:00Z")),
            WindowState::Closed { opens_at: at("2026-12-01T01:00:00Z") }
        );
        assert_eq!(
            window_state(&win, at("2026-07-01T00:30:00Z")),
            WindowState::Open { closes_at: at("2026-07-01T01:00:00Z") }
        );
    }

    #[test]
    fn cron_syntax() {
        let s = Schedule::parse("*/15 9-17 * jan,dec mon-fri").unwrap();
        assert!(s.minute.has(0) && s.minute.has(45) && !s.minute.has(50));
        assert!(s.hour.has(9) && s.hour.has(17) && !s.hour.has(18));
        assert!(s.month.has(1) && s.month.has(12) && !s.month.has(6));
        assert!(s.weekday.has(1) && s.weekday.has(5) && !s.weekday.has(0));
        assert!(Schedule::parse("0 0 * * 7").unwrap().weekday.has(0));
        assert!(Schedule::parse("5/20 * * * *").unwrap().minute.has(45));
        for (bad, why) in [
            ("0 22 * *", "five"),
            ("60 * * * *", "minute: 60 is not in 0..=59"),
            ("0 5-3 * * *", "runs backwards"),
            ("*/0 * * * *", "at least 1"),
            ("0 0 * foo *", "month: \"foo\" is not a number"),
        ] {
            let err = Schedule::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(Window::new("0 0 * * *", Duration::from_secs(60), "Mars/Olympus").unwrap_err().contains("time zone"));
    }

    #[test]
    fn day_fields_or_together_when_both_are_set() {
        // The 1st of the month or any Sunday (cron's rule); 2026-12-06 is a Sunday.
        let win = [w("0 0 1 * sun", 1, "UTC")];
        assert_eq!(
            window_state(&win, at("2026-12-02T00:00:00Z")),
            WindowState::Closed { opens_at: at("2026-12-06T00:00:00Z") }
        );
    }

    #[test]
    fn several_windows_and_never() {
        let win = [w("0 22 * * *", 2, "UTC"), w("0 10 * * *", 1, "UTC")];
        assert_eq!(
            window_state(&win, at("2026-12-01T09:00:00Z")),
            WindowState::Closed { opens_at: at("2026-12-01T10:00:00Z") }
        );
        assert_eq!(window_state(&[w("0 0 30 2 *", 1, "UTC")], at("2026-12-01T00:00:00Z")), WindowState::Never);
    }
}
