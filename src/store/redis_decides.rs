//! Decisions of many counters in one script call (`"decides"` in
//! `redis.lua`), on one server. A decision alone costs Redis a whole
//! script call (its 40 arguments parsed, the script entered, the replica's
//! count of calls bumped, the marker checked) and some fifteen commands;
//! the common decision in a `"decides"` call costs two (one read and one
//! write of the counter's hash).
//!
//! Decisions wait in a queue while [`CALLS_IN_FLIGHT`] calls are on their
//! way; each call takes up to [`DECISIONS_PER_CALL`] of them, so a busy
//! replica sends bigger calls and an idle one sends each decision at once.
//! One the script hands back (not the common decision) is sent alone, as
//! before. A cluster cannot take the counters of many slots in one script:
//! there each decision goes alone.
//!
//! A call outlives the requests it decides: one that stopped waiting (its
//! store timeout passed while Redis stalled, or the request was dropped)
//! was answered by the failure policy, uncounted, so a decision Redis
//! admitted after that is given back (`"refund"`). A call waits for its
//! answer up to [`RESPONSE_CEILING`], however short the store's timeout.
//!
//! A call whose answer never comes (its connection died, or it outlived
//! the ceiling) may still have been applied: Redis records which
//! decisions each call admitted, under the call's id, and the replica
//! settles such a call ([`SETTLE`]): it gives back what the call admitted,
//! or makes sure it decides nothing should it run later.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::{FromRedisValue, Script, ScriptInvocation, Value};
use tokio::sync::oneshot;

use super::{within, Answer, Args, Connection, StoreParts, RESPONSE_CEILING};
use crate::store::recovery::{Recovery, Watch};
use crate::store::CounterKey;

/// The most decisions one script call carries.
const DECISIONS_PER_CALL: usize = 32;

/// The script calls of decisions on their way at once: while one is in
/// Redis, the next one's decisions gather.
const CALLS_IN_FLIGHT: usize = 2;

/// A decision's answer from a `"decides"` call, with the watch it was sent
/// under; `None`: not the common decision, nothing written (to be sent
/// alone).
pub(super) type Decided = redis::RedisResult<Option<(Answer, Watch)>>;

/// The decisions waiting for a `"decides"` call (see the module).
#[derive(Default)]
pub(super) struct Decides {
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
    /// The calls on their way (at most [`CALLS_IN_FLIGHT`]).
    sending: usize,
    /// The last call id given (ids grow from 1).
    last_call: u64,
    /// The calls sent and neither answered nor settled yet: Redis keeps
    /// its record of those (see "decides" in `redis.lua`).
    open: BTreeSet<u64>,
}

/// A decision waiting for its call: the counter, its hash's key and the
/// arguments it would be sent alone with.
struct Waiting {
    key: String,
    counter: CounterKey,
    args: Args,
    answer: oneshot::Sender<Decided>,
}

/// What a call needs of the store.
#[derive(Clone)]
pub(super) struct Sender {
    pub(super) connection: Connection,
    pub(super) parts: StoreParts,
    /// The store's timeout (a call waits longer: see the module).
    pub(super) timeout: Duration,
}

impl Decides {
    /// `args` (a `"decide"` of `counter`, whose hash is `key`) decided in
    /// a `"decides"` call: sent now if fewer than [`CALLS_IN_FLIGHT`] calls
    /// are on their way, else with the next call. Must run on a Tokio
    /// runtime.
    pub(super) async fn decide(
        self: &Arc<Self>,
        sender: impl FnOnce() -> Sender,
        key: String,
        counter: CounterKey,
        args: Args,
    ) -> Decided {
        let (answer, answered) = oneshot::channel();
        let batch = {
            let mut queue = self.queue.lock();
            queue.waiting.push(Waiting {
                key,
                counter,
                args,
                answer,
            });
            (queue.sending < CALLS_IN_FLIGHT).then(|| {
                queue.sending += 1;
                queue.next_batch()
            })
        };
        if let Some(batch) = batch {
            tokio::spawn(self.clone().send(sender(), batch));
        }
        answered.await.unwrap_or_else(|_| Err(unanswered()))
    }

    /// Sends `batch`, then the decisions that gathered meanwhile, until
    /// none waits. (Should a call panic, the next decision starts a call
    /// in its place.)
    async fn send(self: Arc<Self>, mut sender: Sender, mut batch: Vec<Waiting>) {
        let mut sending = Sending(Some(&self));
        loop {
            if !batch.is_empty() {
                sender.call(&self, batch).await;
            }
            let mut queue = self.queue.lock();
            batch = queue.next_batch();
            if batch.is_empty() {
                // Under the lock that a new decision takes to see whether
                // a call will take it.
                queue.sending -= 1;
                sending.0 = None;
                return;
            }
        }
    }
}

/// A call's turn among the [`CALLS_IN_FLIGHT`], given up if its task ends
/// without giving it up itself.
struct Sending<'a>(Option<&'a Decides>);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if let Some(decides) = self.0 {
            decides.queue.lock().sending -= 1;
        }
    }
}

