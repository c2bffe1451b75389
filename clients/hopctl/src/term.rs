//! What hopctl writes: data on stdout (ending quietly when the reader has gone, as in
//! `hopctl list | head`), progress and live views on stderr. Text that came from the control
//! plane (reasons, messages, job output) is shown with its control characters escaped, so it can
//! neither move the cursor, clear the screen nor reverse the text around it.

use std::{
    borrow::Cow,
    io::{ErrorKind, Write as _},
};

use hopngo_proto::check;

/// `text` with every control character but newline and tab (a carriage return could overwrite
/// the line), and every bidirectional control, written as an escape (`\u{1b}`).
pub fn printable(text: &str) -> Cow<'_, str> {
    check::escape(text, |c| matches!(c, '\n' | '\t') || check::is_printable(c, false))
}

/// Writes to stdout. A reader that has gone ends hopctl quietly (exit 0); any other failure ends
/// it with a one-line error.
pub fn stdout(args: std::fmt::Arguments<'_>) {
    let text = args.to_string();
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(printable(&text).as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("hopctl: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// A progress line on stderr.
pub fn progress(line: &str) {
    eprintln!("{}", printable(line));
}

/// Redraws a live view on stderr.
pub fn screen(text: &str) {
    eprint!("\x1b[2J\x1b[H{}", printable(text));
}

/// Clears the live view.
pub fn clear_screen() {
    eprint!("\x1b[2J\x1b[H");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_but_lines_stay_lines() {
        assert!(matches!(printable("plain\ttext\nnext line é"), Cow::Borrowed(_)));
        assert_eq!(printable("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(printable("v1.0\u{202E}evil"), "v1.0\\u{202e}evil");
        assert_eq!(printable("bell\u{7}\r"), "bell\\u{7}\\u{d}");
    }
}
