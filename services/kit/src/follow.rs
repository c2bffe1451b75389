//! What the services' list and watch RPCs share: keyset page tokens, and following a stored
//! record that carries a version.

use std::{future::Future, sync::Arc, time::Duration};

use futures::Stream;
use time::OffsetDateTime;
use tokio::sync::Notify;
use uuid::Uuid;

/// A page token for keyset paging by (time, id), newest first.
pub fn page_token(at: OffsetDateTime, id: Uuid) -> String {
    format!("{}_{}", at.unix_timestamp_nanos(), id)
}

/// Reads a [`page_token`]; empty means the first page.
pub fn parse_page_token(token: &str) -> Result<Option<(OffsetDateTime, Uuid)>, &'static str> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = "not a token from a previous page";
    let (nanos, id) = token.split_once('_').ok_or(bad)?;
    let nanos: i128 = nanos.parse().map_err(|_| bad)?;
    let at = OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| bad)?;
    Ok(Some((at, Uuid::parse_str(id).map_err(|_| bad)?)))
}

/// Streams a stored record: `first`, then the record again whenever its version changes, until
/// `done` says it ended. `notice` wakes the stream for changes made in this process; `poll`
/// bounds how late a change made elsewhere (another replica) is seen.
pub fn follow<T, V, VF, L, LF>(
    first: T,
    notice: Arc<Notify>,
    poll: Duration,
    version_of: fn(&T) -> i64,
    done: fn(&T) -> bool,
    current_version: V,
    load: L,
) -> impl Stream<Item = Result<T, tonic::Status>>
where
    V: Fn() -> VF,
    VF: Future<Output = Result<Option<i64>, tonic::Status>>,
    L: Fn() -> LF,
    LF: Future<Output = Result<T, tonic::Status>>,
{
    async_stream::try_stream! {
        let mut version = version_of(&first);
        let ended = done(&first);
        yield first;
        if !ended {
            loop {
                // Listen before looking, so a change in between is not missed.
                let changed = notice.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if current_version().await? == Some(version) {
                    tokio::select! {
                        _ = &mut changed => {}
                        _ = tokio::time::sleep(poll) => {}
                    }
                    continue;
                }
                let record = load().await?;
                version = version_of(&record);
                let ended = done(&record);
                yield record;
                if ended {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_764_000_000_123_456_000).unwrap();
        let id = Uuid::now_v7();
        assert_eq!(parse_page_token(&page_token(at, id)).unwrap(), Some((at, id)));
        assert_eq!(parse_page_token("").unwrap(), None);
        assert!(parse_page_token("12_x").is_err() && parse_page_token("x").is_err());
    }
}
