//! Release groups as a whole: the order a train's members run in, what a group is doing, and
//! which of a train's members can be returned to their previous versions when it ends early.

use serde::{Deserialize, Serialize};

use super::{
    config::{DeliveryConfig, Problem},
    release::{Phase, Release},
};

/// The kind of group a release train is.
pub const TRAIN: &str = "train";

/// The most members one train may have.
pub const MAX_MEMBERS: usize = 50;

/// A member as the request names it.
pub struct MemberRequest<'a> {
    /// Service.
    pub service: &'a str,
    /// Artifact.
    pub artifact: &'a str,
    /// Other members to release first.
    pub depends_on: &'a [String],
}

/// What a member waited for: the config's `dependsOn` among the members and the request's.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Dependency {
    /// The member's service.
    pub service: String,
    /// Services of the train released before it because it depends on them.
    pub depends_on: Vec<String>,
}

/// The order a train runs in.
#[derive(Debug, PartialEq, Eq)]
pub struct TrainOrder {
    /// Indexes into the request's members, in execution order.
    pub order: Vec<usize>,
    /// Each member's dependencies, in execution order.
    pub dependencies: Vec<Dependency>,
}

fn problem(path: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem { path: path.into(), message: message.into() }
}

/// Checks a train's members against the config and orders them: every member after the members
/// it depends on, otherwise in the order asked. The first problem is returned with its path
/// (`members[1].depends_on[0]`).
pub fn order(config: &DeliveryConfig, members: &[MemberRequest<'_>]) -> Result<TrainOrder, Problem> {
    if members.is_empty() {
        return Err(problem("members", "a train needs at least one member"));
    }
    if members.len() > MAX_MEMBERS {
        return Err(problem("members", format!("{} members; at most {MAX_MEMBERS} are allowed", members.len())));
    }
    let shown = hopngo_proto::check::shown;
    for (i, m) in members.iter().enumerate() {
        let path = format!("members[{i}]");
        if m.service.is_empty() {
            return Err(problem(format!("{path}.service"), "must not be empty"));
        }
        if config.service(m.service).is_none() {
            let known: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
            return Err(problem(
                format!("{path}.service"),
                format!("unknown service {} (known: {})", shown(m.service), known.join(", ")),
            ));
        }
        if let Some(first) = members[..i].iter().position(|o| o.service == m.service) {
            return Err(problem(
                format!("{path}.service"),
                format!("{} is already members[{first}]", shown(m.service)),
            ));
        }
        if let Some(reason) = hopngo_delivery::artifact_problem(m.artifact) {
            return Err(problem(format!("{path}.artifact"), reason));
        }
    }
    let in_train = |name: &str| members.iter().any(|m| m.service == name);
    for (i, m) in members.iter().enumerate() {
        for (j, dep) in m.depends_on.iter().enumerate() {
            let path = format!("members[{i}].depends_on[{j}]");
            if dep == m.service {
                return Err(problem(path, "a member cannot depend on itself"));
            }
            if !in_train(dep) {
                return Err(problem(path, format!("{} is not a member of this train", shown(dep))));
            }
        }
    }
    // What each member waits for: the request's, then the config's among the members.
    let deps_of = |name: &str| -> Vec<&str> {
        let Some(m) = members.iter().find(|m| m.service == name) else { return Vec::new() };
        let mut deps: Vec<&str> = m.depends_on.iter().map(String::as_str).collect();
        let configured = config.service(name).map(|s| s.depends_on.as_slice()).unwrap_or_default();
        deps.extend(configured.iter().map(String::as_str).filter(|d| in_train(d)));
        let mut seen = std::collections::BTreeSet::new();
        deps.retain(|d| seen.insert(*d));
        deps
    };
    let names: Vec<&str> = members.iter().map(|m| m.service).collect();
    if let Some(cycle) = hopngo_delivery::dependency_cycle(&names, deps_of) {
        // The config's dependsOn has no cycle (it is checked when applied), so one of the
        // request's edges closes it: the cycle is reported there.
        let edge = cycle.windows(2).find_map(|pair| {
            let i = members.iter().position(|m| m.service == pair[0])?;
            let j = members[i].depends_on.iter().position(|d| *d == pair[1])?;
            Some(format!("members[{i}].depends_on[{j}]"))
        });
        return Err(problem(
            edge.unwrap_or_else(|| "members".into()),
            format!("dependency cycle: {}", cycle.join(" → ")),
        ));
    }
    let mut order: Vec<usize> = Vec::with_capacity(members.len());
    while order.len() < members.len() {
        let placed = |name: &str| order.iter().any(|&k| members[k].service == name);
        let next = (0..members.len())
            .find(|&i| !order.contains(&i) && deps_of(members[i].service).iter().all(|d| placed(d)))
            .expect("an acyclic graph always has a member whose dependencies are placed");
        order.push(next);
    }
    let dependencies = order
        .iter()
        .map(|&i| Dependency {
            service: members[i].service.to_string(),
            depends_on: deps_of(members[i].service).into_iter().map(str::to_string).collect(),
        })
        .collect();
    Ok(TrainOrder { order, dependencies })
}

/// What a group is doing, as one phase and a sentence.
#[derive(Debug, PartialEq, Eq)]
pub struct GroupStatus {
    /// Overall phase.
    pub phase: Phase,
    /// Whether no release of the group has anything left to do.
    pub settled: bool,
    /// What it is doing or how it ended.
    pub message: String,
}

/// Why a train member that was released cannot be returned to its previous version, if it
/// cannot: `newest_revision` is the newest revision of its service in the environment.
pub fn not_returnable(member: &Release, newest_revision: u64) -> Option<String> {
    if member.stable_artifact.is_none() {
        return Some(format!("{} had no previous version", member.service));
    }
    if newest_revision != member.revision {
        return Some(format!(
            "{} has a newer revision ({newest_revision}) than the train's ({})",
            member.service, member.revision
        ));
    }
    None
}

/// A group's status from its kind and its releases in execution order (a train's returns after
/// its members).
pub fn status(kind: &str, releases: &[Release]) -> GroupStatus {
    let settled = releases.iter().all(|r| r.phase.is_terminal() && r.settled);
    let (members, returns): (Vec<&Release>, Vec<&Release>) = releases.iter().partition(|r| r.returns_release.is_none());
    if let Some(ended) = members.iter().find(|m| m.phase.is_terminal() && m.phase != Phase::Succeeded) {
        let mut message =
            format!("{} {} ended {}: {}", ended.service, ended.artifact, ended.phase.as_str(), ended.message);
        let returned: Vec<String> = returns
            .iter()
            .map(|r| {
                let state = if r.phase.is_terminal() { r.phase.as_str() } else { "running" };
                format!("{} to {} ({state})", r.service, r.artifact)
            })
            .collect();
        if !returned.is_empty() {
            let verb = if settled { "returned" } else { "returning" };
            message.push_str(&format!("; {verb} {}", returned.join(", ")));
        }
        // A train's returns are all created when it ends: a released member without one stays.
        if kind == TRAIN {
            let kept: Vec<String> = members
                .iter()
                .filter(|m| m.phase == Phase::Succeeded && !returns.iter().any(|r| r.returns_release == Some(m.id)))
                .map(|m| {
                    let why = if m.stable_artifact.is_none() { "no previous version" } else { "replaced since" };
                    format!("{} ({why})", m.service)
                })
                .collect();
            if !kept.is_empty() {
                message.push_str(&format!("; not returned: {}", kept.join(", ")));
            }
        }
        return GroupStatus { phase: Phase::Aborted, settled, message };
    }
    if members.iter().all(|m| m.phase == Phase::Succeeded) {
        let message = format!("all {} released", members.len());
        return GroupStatus { phase: Phase::Succeeded, settled, message };
    }
    let (position, current) = members
        .iter()
        .enumerate()
        .find(|(_, m)| !m.phase.is_terminal() && m.phase != Phase::Pending)
        .or_else(|| members.iter().enumerate().find(|(_, m)| !m.phase.is_terminal()))
        .expect("a member that has not ended");
    let phase = match current.phase {
        Phase::Pending if position == 0 => Phase::Pending,
        Phase::Paused | Phase::AwaitingApproval => current.phase,
        _ => Phase::Progressing,
    };
    let message =
        format!("{}/{}: {} {}: {}", position + 1, members.len(), current.service, current.artifact, current.message);
    GroupStatus { phase, settled, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
environments: [{name: staging}]
services:
  - {name: auth-service, strategy: {canary: {steps: [{setWeight: 50}]}}}
  - {name: booking-service, dependsOn: [auth-service], strategy: {canary: {steps: [{setWeight: 50}]}}}
  - {name: gateway, dependsOn: [auth-service], strategy: {canary: {steps: [{setWeight: 50}]}}}
  - {name: frontend, strategy: {canary: {steps: [{setWeight: 50}]}}}
"#;

    fn config() -> DeliveryConfig {
        DeliveryConfig::load(CONFIG).expect("config")
    }

    fn members<'a>(asked: &'a [(&'a str, &'a str, Vec<String>)]) -> Vec<MemberRequest<'a>> {
        asked.iter().map(|(s, a, d)| MemberRequest { service: s, artifact: a, depends_on: d }).collect()
    }

    fn deps(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn refused(asked: &[(&str, &str, Vec<String>)]) -> String {
        let p = order(&config(), &members(asked)).unwrap_err();
        format!("{}: {}", p.path, p.message)
    }

    #[test]
    fn members_run_after_what_they_depend_on_and_otherwise_in_the_order_asked() {
        let asked = [
            ("booking-service", "1.4.0", deps(&[])),
            ("frontend", "3.0.0", deps(&["gateway"])),
            ("gateway", "2.0.0", deps(&[])),
            ("auth-service", "2.1.0", deps(&[])),
        ];
        let o = order(&config(), &members(&asked)).unwrap();
        // booking and gateway wait for auth (config); frontend for gateway (request).
        assert_eq!(o.order, vec![3, 0, 2, 1]);
        let shown: Vec<(String, Vec<String>)> = o.dependencies.into_iter().map(|d| (d.service, d.depends_on)).collect();
        assert_eq!(
            shown,
            vec![
                ("auth-service".into(), vec![]),
                ("booking-service".into(), deps(&["auth-service"])),
                ("gateway".into(), deps(&["auth-service"])),
                ("frontend".into(), deps(&["gateway"])),
            ]
        );
        // A config dependency on a service outside the train is already in the environment.
        let alone = [("booking-service", "1.4.0", deps(&[]))];
        let o = order(&config(), &members(&alone)).unwrap();
        assert_eq!((o.order, o.dependencies[0].depends_on.len()), (vec![0], 0));
    }

    #[test]
    fn bad_members_are_refused_where_they_are_written() {
        assert_eq!(refused(&[]), "members: a train needs at least one member");
        assert_eq!(
            refused(&[("auth-service", "2.1.0", deps(&[])), ("payments", "1.0.0", deps(&[]))]),
            "members[1].service: unknown service \"payments\" (known: auth-service, booking-service, gateway, frontend)"
        );
        assert_eq!(
            refused(&[("auth-service", "2.1.0", deps(&[])), ("auth-service", "2.2.0", deps(&[]))]),
            "members[1].service: \"auth-service\" is already members[0]"
        );
        assert_eq!(refused(&[("auth-service", "", deps(&[]))]), "members[0].artifact: must not be empty");
        assert_eq!(
            refused(&[("auth-service", "2.1.0", deps(&["frontend"]))]),
            "members[0].depends_on[0]: \"frontend\" is not a member of this train"
        );
        assert_eq!(
            refused(&[("auth-service", "2.1.0", deps(&["auth-service"]))]),
            "members[0].depends_on[0]: a member cannot depend on itself"
        );
        // auth → booking (asked) and booking → auth (config): the asked edge closes the cycle.
        assert_eq!(
            refused(&[("booking-service", "1.4.0", deps(&[])), ("auth-service", "2.1.0", deps(&["booking-service"]))]),
            "members[1].depends_on[0]: dependency cycle: booking-service → auth-service → booking-service"
        );
        assert_eq!(
            refused(&[("frontend", "3.0.0", deps(&["gateway"])), ("gateway", "2.0.0", deps(&["frontend"]))]),
            "members[0].depends_on[0]: dependency cycle: frontend → gateway → frontend"
        );
        let many: Vec<(String, &str, Vec<String>)> =
            (0..=MAX_MEMBERS).map(|i| (format!("s{i}"), "1", Vec::new())).collect();
        let many: Vec<MemberRequest<'_>> =
            many.iter().map(|(s, a, d)| MemberRequest { service: s, artifact: a, depends_on: d }).collect();
        assert_eq!(order(&config(), &many).unwrap_err().message, "51 members; at most 50 are allowed");
    }

    fn member(service: &str, artifact: &str, phase: Phase, settled: bool) -> Release {
        let plan = crate::domain::plan::compile(&config(), service, "staging", crate::domain::plan::PlanMode::Normal)
            .expect("plan");
        let mut r = Release::new(crate::domain::release::NewRelease {
            id: uuid::Uuid::now_v7(),
            service: service.into(),
            environment: "staging".into(),
            revision: 2,
            artifact: artifact.into(),
            created_by: "alice".into(),
            now: time::OffsetDateTime::UNIX_EPOCH,
            config_version: 1,
            plan,
            stable_artifact: Some("1.0.0".into()),
            undo_of_revision: None,
            group_id: None,
            returns_release: None,
            reason: String::new(),
        });
        r.phase = phase;
        r.settled = settled;
        r.message = format!("{service} is {}", phase.as_str());
        r
    }

    #[test]
    fn a_group_is_what_its_running_member_is_and_aborted_as_soon_as_one_ends_otherwise() {
        let auth = |p, s| member("auth-service", "2.1.0", p, s);
        let booking = |p, s| member("booking-service", "1.4.0", p, s);
        let s = status(TRAIN, &[auth(Phase::Pending, false), booking(Phase::Pending, false)]);
        assert_eq!((s.phase, s.settled), (Phase::Pending, false));
        let s = status(TRAIN, &[auth(Phase::AwaitingApproval, false), booking(Phase::Pending, false)]);
        assert_eq!(s.phase, Phase::AwaitingApproval);
        assert_eq!(s.message, "1/2: auth-service 2.1.0: auth-service is AWAITING_APPROVAL");
        let s = status(TRAIN, &[auth(Phase::Succeeded, true), booking(Phase::Pending, false)]);
        assert_eq!(
            (s.phase, s.message.as_str()),
            (Phase::Progressing, "2/2: booking-service 1.4.0: booking-service is PENDING")
        );
        let s = status(TRAIN, &[auth(Phase::Succeeded, true), booking(Phase::Paused, false)]);
        assert_eq!(s.phase, Phase::Paused);
        // booking fails: the train is aborted at once, and settled only once auth is back.
        let released = auth(Phase::Succeeded, true);
        let mut back = member("auth-service", "2.0.0", Phase::Progressing, false);
        back.returns_release = Some(released.id);
        let failed = booking(Phase::Aborted, true);
        let s = status(TRAIN, &[released.clone(), failed.clone(), back.clone()]);
        assert_eq!((s.phase, s.settled), (Phase::Aborted, false));
        assert_eq!(
            s.message,
            "booking-service 1.4.0 ended ABORTED: booking-service is ABORTED; returning auth-service to 2.0.0 (running)"
        );
        back.phase = Phase::Succeeded;
        back.settled = true;
        let s = status(TRAIN, &[released, failed, back]);
        assert_eq!((s.phase, s.settled), (Phase::Aborted, true));
        assert!(s.message.ends_with("; returned auth-service to 2.0.0 (SUCCEEDED)"), "{}", s.message);
        let s = status(TRAIN, &[auth(Phase::Succeeded, true), booking(Phase::Succeeded, true)]);
        assert_eq!((s.phase, s.settled, s.message.as_str()), (Phase::Succeeded, true, "all 2 released"));
        // A released member that could not be returned is named; a rollback has no returns.
        let mut first = auth(Phase::Succeeded, true);
        first.stable_artifact = None;
        let s = status(TRAIN, &[first.clone(), booking(Phase::Aborted, true)]);
        assert!(s.message.ends_with("; not returned: auth-service (no previous version)"), "{}", s.message);
        let s = status("rollback-environment", &[first, booking(Phase::Aborted, true)]);
        assert!(!s.message.contains("not returned"), "{}", s.message);
    }

    #[test]
    fn a_member_without_a_previous_version_or_replaced_since_is_not_returned() {
        let mut m = member("auth-service", "2.1.0", Phase::Succeeded, true);
        assert_eq!(not_returnable(&m, 2), None);
        assert_eq!(
            not_returnable(&m, 3).as_deref(),
            Some("auth-service has a newer revision (3) than the train's (2)")
        );
        m.stable_artifact = None;
        assert_eq!(not_returnable(&m, 2).as_deref(), Some("auth-service had no previous version"));
    }
}
