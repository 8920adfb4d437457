//! A replica that starts reads every counter of its prefix into its copies
//! (`Recovery::seen`), so that what replicas before it decided survives
//! Redis losing its data even when no running replica decided the counter
//! since it started (all replicas restarted, then Redis restarted empty).
//!
//! The read is a `SCAN` of the prefix's counter hashes on the one server,
//! or on each master of a Redis Cluster, then one `HMGET` per counter; it
//! keeps only counters in their current period with something to put back
//! (requests counted, or an UpdateUsage allowance). It goes at most
//! [`KEYS_PER_ROUND`] keys a call and resumes where it stopped, so a large
//! Redis is read over several rounds while the replica serves.

use futures_util::{StreamExt, TryStreamExt};

use super::recovery::{Recovery, Seen};
use super::redis::{copied, counter_key, Connection};
use super::CounterKey;
use crate::limit::period::DAY_SECS;
use crate::model::QuotaPeriod;

/// The most keys one call reads (a round of the gateway, every 200 ms)
/// while a replica reads Redis's counters for the first time.
pub(crate) const KEYS_PER_ROUND: usize = 5_000;
/// The most keys one call reads again, once every counter was read: the
/// reads go on, so that a counter another replica created since is copied
/// here too (a replica that dies as Redis loses its data takes no count
/// with it but what it decided since), and the copies follow Redis.
const KEYS_PER_ROUND_AGAIN: usize = 1_000;
/// The `COUNT` hint of one `SCAN` step.
const SCAN_COUNT: usize = 1_000;
/// `HMGET`s in flight at once (one multiplexed connection).
const IN_FLIGHT: usize = 64;

/// How far a replica has read Redis's counters.
#[derive(Debug, Default, Clone)]
pub(crate) enum Scan {
    /// Not begun.
    #[default]
    Start,
    /// The nodes left (`None`: the one server), each with its cursor.
    Nodes(Vec<(Option<(String, u16)>, u64)>),
    /// Every counter was read once; reading again starts over.
    Done,
}

