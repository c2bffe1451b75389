use super::*;

fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

fn script(version: &str, description: &str, checksum: i32) -> ResolvedMigration {
    ResolvedMigration {
        version: Some(v(version)),
        description: description.into(),
        kind: MigrationType::Sql,
        script: format!("V{version}__{}.sql", description.replace(' ', "_")),
        checksum,
        equivalent_checksum: None,
    }
}

fn repeatable(description: &str, checksum: i32) -> ResolvedMigration {
    ResolvedMigration {
        version: None,
        description: description.into(),
        kind: MigrationType::Sql,
        script: format!("R__{description}.sql"),
        checksum,
        equivalent_checksum: None,
    }
}

fn row(
    rank: i32,
    version: Option<&str>,
    description: &str,
    kind: MigrationType,
    checksum: Option<i32>,
    success: bool,
) -> AppliedMigration {
    AppliedMigration {
        rank,
        version: version.map(v),
        description: description.into(),
        kind,
        script: match version {
            Some(ver) => format!("V{ver}__{}.sql", description.replace(' ', "_")),
            None => format!("R__{description}.sql"),
        },
        checksum,
        installed_by: "app".into(),
        installed_on: time::macros::datetime!(2026-01-01 00:00:00 UTC),
        execution_time: 1,
        success,
    }
}

fn applied(rank: i32, version: &str, description: &str, checksum: i32) -> AppliedMigration {
    row(rank, Some(version), description, MigrationType::Sql, Some(checksum), true)
}

fn states(set: &InfoSet) -> Vec<(String, State)> {
    set.infos
        .iter()
        .map(|i| {
            (
                set.version_of(i).map(|v| v.text().to_string()).unwrap_or_else(|| set.description_of(i).to_string()),
                i.state,
            )
        })
        .collect()
}

fn codes(set: &InfoSet) -> Vec<&'static str> {
    set.validate().into_iter().map(|(_, code, _)| code).collect()
}

fn st(pairs: &[(&str, State)]) -> Vec<(String, State)> {
    pairs.iter().map(|(a, b)| (a.to_string(), *b)).collect()
}

#[test]
fn applied_and_pending_in_flyway_order() {
    let set = InfoSet::compute(
        vec![repeatable("views", 7), script("1", "init", 1), script("2", "more", 2), script("1.10", "later", 3)],
        vec![applied(1, "1", "init", 1)],
        Options::default(),
    )
    .unwrap();
    // 1.10 < 2 numerically; repeatables after every versioned migration.
    assert_eq!(
        states(&set),
        st(&[("1", State::Success), ("1.10", State::Pending), ("2", State::Pending), ("views", State::Pending)])
    );
    assert_eq!(set.current_version(), "1");
    assert_eq!(
        codes(&set),
        vec!["RESOLVED_VERSIONED_MIGRATION_NOT_APPLIED"; 2]
            .into_iter()
            .chain(["RESOLVED_REPEATABLE_MIGRATION_NOT_APPLIED"])
            .collect::<Vec<_>>()
    );
    let mut opts = Options::default();
    opts.ignore.push(IgnorePattern::parse("*:pending").unwrap());
    let set = InfoSet::compute(set.resolved, set.applied, opts).unwrap();
    assert!(codes(&set).is_empty());
}

#[test]
fn checksum_and_description_mismatch() {
    let set =
        InfoSet::compute(vec![script("1", "init", 99)], vec![applied(1, "1", "init", 1)], Options::default()).unwrap();
    let problems = set.validate();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].1, "CHECKSUM_MISMATCH");
    assert_eq!(
        problems[0].2,
        "Migration checksum mismatch for migration version 1\n-> Applied to database : 1\n-> Resolved locally    : 99. Either revert the changes to the migration, or run repair to update the schema history."
    );
    let set = InfoSet::compute(vec![script("1", "init db", 1)], vec![applied(1, "1", "init", 1)], Options::default())
        .unwrap();
    assert_eq!(codes(&set), vec!["DESCRIPTION_MISMATCH"]);
}

