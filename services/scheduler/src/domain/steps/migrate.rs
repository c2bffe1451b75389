//! `migrate`: runs the service's database migrations through the migrator, and remembers what
//! changed so an abort can undo it (or leave it, as the service's `onAbort` says).

use super::{
    Next, StepCtx,
    remote::{self, MigrationRun},
};
use crate::domain::{
    config::OnAbort,
    effects::{Effects, MigrationAction, MigrationPhase, MigrationRequest},
    release::{SchemaChange, StepStatus},
};

/// Starts the migration once, then waits for its outcome.
pub async fn run<E: Effects>(
    cx: &mut StepCtx<'_, E>,
    database: &str,
    locations: &[String],
    target_version: &Option<String>,
    on_abort: OnAbort,
) -> Next {
    let run = MigrationRun {
        label: cx.r.step_index.to_string(),
        request: MigrationRequest {
            database: database.to_string(),
            locations: locations.to_vec(),
            action: MigrationAction::Migrate { target_version: target_version.clone() },
        },
    };
    let existing = cx.r.cursor.run_id.clone();
    let watched = remote::watch(cx, existing, &run, |cx, id| cx.remember_step_run(id)).await;
    let (run_id, obs) = match watched.or_abort(cx, "migration", true) {
        Ok(seen) => seen,
        Err(next) => return next,
    };
    match obs.phase {
        MigrationPhase::Succeeded | MigrationPhase::Failed => {
            // What an abort may have to undo, including what a failed run applied before its
            // failure.
            cx.r.schema = Some(SchemaChange {
                database: database.to_string(),
                locations: locations.to_vec(),
                before: obs.version_before.clone(),
                after: obs.version_after.clone(),
                on_abort,
                undo_run: None,
                settled: false,
            });
            if obs.phase == MigrationPhase::Failed {
                return cx.abort(&format!("migration failed: {}", obs.message), true);
            }
            cx.complete(StepStatus::Succeeded, &format!("migrated: {}", obs.message))
        }
        MigrationPhase::Pending | MigrationPhase::Running => {
            cx.r.failures = 0;
            cx.r.message = format!("migrating {database} (run {run_id}): {}", obs.message);
            cx.poll_later()
        }
    }
}