/// Reads up to [`KEYS_PER_ROUND`] more counters into `recovery`'s copies
/// (the larger count of a period and epoch stands); `true` once every
/// counter was read once. Then each call reads on (up to
/// [`KEYS_PER_ROUND_AGAIN`]), from the start again after the end. Call it
/// with the marker known, so that a loss after the read began puts back
/// what it read.
pub(crate) async fn some(
    recovery: &Recovery,
    connection: &mut Connection,
) -> redis::RedisResult<bool> {
    let scan = recovery.scan.lock().clone();
    let (first, limit) = match recovery.scanned_once() {
        false => (true, KEYS_PER_ROUND),
        true => (false, KEYS_PER_ROUND_AGAIN),
    };
    let mut nodes = match scan {
        Scan::Nodes(nodes) => nodes,
        Scan::Start | Scan::Done => match connection {
            Connection::Single(_) => vec![(None, 0)],
            Connection::Cluster(_) => connection
                .masters()
                .await?
                .into_iter()
                .map(|node| (Some(node), 0))
                .collect(),
        },
    };
    let pattern = format!("{}{{*}}", escape_glob(&recovery.prefix));
    let mut read = 0;
    while let Some((node, cursor)) = nodes.last_mut() {
        if read >= limit {
            break;
        }
        let mut step = redis::cmd("SCAN");
        step.arg(*cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .arg("TYPE")
            .arg("hash");
        let stepped: redis::RedisResult<(u64, Vec<String>)> =
            connection.on_node(node.as_ref(), &step).await;
        let (next, keys) = match stepped {
            Ok(stepped) => stepped,
            Err(e) => {
                if node.is_some() {
                    // The cluster may have changed (a failover): its
                    // masters are read again next time, and scanned anew.
                    *recovery.scan.lock() = Scan::Start;
                }
                return Err(e);
            }
        };
        read += keys.len();
        copy(recovery, connection, keys, false).await?;
        // Moved on only once its keys are read, and kept at each step: a
        // round cut short (its future dropped) reads only them again.
        *cursor = next;
        if next == 0 {
            nodes.pop();
        }
        *recovery.scan.lock() = Scan::Nodes(nodes.clone());
    }
    let done = nodes.is_empty();
    if done {
        *recovery.scan.lock() = Scan::Done;
        if first {
            recovery.mark_scanned_once();
            tracing::info!(
                counters = recovery.seen.len(),
                "read Redis's counters: they survive Redis losing its data"
            );
        }
    }
    Ok(done || !first)
}

/// A counter hash's period kind, start and end, used count, allowance,
/// epoch, units out on leases, and of those the ones kept from reclaimed
/// leases.
type Fields = (
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<u64>,
    Option<i64>,
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<u64>,
);

/// Reads `counter` again into its copy (another replica changed it by
/// UpdateUsage).
pub(crate) async fn refresh(
    recovery: &Recovery,
    connection: &mut Connection,
    counter: CounterKey,
) -> redis::RedisResult<()> {
    let key = counter_key(&recovery.prefix, &counter);
    copy(recovery, connection, vec![key], true).await
}

/// Reads `keys` (counter hashes) and keeps a copy of each one that has
/// something to put back in its current period; `replace`: over the copy
/// this replica has (else that one is kept).
async fn copy(
    recovery: &Recovery,
    connection: &Connection,
    keys: Vec<String>,
    replace: bool,
) -> redis::RedisResult<()> {
    let now = jiff::Timestamp::now().as_second();
    // Today's record of admitted requests (GetUsage's used count), which
    // a restore puts back with the counter: read too, or what another
    // replica admitted today (and reported) goes from it once that
    // replica is gone and Redis loses its data.
    let today = now.div_euclid(DAY_SECS);
    let today_field = format!("d:{today}:u");
    let counters = keys
        .into_iter()
        .filter_map(|key| Some((counter_of(&recovery.prefix, &key)?, key)));
    let fields: Vec<_> = futures_util::stream::iter(counters)
        .map(|(counter, key)| {
            let mut connection = connection.clone();
            let today_field = &today_field;
            async move {
                let fields: Fields = connection
                    .query(
                        redis::cmd("HMGET")
                            .arg(&key)
                            .arg(&["pk", "ps", "pe", "used", "allow", "ep", "leased", "kt"][..])
                            .arg(today_field),
                    )
                    .await?;
                Ok::<_, redis::RedisError>((counter, fields))
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await?;
    for (counter, (kind, start, end, used, allow, epoch, leased, kept, on_day)) in fields {
        let (Some(kind), Some(start), Some(end)) =
            (kind.and_then(|k| k.parse::<QuotaPeriod>().ok()), start, end)
        else {
            continue;
        };
        // Leased units are counted by their holders when they restore.
        let used = copied(used.unwrap_or(0), leased.unwrap_or(0), kept.unwrap_or(0));
        let allow = allow.unwrap_or(-1);
        if !(start <= now && now < end) || (used == 0 && allow < 0) {
            continue;
        }
        let seen = Seen {
            period: (kind, start, end),
            used,
            allow,
            epoch: epoch.unwrap_or(0),
            // (Not known here: whose the leased units are.)
            others: 0,
            today: (today, on_day.unwrap_or(0)),
        };
        match replace {
            true => {
                recovery.seen.insert(counter, seen);
            }
            false => {
                recovery.saw(
                    counter.clone(),
                    seen.period,
                    (seen.used, seen.allow, seen.epoch),
                );
                recovery.saw_today(&counter, today, seen.today.1);
            }
        }
    }
    Ok(())
}

/// The counter a hash `<prefix>{<plan>:<key>}` holds; `None` for the
/// prefix's other keys. Plan ids hold no `:`; whichever split, the counter
/// names the same hash again.
fn counter_of(prefix: &str, key: &str) -> Option<CounterKey> {
    let inner = key.strip_prefix(prefix)?.strip_prefix('{')?;
    let inner = inner.strip_suffix('}')?;
    let (plan, key) = inner.split_once(':')?;
    (!inner.contains(['{', '}'])).then(|| CounterKey::new(plan, key))
}

/// `text` matched literally by a `SCAN MATCH` pattern.
pub(crate) fn escape_glob(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_counter_hashes_name_counters() {
        let counter = counter_of("tup:", "tup:{abc:def}").unwrap();
        assert_eq!((counter.plan_id(), counter.key_id()), ("abc", "def"));
        for other in [
            "tup:{registry}",
            "tup:{registry}:version",
            "tup:{ctl}:marker",
            "other:{abc:def}",
            "tup:{abc:def}:x",
        ] {
            assert!(counter_of("tup:", other).is_none(), "{other}");
        }
    }

    #[test]
    fn a_prefix_matches_itself_only() {
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
