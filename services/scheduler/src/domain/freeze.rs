//! Freezes: when no new release may start in an environment. Ad-hoc freezes are stored (the
//! store finds those in force); the delivery config's freeze windows recur, and which of them is
//! open at a moment is decided here.

use time::OffsetDateTime;

use super::config::{DeliveryConfig, window};

/// A freeze window of the config that is open at some moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenWindow {
    /// Environment.
    pub environment: String,
    /// The window as written (`0 16 * * 5 for 2d16h (Europe/Berlin)`).
    pub window: String,
    /// Why (empty: none given).
    pub reason: String,
    /// When it closes.
    pub closes_at: OffsetDateTime,
}

impl OpenWindow {
    /// What a release refused by it is told.
    pub fn refusal(&self) -> String {
        let why = if self.reason.is_empty() { String::new() } else { format!(": {}", self.reason) };
        format!("{} is frozen until {} by the window {}{why}", self.environment, rfc3339(self.closes_at), self.window)
    }
}

/// The freeze windows open at `now` in `environment` (every environment: `None`), latest close
/// first.
pub fn open_windows(config: &DeliveryConfig, environment: Option<&str>, now: OffsetDateTime) -> Vec<OpenWindow> {
    let mut open = Vec::new();
    for env in config.environments.iter().filter(|e| environment.is_none_or(|name| e.name == name)) {
        for w in &env.freeze_windows {
            // The config was validated when applied: a window that does not parse is not there.
            let Ok(parsed) = w.parse() else { continue };
            let text = parsed.to_string();
            if let window::WindowState::Open { closes_at } = window::window_state(&[parsed], now.unix_timestamp()) {
                open.push(OpenWindow {
                    environment: env.name.clone(),
                    window: text,
                    reason: w.reason.clone().unwrap_or_default(),
                    closes_at: OffsetDateTime::from_unix_timestamp(closes_at).unwrap_or(now),
                });
            }
        }
    }
    open.sort_by_key(|w| std::cmp::Reverse(w.closes_at));
    open
}

/// A time as RFC 3339, for messages.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "environments:
  - name: staging
  - name: production
    freezeWindows:
      - {schedule: \"0 16 * * 5\", duration: 64h, timeZone: Europe/Berlin, reason: weekend}
services:
  - name: web
    strategy: {canary: {steps: [{setWeight: 50}]}}
";

    fn at(text: &str) -> OffsetDateTime {
        OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
    }

    #[test]
    fn a_weekend_freeze_is_open_from_friday_afternoon_to_monday_morning_in_its_time_zone() {
        let config = DeliveryConfig::parse(CONFIG).unwrap();
        // Friday 2026-12-04 16:30 in Berlin (UTC+1) is 15:30 UTC.
        let friday = at("2026-12-04T15:30:00Z");
        let open = open_windows(&config, Some("production"), friday);
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].closes_at, at("2026-12-07T07:00:00Z"), "Monday 08:00 in Berlin");
        assert_eq!(
            open[0].refusal(),
            "production is frozen until 2026-12-07T07:00:00Z by the window 0 16 * * 5 for 2d16h (Europe/Berlin): weekend"
        );
        assert!(open_windows(&config, Some("staging"), friday).is_empty(), "only production freezes");
        assert!(open_windows(&config, Some("production"), at("2026-12-04T14:59:00Z")).is_empty(), "before 16:00");
        assert!(open_windows(&config, Some("production"), at("2026-12-07T07:00:00Z")).is_empty(), "Monday 08:00");
        assert_eq!(open_windows(&config, None, friday).len(), 1);
    }
}
