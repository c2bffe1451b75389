//! Test only: the smallest step kind, added the way ARCHITECTURE.md says (this module plus the
//! arms the compiler asks for). It completes at once, saying it was reached.

use super::{Next, StepCtx};
use crate::domain::{effects::Effects, release::StepStatus};

/// Completes the step.
pub fn run<E: Effects>(cx: &mut StepCtx<'_, E>, label: &str) -> Next {
    cx.complete(StepStatus::Succeeded, &format!("checkpoint {label} reached"))
}