#[test]
fn missing_future_and_failed() {
    let rows = vec![applied(1, "1", "a", 1), applied(2, "2", "b", 2), applied(3, "3", "c", 3)];
    // V2's script is gone: missing. V3 is newer than every script: future (ignored by default).
    let set = InfoSet::compute(vec![script("1", "a", 1)], rows.clone(), Options::default()).unwrap();
    assert_eq!(states(&set), st(&[("1", State::Success), ("2", State::FutureSuccess), ("3", State::FutureSuccess)]));
    assert!(codes(&set).is_empty(), "*:future is ignored by default");
    let set =
        InfoSet::compute(vec![script("1", "a", 1), script("3", "c", 3)], rows.clone(), Options::default()).unwrap();
    assert_eq!(states(&set), st(&[("1", State::Success), ("2", State::MissingSuccess), ("3", State::Success)]));
    let problems = set.validate();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].1, "APPLIED_VERSIONED_MIGRATION_NOT_RESOLVED");
    assert!(problems[0].2.starts_with("Detected applied migration not resolved locally: 2."));
    let no_ignore = Options { ignore: vec![], ..Options::default() };
    let set = InfoSet::compute(vec![script("1", "a", 1)], rows, no_ignore).unwrap();
    assert_eq!(codes(&set), vec!["APPLIED_VERSIONED_MIGRATION_NOT_RESOLVED"; 2]);

    let failed = vec![applied(1, "1", "a", 1), row(2, Some("2"), "b", MigrationType::Sql, Some(2), false)];
    let set = InfoSet::compute(vec![script("1", "a", 1), script("2", "b", 2)], failed, Options::default()).unwrap();
    assert_eq!(states(&set), st(&[("1", State::Success), ("2", State::Failed)]));
    let problems = set.validate();
    assert_eq!(problems[0].1, "FAILED_VERSIONED_MIGRATION");
    assert!(problems[0].2.starts_with("Detected failed migration to version 2 (b)."));
}

#[test]
fn out_of_order() {
    let scripts = vec![script("1", "a", 1), script("2", "b", 2), script("3", "c", 3)];
    let rows = vec![applied(1, "1", "a", 1), applied(2, "3", "c", 3)];
    let set = InfoSet::compute(scripts.clone(), rows.clone(), Options::default()).unwrap();
    assert_eq!(states(&set), st(&[("1", State::Success), ("3", State::Success), ("2", State::Ignored)]));
    let problems = set.validate();
    assert_eq!(problems[0].1, "RESOLVED_VERSIONED_MIGRATION_NOT_APPLIED");
    assert!(problems[0].2.contains("To allow executing this migration, set -outOfOrder=true."));
    let set =
        InfoSet::compute(scripts.clone(), rows.clone(), Options { out_of_order: true, ..Options::default() }).unwrap();
    assert_eq!(set.pending().len(), 1);
    let mut rows = rows;
    rows.push(applied(3, "2", "b", 2));
    let set = InfoSet::compute(scripts, rows, Options::default()).unwrap();
    assert_eq!(states(&set), st(&[("1", State::Success), ("3", State::Success), ("2", State::OutOfOrder)]));
    assert!(codes(&set).is_empty());
}

#[test]
fn repeatables_outdated_superseded_and_placeholder_equivalent() {
    let rows = vec![
        row(1, None, "views", MigrationType::Sql, Some(5), true),
        row(2, None, "views", MigrationType::Sql, Some(6), true),
    ];
    let set = InfoSet::compute(vec![repeatable("views", 7)], rows.clone(), Options::default()).unwrap();
    assert_eq!(
        states(&set),
        st(&[("views", State::Superseded), ("views", State::Outdated), ("views", State::Pending)])
    );
    let mut with_equivalent = repeatable("views", 7);
    with_equivalent.equivalent_checksum = Some(6);
    let set = InfoSet::compute(vec![with_equivalent], rows, Options::default()).unwrap();
    assert_eq!(states(&set), st(&[("views", State::Superseded), ("views", State::Success)]));
}

#[test]
fn deleted_rows_and_undo() {
    let scripts = vec![script("1", "a", 1), script("2", "b", 2)];
    let mut delete = row(3, Some("2"), "b", MigrationType::Delete, Some(2), true);
    let rows = vec![applied(1, "1", "a", 1), applied(2, "2", "b", 2), delete.clone()];
    let set = InfoSet::compute(scripts.clone(), rows, Options::default()).unwrap();
    assert_eq!(
        states(&set),
        st(&[("1", State::Success), ("2", State::Deleted), ("2", State::Success), ("2", State::Pending)])
    );
    assert_eq!(set.current_version(), "1");
    delete.script = "U2__undo_b.sql".into();
    let rows = vec![applied(1, "1", "a", 1), applied(2, "2", "b", 2), delete.clone()];
    let set = InfoSet::compute(scripts.clone(), rows, Options::default()).unwrap();
    assert_eq!(set.infos[1].state, State::Undone);
    let mut twice = vec![applied(1, "1", "a", 1), applied(2, "2", "b", 2), delete.clone()];
    let mut second = delete;
    second.rank = 4;
    twice.push(second);
    assert!(InfoSet::compute(scripts, twice, Options::default()).unwrap_err().contains("multiple delete entries"));
}

