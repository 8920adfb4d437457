//! A round's lease reports in a few script calls (`"reports"` in
//! `redis.lua`), on one server: a report alone costs Redis a whole script
//! call (its 40 arguments parsed, the script entered, the replica's count
//! of calls bumped), and reports are most of a leasing replica's calls,
//! one per busy key every 200 ms. Each report keeps its own call id, so
//! one the script hands back (not the common report), or one whose call
//! failed, is sent again alone, as before. A cluster cannot take the
//! counters of many slots in one script: there each report goes alone.

use std::sync::Arc;

use futures_util::StreamExt;
use redis::{Script, ScriptInvocation};

use super::{
    call_args, store_error, within, Args, CallKind, Connection, Leases, PendingCall, RedisStore,
    Unsure, REPORTS_IN_FLIGHT, ROLLED_BACK,
};
use crate::error::Result;
use crate::store::recovery::{Recovery, Watch};

/// The most reports one script call carries: a call holds Redis for
/// about 35 µs a report, and every other call waits meanwhile.
const REPORTS_PER_CALL: usize = 32;

/// A give-back or report sent alone, or reports sent together.
pub(super) enum Batched {
    Alone(Box<PendingCall>),
    Reports(Vec<PendingCall>),
}

/// Whether `call` may go in a `"reports"` call: a report of requests
/// admitted from a lease that holds quota units (the script's common
/// report; anything else goes alone).
fn batchable(call: &Unsure) -> bool {
    matches!(call.kind, CallKind::Report(n) if n > 0)
        && call.lease.quota.is_some()
        && call.lease.unspent.granted > 0
        && call.lease.unspent.gen > 0
}

/// One report's key and arguments, as it would be sent alone.
pub(super) struct Report {
    pub(super) key: String,
    pub(super) args: Args,
}

/// The `"reports"` call of `reports` (at least one), watched with `watch`.
pub(super) fn invocation<'a>(
    script: &'a Script,
    reports: &[Report],
    recovery: &Recovery,
    watch: &Watch,
) -> ScriptInvocation<'a> {
    let first = &reports[0];
    let mut invocation =
        first
            .args
            .invocation(script, &first.key, Some((recovery, watch)), "reports");
    for report in &reports[1..] {
        invocation.key(&report.key);
    }
    for report in reports {
        report.push_args(&mut invocation);
    }
    invocation
}

impl Report {
    /// Its ten arguments in a `"reports"` call (see `redis.lua`).
    fn push_args(&self, invocation: &mut redis::ScriptInvocation<'_>) {
        let args = &self.args;
        let start = args.stored_period().map_or(0, |(_, start, _)| start);
        invocation
            .arg(args.call)
            .arg(args.unspent.unreported())
            .arg(args.unspent.epoch)
            .arg(args.unspent.gen)
            .arg(args.unspent.day)
            .arg(&args.record)
            .arg(args.now_us)
            .arg(args.seen.map_or(0, |s| s.used))
            .arg(args.seen.map_or(0, |s| s.epoch))
            .arg(start);
    }
}

impl RedisStore {
    /// `calls` as they go to Redis: on one server the reports
    /// [`batchable`] go [`REPORTS_PER_CALL`] to a script call, the rest
    /// alone.
    pub(super) fn batched(&self, calls: Vec<PendingCall>) -> Vec<Batched> {
        let one_server = matches!(self.connection, Connection::Single(_));
        let (reports, alone): (Vec<_>, Vec<_>) = calls
            .into_iter()
            .partition(|call| one_server && call.call().is_some_and(batchable));
        let mut out: Vec<Batched> = alone
            .into_iter()
            .map(|call| Batched::Alone(Box::new(call)))
            .collect();
        let mut reports = reports.into_iter().peekable();
        while reports.peek().is_some() {
            out.push(Batched::Reports(
                reports.by_ref().take(REPORTS_PER_CALL).collect(),
            ));
        }
        out
    }

    /// Sends `batch` (reports [`batchable`], at most
    /// [`REPORTS_PER_CALL`]) in one script call on one server, then alone
    /// the reports the script handed back. A batch that fails is sent
    /// again later, report by report (each its own [`PendingCall`]).
    pub(super) async fn send_reports(
        &self,
        leases: &Arc<Leases>,
        batch: Vec<PendingCall>,
    ) -> Result<()> {
        let mut connection = self.connection.clone();
        let Some(watch) = self.recovery.watch_on(&connection) else {
            return self.send_each(leases, batch).await;
        };
        let reports: Vec<Report> = batch
            .iter()
            .filter_map(PendingCall::call)
            .map(|call| {
                let (_, mut args) = call_args(leases, call);
                args.seen = self.recovery.copy_in(&call.slot.0, args.stored_period());
                Report {
                    key: self.key(&call.slot.0),
                    args,
                }
            })
            .collect();
        if reports.is_empty() || reports.len() != batch.len() {
            return self.send_each(leases, batch).await;
        }
        let (mut alone, mut rolled_back) = (Vec::new(), Vec::new());
        {
            // Until the answers are in the copy: a restore waits for them.
            let _in_flight = self.recovery.in_flight.read().await;
            let invocation = invocation(&self.script, &reports, &self.recovery, &watch);
            let call = connection.invoke(invocation);
            let call = self.recovery.in_flight.unless_restoring(call);
            let answers: Vec<Vec<i64>> = within(self.timeout, call)
                .await
                .map_err(|e| store_error("error", e))?;
            self.recovery.answered(&watch);
            for (pending, answer) in batch.into_iter().zip(answers) {
                if answer.is_empty() {
                    alone.push(pending);
                    continue;
                }
                if answer == [ROLLED_BACK] {
                    rolled_back.push(pending);
                } else if let Some(call) = pending.into_call() {
                    self.answered(leases, call, &answer);
                }
            }
        }
        if !rolled_back.is_empty() {
            self.rolled_back(&mut connection, &watch, leases, rolled_back)
                .await?;
        }
        self.send_each(leases, alone).await
    }

    /// Sends each of `calls` alone, `REPORTS_IN_FLIGHT` at a time.
    pub(super) async fn send_each(
        &self,
        leases: &Arc<Leases>,
        calls: Vec<PendingCall>,
    ) -> Result<()> {
        let sent = futures_util::stream::iter(calls).map(|call| self.send(leases, call));
        let results: Vec<Result<()>> = sent.buffer_unordered(REPORTS_IN_FLIGHT).collect().await;
        results.into_iter().collect()
    }
}
