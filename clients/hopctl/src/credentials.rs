//! The caller's token: given (`HOPNGO_TOKEN`, `--token-file`), or stored by `hopctl login` in a
//! file only its owner can read; and new static tokens for a tokens file (`hopctl token new`).

use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

/// Where `hopctl login` keeps the token: `$HOPNGO_CONFIG_DIR/token`, else
/// `$XDG_CONFIG_HOME/hopngo/token`, else `~/.config/hopngo/token`.
pub fn stored_token_path(config_dir: Option<&Path>) -> Option<PathBuf> {
    let dir = match config_dir {
        Some(dir) => dir.to_owned(),
        None => match std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
            Some(dir) => PathBuf::from(dir).join("hopngo"),
            None => PathBuf::from(std::env::var_os("HOME").filter(|h| !h.is_empty())?).join(".config/hopngo"),
        },
    };
    Some(dir.join("token"))
}

/// A token read from `text`: one line of printable ASCII.
pub fn parse_token(text: &str, from: &str) -> anyhow::Result<String> {
    if text.trim().is_empty() {
        bail!("{from} holds no token");
    }
    match hopngo_client::check_token(text) {
        Ok(token) => Ok(token.to_string()),
        Err(what) => bail!("{from} does not hold one token: a token {what}"),
    }
}

/// The token in `path`.
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(hopngo_client::MAX_TOKEN_LEN as u64 + 2).read_to_string(&mut text))
        .with_context(|| format!("reading the token file {}", path.display()))?;
    parse_token(&text, &path.display().to_string())
}

/// The token on stdin (what `hopctl login` reads when no token is given).
pub fn read_token_stdin() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .take(hopngo_client::MAX_TOKEN_LEN as u64 + 2)
        .read_to_string(&mut text)
        .context("reading the token from stdin")?;
    parse_token(&text, "stdin")
}

/// The token to call with: the one given, else the stored one, else none.
pub fn resolve(given: Option<&str>, file: Option<&Path>, config_dir: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Some(token) = given.filter(|t| !t.is_empty()) {
        return parse_token(token, "HOPNGO_TOKEN").map(Some);
    }
    if let Some(file) = file {
        return read_token_file(file).map(Some);
    }
    match stored_token_path(config_dir) {
        Some(path) if path.exists() => read_token_file(&path).map(Some),
        _ => Ok(None),
    }
}

/// Stores `token` where [`resolve`] finds it, readable by its owner only (0600, in a 0700
/// directory), replacing the file atomically.
pub fn store(token: &str, config_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let path = stored_token_path(config_dir).context("no place to keep the token: set HOME or HOPNGO_CONFIG_DIR")?;
    let dir = path.parent().context("the token path has a directory")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let partial = dir.join(format!(".token.{}", std::process::id()));
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    file.write_all(format!("{token}\n").as_bytes()).and_then(|()| file.sync_all())?;
    std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Removes the stored token; whether there was one.
pub fn forget(config_dir: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    let Some(path) = stored_token_path(config_dir) else { return Ok(None) };
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(Some(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// A new random static token (256 bits, URL-safe base64).
pub fn new_token() -> anyhow::Result<String> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 43];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).context("reading /dev/urandom")?;
    // The low 6 bits of each random byte: 43 uniform characters, 258 bits.
    Ok(bytes.iter().map(|b| ALPHABET[usize::from(b & 63)] as char).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_tokens_are_private_and_found_again() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("hopctl-credentials-{}", std::process::id()));
        let path = store("t0ken", Some(&dir)).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(resolve(None, None, Some(&dir)).unwrap().as_deref(), Some("t0ken"));
        assert_eq!(resolve(Some("given"), None, Some(&dir)).unwrap().as_deref(), Some("given"));
        store("renewed", Some(&dir)).unwrap();
        assert_eq!(resolve(None, None, Some(&dir)).unwrap().as_deref(), Some("renewed"));
        assert!(forget(Some(&dir)).unwrap().is_some());
        assert_eq!(resolve(None, None, Some(&dir)).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tokens_are_one_printable_word() {
        assert!(parse_token("  abc.def-ghi_\n", "x").is_ok());
        assert!(parse_token("", "x").unwrap_err().to_string().contains("no token"));
        assert!(parse_token("a b", "x").is_err());
        assert!(parse_token("a\u{0}b", "x").is_err());
        let token = new_token().unwrap();
        assert_eq!(token.len(), 43);
        assert_ne!(token, new_token().unwrap());
    }
}
