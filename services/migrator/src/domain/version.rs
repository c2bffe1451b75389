//! Migration versions as Flyway's `MigrationVersion` reads them: `_` means `.`, the text is split
//! at every dot followed by a digit, each part is an arbitrary-size signed integer, and trailing
//! zero parts do not count (`1.0` = `1`, `001` = `1`, `1.2.10 > 1.2.9`). The normalised text
//! (underscores turned into dots, leading zeros kept) is what the history table stores.

use std::{cmp::Ordering, fmt};

/// One numeric part: sign and magnitude without leading zeros (`"0"` is zero and never negative).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Part {
    negative: bool,
    digits: String,
}

impl Part {
    fn zero() -> Part {
        Part { negative: false, digits: "0".into() }
    }

    fn is_zero(&self) -> bool {
        self.digits == "0"
    }

    /// `java.math.BigInteger(String)`: an optional sign, then one or more digits.
    fn parse(text: &str) -> Option<Part> {
        let (negative, digits) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let trimmed = digits.trim_start_matches('0');
        let digits = if trimmed.is_empty() { "0" } else { trimmed };
        Some(Part { negative: negative && digits != "0", digits: digits.to_string() })
    }
}

impl Ord for Part {
    fn cmp(&self, other: &Part) -> Ordering {
        let magnitude = self.digits.len().cmp(&other.digits.len()).then_with(|| self.digits.cmp(&other.digits));
        match (self.negative, other.negative) {
            (false, false) => magnitude,
            (true, true) => magnitude.reverse(),
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
        }
    }
}

impl PartialOrd for Part {
    fn partial_cmp(&self, other: &Part) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A parsed version. Equality and order are numeric; [`Version::text`] is the stored form.
#[derive(Clone, Debug)]
pub struct Version {
    text: String,
    parts: Vec<Part>,
}

/// Why a version does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Version may only contain 0..9 and . (dot). Invalid version: {0}")]
pub struct VersionError(pub String);

impl Version {
    /// Parses a version as Flyway does (`1_2` → `1.2`).
    pub fn parse(raw: &str) -> Result<Version, VersionError> {
        let text = raw.replace('_', ".");
        let mut parts = Vec::new();
        let bytes = text.as_bytes();
        let mut start = 0;
        // Java's split("\\.(?=\\d)") drops trailing empty strings; every part must then be a number.
        for i in 0..bytes.len() {
            if bytes[i] == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
                parts.push(&text[start..i]);
                start = i + 1;
            }
        }
        parts.push(&text[start..]);
        let mut parsed = parts
            .iter()
            .map(|p| Part::parse(p))
            .collect::<Option<Vec<Part>>>()
            .ok_or_else(|| VersionError(text.clone()))?;
        while parsed.len() > 1 && parsed.last().is_some_and(Part::is_zero) {
            parsed.pop();
        }
        Ok(Version { text, parts: parsed })
    }

    /// The normalised text (`_` → `.`), as stored in `flyway_schema_history.version`.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Version) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl Ord for Version {
    fn cmp(&self, other: &Version) -> Ordering {
        let zero = Part::zero();
        let longest = self.parts.len().max(other.parts.len());
        for i in 0..longest {
            let a = self.parts.get(i).unwrap_or(&zero);
            let b = other.parts.get(i).unwrap_or(&zero);
            match a.cmp(b) {
                Ordering::Equal => {}
                unequal => return unequal,
            }
        }
        Ordering::Equal
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Version) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl std::hash::Hash for Version {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Trailing zeros are already dropped, so equal versions have equal parts.
        self.parts.hash(state);
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn numeric_order_and_equality() {
        assert!(v("1.2.10") > v("1.2.9"));
        assert_eq!(v("1.0"), v("1"));
        assert_eq!(v("1.0.0"), v("1"));
        assert_eq!(v("001"), v("1"));
        assert_eq!(v("2024.01.05"), v("2024.1.5"));
        assert!(v("1.1") > v("1"));
        assert!(v("10") > v("9"));
        assert!(v("-1") < v("0"));
        assert!(v("-2") < v("-1"));
    }

    #[test]
    fn normalised_text_keeps_leading_zeros() {
        assert_eq!(v("1_2_3").text(), "1.2.3");
        assert_eq!(v("001").text(), "001");
        assert_eq!(v("2.0").text(), "2.0");
    }

    #[test]
    fn invalid_versions() {
        for bad in ["", "1.", ".1", "1..2", "a", "1.a", "1.2b", "v1", "1 2", "1.-1"] {
            assert!(Version::parse(bad).is_err(), "{bad:?} should be invalid");
        }
        assert_eq!(
            Version::parse("1.x").unwrap_err().to_string(),
            "Version may only contain 0..9 and . (dot). Invalid version: 1.x"
        );
    }

    #[test]
    fn big_parts() {
        assert!(v("123456789012345678901234567890") > v("123456789012345678901234567889"));
        assert_eq!(v("20260101120000.0"), v("20260101120000"));
    }
}
