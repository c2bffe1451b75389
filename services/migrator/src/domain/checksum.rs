//! Flyway's script checksum (`ChecksumCalculator`): one CRC32 over the UTF-8 bytes of every line
//! with its terminator removed, after one leading byte-order mark, as a signed 32-bit integer. So
//! line endings (LF, CRLF, CR), blank lines and where lines break do not change it; spaces do.
//!
//! [`decode`] is the one way from a file's bytes to script text: it drops the byte-order mark, so
//! the text that is checksummed is the text that is executed (PostgreSQL would read a BOM as part
//! of the first statement).

/// Checksum of decoded script text (see [`decode`]).
pub fn checksum(text: &str) -> i32 {
    let mut hasher = crc32fast::Hasher::new();
    for line in text.split(['\r', '\n']) {
        hasher.update(line.as_bytes());
    }
    hasher.finalize() as i32
}

/// Decodes a script's bytes as UTF-8, strictly (a malformed byte is an error: Flyway's decoder
/// refuses it too, rather than checksumming a replacement character), without the one leading
/// byte-order mark Flyway skips.
pub fn decode(bytes: &[u8]) -> Result<&str, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
        format!("not valid UTF-8 (line {line}, byte {})", e.valid_up_to())
    })?;
    Ok(text.strip_prefix('\u{FEFF}').unwrap_or(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published vectors (Flyway's ChecksumCalculator applied to these inputs).
    #[test]
    fn published_vectors() {
        assert_eq!(checksum(""), 0);
        for text in ["SELECT 1;", "SELECT 1;\n", "SELECT 1;\r\n", "\u{FEFF}SELECT 1;\n"] {
            assert_eq!(checksum(decode(text.as_bytes()).unwrap()), 78787420, "{text:?}");
        }
        assert_eq!(checksum("CREATE TABLE t (id int);\n\nINSERT INTO t VALUES (1);\n"), 169406234);
        assert_eq!(checksum("abc\ndef efg\nxyz"), 989464445);
        assert_eq!(checksum("abc \r\n   def efg  \nxyz\r\n"), 26843816);
    }

    #[test]
    fn line_ending_bom_and_blank_line_variants_agree() {
        let script = "-- bookings\n\nCREATE TABLE bookings (id bigint);\nCREATE VIEW v AS SELECT * FROM bookings WHERE id > 1;\n";
        let sum = checksum(script);
        assert_eq!(checksum(&script.replace('\n', "\r\n")), sum);
        assert_eq!(checksum(&script.replace('\n', "\r")), sum);
        assert_eq!(checksum(decode(format!("\u{FEFF}{script}").as_bytes()).unwrap()), sum);
        assert_eq!(decode(format!("\u{FEFF}{script}").as_bytes()).unwrap(), script, "the BOM is not executed either");
        assert_eq!(checksum(&script.replace("\n\n", "\n\n\n\n")), sum);
    }

    #[test]
    fn line_breaks_do_not_count_but_spaces_do() {
        assert_eq!(checksum("ab\nc"), checksum("a\nbc"));
        assert_ne!(checksum("SELECT 1; "), checksum("SELECT 1;"));
        assert_ne!(checksum("SELECT\t1;"), checksum("SELECT 1;"));
    }

    #[test]
    fn malformed_utf8_is_refused() {
        assert!(decode(b"SELECT 1;\n\xff\n").unwrap_err().contains("line 2"));
        assert_eq!(decode("SELECT 'é';".as_bytes()).unwrap(), "SELECT 'é';");
    }
}
