//! Runs on other services (analysis runs, migrations) that the engine starts once and then
//! watches: one way to start or resume them, poll them, retry what may pass with backoff, and say
//! what was refused. The progress deadline (checked before every step) ends a run that never
//! answers.

use std::future::Future;

use super::{Next, StepCtx};
use crate::domain::{
    effects::{EffectError, Effects, MigrationObservation, MigrationRequest},
    machine::idempotency_key,
    release::Release,
};

/// A run on another service.
pub trait RemoteRun: Sync {
    /// What a poll returns.
    type Observation: Send;

    /// Starts it for the release `r` (what it needs of the release is read only here, when it
    /// starts); its idempotency key makes a repeat (after a crash) return the same run.
    fn start<E: Effects>(&self, fx: &E, r: &Release) -> impl Future<Output = Result<String, EffectError>> + Send;

    /// Its state now.
    fn status<E: Effects>(
        &self,
        fx: &E,
        run_id: &str,
    ) -> impl Future<Output = Result<Self::Observation, EffectError>> + Send;
}

/// What [`watch`] found.
pub enum Watched<O> {
    /// The run's state now.
    Seen {
        /// Its id.
        run_id: String,
        /// Its state.
        obs: O,
    },
    /// A failure that may pass: the retry is scheduled; the step returns this.
    Later(Next),
    /// It was refused.
    Refused(Refusal),
}

/// A run that could not start (`run_id` is `None`), or whose state was refused.
pub struct Refusal {
    /// The run, if it started.
    pub run_id: Option<String>,
    /// Why.
    pub err: EffectError,
}

impl Refusal {
    /// `"{what} could not start: {err}"` or `"{what} {run_id}: {err}"`.
    pub fn text(&self, what: &str) -> String {
        match &self.run_id {
            None => format!("{what} could not start: {}", self.err),
            Some(id) => format!("{what} {id}: {}", self.err),
        }
    }
}

impl<O> Watched<O> {
    /// The run's id and state, or what the step returns: a scheduled retry, or an abort naming
    /// `what` was refused (`failed_step`: the current step is why).
    pub fn or_abort<E: Effects>(
        self,
        cx: &mut StepCtx<'_, E>,
        what: &str,
        failed_step: bool,
    ) -> Result<(String, O), Next> {
        match self {
            Watched::Seen { run_id, obs } => Ok((run_id, obs)),
            Watched::Later(next) => Err(next),
            Watched::Refused(refusal) => Err(cx.abort(&refusal.text(what), failed_step)),
        }
    }
}

/// Starts `run` unless `existing` names it already (remembering a new id with `started`), then
/// polls it.
pub async fn watch<E: Effects, R: RemoteRun>(
    cx: &mut StepCtx<'_, E>,
    existing: Option<String>,
    run: &R,
    started: impl FnOnce(&mut StepCtx<'_, E>, &str),
) -> Watched<R::Observation> {
    let run_id = match existing {
        Some(id) => id,
        None => match run.start(cx.fx, cx.r).await {
            Ok(id) => {
                cx.r.failures = 0;
                started(cx, &id);
                id
            }
            Err(err) if err.retryable => return Watched::Later(cx.retry_later(&err)),
            Err(err) => return Watched::Refused(Refusal { run_id: None, err }),
        },
    };
    match run.status(cx.fx, &run_id).await {
        // A poll that answers does not reset the failure count: a background run is polled
        // beside a step whose calls may be failing, and their backoff must still grow.
        Ok(obs) => Watched::Seen { run_id, obs },
        Err(err) if err.retryable => Watched::Later(cx.retry_later(&err)),
        Err(err) => Watched::Refused(Refusal { run_id: Some(run_id), err }),
    }
}

/// A migration (or an undo) of a database.
pub struct MigrationRun {
    /// What makes its idempotency key (the step index, `abort-undo`).
    pub label: String,
    /// What to run.
    pub request: MigrationRequest,
}

impl RemoteRun for MigrationRun {
    type Observation = MigrationObservation;

    fn start<E: Effects>(&self, fx: &E, r: &Release) -> impl Future<Output = Result<String, EffectError>> + Send {
        let key = idempotency_key(r, &self.label);
        async move { fx.start_migration(&key, &self.request).await }
    }

    fn status<E: Effects>(
        &self,
        fx: &E,
        run_id: &str,
    ) -> impl Future<Output = Result<MigrationObservation, EffectError>> + Send {
        fx.migration_status(run_id)
    }
}