impl Decides {
    /// A new call's id, and the oldest call still open (itself if none).
    fn open_call(&self) -> (u64, u64) {
        let mut queue = self.queue.lock();
        queue.last_call += 1;
        let id = queue.last_call;
        queue.open.insert(id);
        (id, queue.open.first().copied().unwrap_or(id))
    }

    /// Call `id` was answered or settled: Redis may forget its record
    /// (0: a call without one).
    fn close_call(&self, id: u64) {
        if id > 0 {
            self.queue.lock().open.remove(&id);
        }
    }
}

impl Queue {
    /// The decisions the next call takes, oldest first.
    /// (One whose request stopped waiting is not sent.)
    fn next_batch(&mut self) -> Vec<Waiting> {
        self.waiting.retain(|waiting| !waiting.answer.is_closed());
        let n = self.waiting.len().min(DECISIONS_PER_CALL);
        self.waiting.drain(..n).collect()
    }
}

/// The `"decides"` call of `decisions` (each a counter's key and the
/// arguments of its `"decide"`; at least one), watched with `watch`.
pub(super) fn invocation<'a>(
    script: &'a Script,
    decisions: &[(&str, &Args)],
    recovery: &Recovery,
    watch: &Watch,
) -> ScriptInvocation<'a> {
    let (first_key, first) = decisions[0];
    let mut invocation = first.invocation(script, first_key, Some((recovery, watch)), "decides");
    for (key, _) in &decisions[1..] {
        invocation.key(*key);
    }
    for (_, args) in decisions {
        let (kind, start, end, limit) = args.period_args();
        invocation
            .arg(args.now_us)
            .arg(args.now)
            .arg(args.day)
            .arg(&args.bucket)
            .arg(args.rate)
            .arg(args.burst)
            .arg(kind)
            .arg(start)
            .arg(end)
            .arg(limit)
            .arg(args.seen.map_or(0, |s| s.used))
            .arg(args.seen.map_or(0, |s| s.epoch));
    }
    invocation
}

impl Sender {
    /// `args` (a `"decide"` of `counter`, whose hash is `key`) sent alone
    /// under `watch`, in a task of its own that gives the decision back
    /// should Redis admit it after the request stopped waiting. Must run on
    /// a Tokio runtime.
    pub(super) async fn decide_alone(
        self,
        key: String,
        counter: CounterKey,
        args: Args,
        watch: &Option<Watch>,
    ) -> redis::RedisResult<Answer> {
        let (answer, answered) = oneshot::channel();
        let watch = watch.clone();
        tokio::spawn(async move {
            let Self {
                mut connection,
                parts,
                timeout,
            } = self;
            let (recovery, script) = (&parts.recovery, &parts.script);
            let call = connection.run_watched::<Answer>(
                recovery,
                script,
                &key,
                &args,
                "decide",
                watch.as_ref(),
            );
            let call = recovery.in_flight.unless_restoring(call);
            let decided = within(timeout.max(RESPONSE_CEILING), call).await;
            if let Err(Ok((ADMITTED, ..))) = answer.send(decided) {
                give_back(connection, parts, vec![(key, counter, args)]).await;
            }
        });
        answered.await.unwrap_or_else(|_| Err(unanswered()))
    }

    /// One `"decides"` call of `batch`; each decision gets its answer (an
    /// error: the call's), and one admitted after its request stopped
    /// waiting is given back (so is one a call that went unanswered
    /// admitted: see [`settle`]).
    async fn call(&mut self, decides: &Arc<Decides>, mut batch: Vec<Waiting>) {
        let recovery = &self.parts.recovery;
        let Some(watch) = recovery.watch_on(&self.connection) else {
            // A cluster: each goes alone.
            for waiting in batch {
                let _ = waiting.answer.send(Ok(None));
            }
            return;
        };
        // No record before the replica knows Redis's marker: its field
        // ("<replica>:<marker>") would be every such replica's.
        let (id, oldest_open) = match watch.marker.is_empty() {
            true => (0, 0),
            false => decides.open_call(),
        };
        // The call's arguments are the first decision's (ARGV 1-40).
        (batch[0].args.call, batch[0].args.oldest_open_call) = (id, oldest_open);
        let decisions: Vec<_> = batch.iter().map(|w| (w.key.as_str(), &w.args)).collect();
        let invocation = invocation(&self.parts.script, &decisions, recovery, &watch);
        let call = self.connection.invoke(invocation);
        let answers: redis::RedisResult<Vec<Value>> = within(
            self.timeout.max(RESPONSE_CEILING),
            recovery.in_flight.unless_restoring(call),
        )
        .await;
        match answers {
            Ok(answers) => {
                decides.close_call(id);
                recovery.answered(&watch);
                let mut late = Vec::new();
                for (waiting, answer) in batch.into_iter().zip(answers) {
                    let decided = match answer {
                        Value::Array(items) if items.is_empty() => Ok(None),
                        answer => Answer::from_redis_value(answer)
                            .map(|a| Some((a, watch.clone())))
                            .map_err(redis::RedisError::from),
                    };
                    let Waiting {
                        key,
                        counter,
                        args,
                        answer,
                    } = waiting;
                    if let Err(Ok(Some(((ADMITTED, ..), _)))) = answer.send(decided) {
                        late.push((key, counter, args));
                    }
                }
                if !late.is_empty() {
                    tokio::spawn(give_back(self.connection.clone(), self.parts.clone(), late));
                }
            }
            Err(e) => {
                let mut sent = Vec::with_capacity(batch.len());
                for waiting in batch {
                    let _ = waiting.answer.send(Err(redis::RedisError::from((
                        e.kind(),
                        "a call of decisions failed",
                        e.to_string(),
                    ))));
                    sent.push((waiting.key, waiting.counter, waiting.args));
                }
                if id > 0 && answer_lost(&e) {
                    let unanswered = Unanswered {
                        id,
                        field: format!("{}:d", watch.field),
                        sent,
                    };
                    let settled = settle(self.connection.clone(), self.parts.clone(), unanswered);
                    let decides = decides.clone();
                    tokio::spawn(async move {
                        settled.await;
                        decides.close_call(id);
                    });
                } else {
                    decides.close_call(id);
                }
            }
        }
    }
}

