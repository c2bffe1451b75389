//! `setHeaderRoute`: requests whose headers match go to the canary, whatever its weight; a step
//! without matches removes the route of its name.

use super::{Next, StepCtx, traffic};
use crate::domain::{config::routes::HeaderRoute, effects::Effects};

/// Sets (or removes) the route and waits until the router has it in force.
pub async fn run<E: Effects>(cx: &mut StepCtx<'_, E>, route: &HeaderRoute) -> Next {
    let mut routes = cx.r.routes.clone();
    routes.set_header(route);
    traffic::converge_routes(cx, routes).await
}
