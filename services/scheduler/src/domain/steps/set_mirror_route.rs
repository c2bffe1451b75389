//! `setMirrorRoute`: a share of the matching requests is copied to the canary, whose answers are
//! discarded; a step without matches removes the route of its name.

use super::{Next, StepCtx, traffic};
use crate::domain::{config::routes::MirrorRoute, effects::Effects};

/// Sets (or removes) the route and waits until the router has it in force.
pub async fn run<E: Effects>(cx: &mut StepCtx<'_, E>, route: &MirrorRoute) -> Next {
    let mut routes = cx.r.routes.clone();
    routes.set_mirror(route);
    traffic::converge_routes(cx, routes).await
}