/// Whether a failed call may have been applied all the same: its
/// connection failed after it was sent, or it was not answered in time (a
/// refused connection sent nothing; an error Redis answers applied
/// nothing).
fn answer_lost(error: &redis::RedisError) -> bool {
    (error.is_io_error() || error.is_timeout() || error.is_connection_dropped())
        && !error.is_connection_refusal()
}

/// A `"decides"` call that went unanswered: its id, the field of Redis's
/// record of it, and its decisions (each a counter's hash key, the counter
/// and its decision's arguments), in order.
struct Unanswered {
    id: u64,
    field: String,
    sent: Vec<(String, CounterKey, Args)>,
}

/// The indices (from 1) of the decisions an unanswered call admitted
/// (`KEYS[1]`, field `ARGV[1]`: see "decides" in `redis.lua`), joined by
/// `.`; or, when Redis has no record of call `ARGV[2]` (it did not run, or
/// Redis lost its data), `v`, recorded so that the call decides nothing
/// should it run later. Answers the same when sent again.
pub(super) const SETTLE: &str = r"
local calls = redis.call('HGET', KEYS[1], ARGV[1]) or ''
local admitted = string.match(calls, ',' .. ARGV[2] .. ':([^:]*):')
if admitted then
  return admitted
end
redis.call('HSET', KEYS[1], ARGV[1], calls .. ',' .. ARGV[2] .. ':v:' .. ARGV[3])
return 'v'
";

/// How long a replica tries to settle an unanswered call (Redis keeps its
/// record of a call for a minute).
const SETTLE_FOR: Duration = Duration::from_secs(50);

/// Settles `call` (see [`SETTLE`]): asks Redis, until it answers (within
/// [`SETTLE_FOR`]), which of its decisions it admitted, and gives them
/// back: their requests were answered by the failure policy, uncounted.
async fn settle(mut connection: Connection, parts: StoreParts, call: Unanswered) {
    let script = Script::new(SETTLE);
    let given_up = tokio::time::Instant::now() + SETTLE_FOR;
    let mut pause = Duration::from_millis(20);
    let admitted = loop {
        let mut invocation = script.key(&parts.recovery.writes_key);
        invocation
            .arg(&call.field)
            .arg(call.id)
            .arg(jiff::Timestamp::now().as_second());
        match within(RESPONSE_CEILING, connection.invoke::<String>(invocation)).await {
            Ok(admitted) => break admitted,
            Err(error) if tokio::time::Instant::now() >= given_up => {
                tracing::warn!(
                    %error,
                    "what a call of decisions Redis did not answer admitted stays charged"
                );
                return;
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    };
    let admitted: BTreeSet<usize> = admitted
        .split('.')
        .filter_map(|i| i.parse::<usize>().ok())
        .collect();
    let late = call
        .sent
        .into_iter()
        .enumerate()
        .filter(|(i, _)| admitted.contains(&(i + 1)))
        .map(|(_, decision)| decision)
        .collect();
    give_back(connection, parts, late).await;
}

/// The error of a decision whose call ended without answering it (its
/// task panicked, or the runtime shut down).
fn unanswered() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "a call of decisions ended unanswered",
    ))
}

/// The verdict of an admitted decision in the script's answer.
const ADMITTED: u8 = 0;

/// Gives back the decisions Redis admitted after their requests stopped
/// waiting (each a counter's hash key, the counter and its decision's
/// arguments), one after the other. One that fails stays charged (logged).
pub(super) async fn give_back(
    mut connection: Connection,
    parts: StoreParts,
    late: Vec<(String, CounterKey, Args)>,
) {
    for (key, counter, args) in late {
        let refund = parts.refund(&mut connection, &key, &counter, &args);
        if let Err(error) = within(RESPONSE_CEILING, refund).await {
            tracing::warn!(
                %error,
                "a request Redis admitted after it stopped waiting stays charged"
            );
        }
    }
}