#[test]
fn baseline_marker() {
    let scripts = vec![script("1", "a", 1), script("2", "b", 2), script("3", "c", 3), script("4", "d", 4)];
    let marker = AppliedMigration {
        script: "<< Flyway Baseline >>".into(),
        checksum: None,
        ..row(1, Some("2"), "<< Flyway Baseline >>", MigrationType::Baseline, None, true)
    };
    let set = InfoSet::compute(scripts, vec![marker], Options::default()).unwrap();
    assert_eq!(
        states(&set),
        st(&[("1", State::BelowBaseline), ("2", State::Baseline), ("3", State::Pending), ("4", State::Pending)])
    );
    assert_eq!(set.current_version(), "2");
}

#[test]
fn baseline_scripts_replace_versioned_ones_on_an_empty_history() {
    let mut b = script("2", "snapshot", 20);
    b.kind = MigrationType::SqlBaseline;
    b.script = "B2__snapshot.sql".into();
    let scripts = vec![script("1", "a", 1), script("2", "b", 2), b, script("3", "c", 3)];
    let set = InfoSet::compute(scripts.clone(), vec![], Options::default()).unwrap();
    assert_eq!(
        states(&set),
        st(&[("1", State::BelowBaseline), ("2", State::BaselineIgnored), ("2", State::Pending), ("3", State::Pending)])
    );
    let applied_b = AppliedMigration {
        script: "B2__snapshot.sql".into(),
        ..row(1, Some("2"), "snapshot", MigrationType::SqlBaseline, Some(20), true)
    };
    let set = InfoSet::compute(scripts, vec![applied_b], Options::default()).unwrap();
    assert_eq!(
        states(&set),
        st(&[("1", State::BelowBaseline), ("2", State::BaselineIgnored), ("2", State::Success), ("3", State::Pending)])
    );
    let mut opts = Options::default();
    opts.ignore.push(IgnorePattern::parse("*:pending").unwrap());
    let set = InfoSet::compute(set.resolved, set.applied, opts).unwrap();
    assert!(codes(&set).is_empty(), "{:?}", set.validate());
}

#[test]
fn targets() {
    let scripts = vec![script("1", "a", 1), script("2", "b", 2), script("3", "c", 3)];
    let opts = Options { target: Target::parse("2").unwrap(), ..Options::default() };
    let set = InfoSet::compute(scripts.clone(), vec![], opts).unwrap();
    assert_eq!(states(&set), st(&[("1", State::Pending), ("2", State::Pending), ("3", State::AboveTarget)]));
    let opts = Options { target: Target::Next, ..Options::default() };
    let set = InfoSet::compute(scripts, vec![], opts).unwrap();
    assert_eq!(set.pending().len(), 1);
    assert!(Target::parse("x.y").is_err());
    assert_eq!(Target::parse("LATEST").unwrap(), Target::Latest);
}

#[test]
fn ignore_patterns() {
    assert!(IgnorePattern::parse("*:future").unwrap().matches(true, State::FutureSuccess));
    assert!(!IgnorePattern::parse("*:future").unwrap().matches(true, State::FutureFailed));
    assert!(IgnorePattern::parse("Repeatable:Missing").unwrap().matches(false, State::MissingSuccess));
    assert!(!IgnorePattern::parse("repeatable:missing").unwrap().matches(true, State::MissingSuccess));
    assert!(IgnorePattern::parse("future").unwrap_err().starts_with("Invalid pattern 'future'"));
    assert!(IgnorePattern::parse("all:future").unwrap_err().starts_with("Invalid migration type 'all'"));
    assert!(IgnorePattern::parse("*:gone").unwrap_err().starts_with("Invalid migration state 'gone'"));
}

#[test]
fn unknown_types_are_refused() {
    assert_eq!(MigrationType::parse("SPRING_JDBC"), Some(MigrationType::Jdbc));
    assert_eq!(MigrationType::parse("SQL_STATE_SCRIPT"), Some(MigrationType::SqlBaseline));
    assert_eq!(MigrationType::parse("FANCY"), None);
}
