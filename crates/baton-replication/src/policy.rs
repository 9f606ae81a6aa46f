//! The choice of the node a run of a replicated data set is backed up
//! from: a pure function of the data set's policy and what each node
//! holding a copy last reported, shared by the director (which decides
//! and records) and anyone who wants to explain a decision again.
//!
//! A secondary is **usable** when its node reports, its server answers,
//! it streams from its primary (and the primary, if it reports, streams
//! to a secondary), and its replay lag is within the bounds. The primary
//! is usable when its node reports, its server answers and its CPU use is
//! within the bound. Then:
//!
//! | policy | a usable secondary | else |
//! |---|---|---|
//! | `primary-only` | (not used) | the primary if usable, else refused |
//! | `secondary-only` | it | refused |
//! | `prefer-secondary` | it | the primary if usable (a fallback), else refused |
//! | `primary-if-secondary-unavailable` | it | the primary (a fallback) only if no secondary node is available (not reporting, or its server down); a secondary that is up but unhealthy or behind is refused |
//!
//! A data set with one node is not replicated: that node's job backs it
//! up whatever the policy (`only-copy`).

use baton_wire::{Dataset, DatasetRole, DecisionInput, SourcePolicy};

/// The outcome of a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// The agent that backs the data set up (none: refused).
    pub chosen: Option<String>,
    /// `secondary`, `primary`, `fallback`, `only-copy` or `refused`.
    pub outcome: &'static str,
    pub reason: String,
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Why node `i` cannot serve at all (not reporting, its server down).
fn unavailable(i: &DecisionInput) -> Option<String> {
    if !i.reporting {
        return Some(match i.age_s {
            Some(a) => format!("{} is not reporting (last report {a} s ago)", i.agent),
            None => format!("{} has not reported", i.agent),
        });
    }
    match &i.status {
        None => Some(format!("{} reported nothing of this data set", i.agent)),
        Some(s) if !s.available => Some(format!(
            "{}'s server does not answer ({})",
            i.agent,
            s.error.as_deref().unwrap_or("no reason given")
        )),
        Some(_) => None,
    }
}

/// Chooses the node for a run of `ds` from what its nodes reported.
pub fn decide(ds: &Dataset, inputs: &[DecisionInput]) -> Choice {
    let refused = |reason: String| Choice {
        chosen: None,
        outcome: "refused",
        reason,
    };
    if inputs.len() == 1 {
        let only = &inputs[0];
        return Choice {
            chosen: Some(only.agent.clone()),
            outcome: "only-copy",
            reason: format!(
                "data set {} has one node ({}): it is not replicated, and its own job backs it up",
                ds.name, only.agent
            ),
        };
    }
    if inputs.is_empty() {
        return refused(format!("no job names data set {}", ds.name));
    }
    let role_of = |i: &DecisionInput| {
        i.status
            .as_ref()
            .filter(|s| s.available && i.reporting)
            .map(|s| s.role)
    };
    let primaries: Vec<&DecisionInput> = inputs
        .iter()
        .filter(|i| role_of(i) == Some(DatasetRole::Primary))
        .collect();
    if primaries.len() > 1 {
        let names: Vec<&str> = primaries.iter().map(|i| i.agent.as_str()).collect();
        return refused(format!(
            "{} all say they are the primary of {}: not backed up until one is",
            names.join(" and "),
            ds.name
        ));
    }
    let primary = primaries.first().copied();
    // The primary's view: a primary that reports no streaming secondary
    // means replication is broken, whatever a secondary believes.
    let primary_streams = primary
        .and_then(|p| p.status.as_ref())
        .is_none_or(|s| s.replicated);

    // Secondaries: usable ones, the least behind first; and why the
    // others are not.
    let mut usable: Vec<(&DecisionInput, u64)> = Vec::new();
    let mut why_not: Vec<String> = Vec::new();
    let mut secondary_up = false;
    for i in inputs {
        if primary.is_some_and(|p| p.agent == i.agent) {
            continue;
        }
        if let Some(r) = unavailable(i) {
            why_not.push(r);
            continue;
        }
        let s = i.status.as_ref().expect("available means reported");
        if s.role != DatasetRole::Secondary {
            why_not.push(format!("{} does not say it is a secondary", i.agent));
            continue;
        }
        secondary_up = true;
        if !s.replicated {
            why_not.push(format!("{} is not streaming from its primary", i.agent));
            continue;
        }
        if !primary_streams {
            why_not.push(format!(
                "the primary {} has no streaming secondary",
                primary.map_or("", |p| p.agent.as_str())
            ));
            continue;
        }
        let lag_b = s.lag_bytes.unwrap_or(0);
        let lag_s = s.lag_s.unwrap_or(0.0);
        if let Some(max) = ds.max_lag_bytes
            && lag_b > max
        {
            why_not.push(format!(
                "{}'s replay lag {} is above the bound {}",
                i.agent,
                bytes(lag_b),
                bytes(max)
            ));
            continue;
        }
        if let Some(max) = ds.max_lag_s
            && lag_s > max
        {
            why_not.push(format!(
                "{}'s replay lag {lag_s:.1} s is above the bound {max:.1} s",
                i.agent
            ));
            continue;
        }
        usable.push((i, lag_b));
    }
    usable.sort_by_key(|(i, lag)| (*lag, i.agent.clone()));

    let primary_use: Result<&DecisionInput, String> = match primary {
        None => Err(
            match inputs.iter().find_map(|i| {
                // A node whose last word was "primary", now down.
                (i.status.as_ref().map(|s| s.role) == Some(DatasetRole::Primary))
                    .then(|| unavailable(i))
                    .flatten()
            }) {
                Some(r) => format!("the primary cannot be used: {r}"),
                None => "no node reports the primary role".to_string(),
            },
        ),
        Some(p) => match (ds.primary_cpu_max, p.cpu_percent) {
            (Some(max), Some(cpu)) if cpu > max => Err(format!(
                "the primary {}'s CPU use {cpu:.0}% is above the bound {max:.0}%",
                p.agent
            )),
            _ => Ok(p),
        },
    };

    let secondary = |(i, lag): (&DecisionInput, u64)| {
        let s = i.status.as_ref().expect("usable means reported");
        Choice {
            chosen: Some(i.agent.clone()),
            outcome: "secondary",
            reason: format!(
                "secondary {} streams with a replay lag of {} and {:.1} s (bounds {} and {}): backed up there, the primary untouched",
                i.agent,
                bytes(lag),
                s.lag_s.unwrap_or(0.0),
                ds.max_lag_bytes.map_or("none".to_string(), bytes),
                ds.max_lag_s
                    .map_or("none".to_string(), |m| format!("{m:.1} s")),
            ),
        }
    };
    let no_secondary = if why_not.is_empty() {
        "no secondary".to_string()
    } else {
        why_not.join("; ")
    };
    let fallback = |p: &DecisionInput| Choice {
        chosen: Some(p.agent.clone()),
        outcome: "fallback",
        reason: format!(
            "no secondary can be used ({no_secondary}); policy {} falls back to the primary {}",
            ds.policy.as_str(),
            p.agent
        ),
    };
    match ds.policy {
        SourcePolicy::PrimaryOnly => match primary_use {
            Ok(p) => Choice {
                chosen: Some(p.agent.clone()),
                outcome: "primary",
                reason: format!("policy primary-only: the primary {}", p.agent),
            },
            Err(e) => refused(format!("policy primary-only, and {e}")),
        },
        SourcePolicy::SecondaryOnly => match usable.first() {
            Some(&u) => secondary(u),
            None => refused(format!(
                "policy secondary-only, and no secondary can be used: {no_secondary}"
            )),
        },
        SourcePolicy::PreferSecondary => match (usable.first(), primary_use) {
            (Some(&u), _) => secondary(u),
            (None, Ok(p)) => fallback(p),
            (None, Err(e)) => refused(format!(
                "no secondary can be used ({no_secondary}), and {e}"
            )),
        },
        SourcePolicy::PrimaryIfSecondaryUnavailable => match (usable.first(), primary_use) {
            (Some(&u), _) => secondary(u),
            (None, _) if secondary_up => refused(format!(
                "policy primary-if-secondary-unavailable: a secondary is up but cannot be used ({no_secondary}); the primary is kept for when no secondary is available"
            )),
            (None, Ok(p)) => fallback(p),
            (None, Err(e)) => refused(format!(
                "no secondary is available ({no_secondary}), and {e}"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_wire::DatasetStatus;

    fn ds(policy: SourcePolicy) -> Dataset {
        Dataset {
            name: "pg".into(),
            kind: "postgres".into(),
            policy,
            primary_cpu_max: Some(80.0),
            max_lag_bytes: Some(16 << 20),
            max_lag_s: Some(30.0),
        }
    }

    fn node(agent: &str, role: DatasetRole, cpu: f64) -> DecisionInput {
        DecisionInput {
            agent: agent.into(),
            reporting: true,
            age_s: Some(1),
            cpu_percent: Some(cpu),
            status: Some(DatasetStatus {
                dataset: "pg".into(),
                kind: "postgres".into(),
                available: true,
                role,
                replicated: true,
                lag_bytes: Some(0),
                lag_s: Some(0.0),
                position: Some("0/3000000".into()),
                error: None,
            }),
        }
    }

    /// The conditions of the decision table.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Cond {
        Healthy,
        StandbyStopped,
        StandbyNodeDown,
        ReplicationBroken,
        LagBytes,
        LagSeconds,
        PrimaryBusy,
        PrimaryDown,
    }

    fn world(c: Cond) -> Vec<DecisionInput> {
        let mut p = node("db-1", DatasetRole::Primary, 10.0);
        let mut s = node("db-2", DatasetRole::Secondary, 10.0);
        match c {
            Cond::Healthy => {}
            Cond::StandbyStopped => {
                let st = s.status.as_mut().unwrap();
                st.available = false;
                st.role = DatasetRole::Unknown;
                st.error = Some("connection refused".into());
                p.status.as_mut().unwrap().replicated = false;
            }
            Cond::StandbyNodeDown => {
                s.reporting = false;
                s.age_s = Some(300);
            }
            Cond::ReplicationBroken => {
                s.status.as_mut().unwrap().replicated = false;
                p.status.as_mut().unwrap().replicated = false;
            }
            Cond::LagBytes => s.status.as_mut().unwrap().lag_bytes = Some(64 << 20),
            Cond::LagSeconds => s.status.as_mut().unwrap().lag_s = Some(120.0),
            Cond::PrimaryBusy => p.cpu_percent = Some(95.0),
            Cond::PrimaryDown => {
                let st = p.status.as_mut().unwrap();
                st.available = false;
                st.error = Some("connection refused".into());
                s.status.as_mut().unwrap().replicated = false;
            }
        }
        vec![p, s]
    }

    /// The whole decision table: every policy under every condition.
    #[test]
    fn every_policy_under_every_condition() {
        use Cond::*;
        use SourcePolicy::*;
        let s = Some("db-2");
        let p = Some("db-1");
        // (condition, policy, chosen, outcome)
        let table: &[(Cond, SourcePolicy, Option<&str>, &str)] = &[
            (Healthy, PrimaryOnly, p, "primary"),
            (Healthy, SecondaryOnly, s, "secondary"),
            (Healthy, PreferSecondary, s, "secondary"),
            (Healthy, PrimaryIfSecondaryUnavailable, s, "secondary"),
            (StandbyStopped, PrimaryOnly, p, "primary"),
            (StandbyStopped, SecondaryOnly, None, "refused"),
            (StandbyStopped, PreferSecondary, p, "fallback"),
            (StandbyStopped, PrimaryIfSecondaryUnavailable, p, "fallback"),
            (StandbyNodeDown, PrimaryOnly, p, "primary"),
            (StandbyNodeDown, SecondaryOnly, None, "refused"),
            (StandbyNodeDown, PreferSecondary, p, "fallback"),
            (
                StandbyNodeDown,
                PrimaryIfSecondaryUnavailable,
                p,
                "fallback",
            ),
            (ReplicationBroken, PrimaryOnly, p, "primary"),
            (ReplicationBroken, SecondaryOnly, None, "refused"),
            (ReplicationBroken, PreferSecondary, p, "fallback"),
            (
                ReplicationBroken,
                PrimaryIfSecondaryUnavailable,
                None,
                "refused",
            ),
            (LagBytes, PrimaryOnly, p, "primary"),
            (LagBytes, SecondaryOnly, None, "refused"),
            (LagBytes, PreferSecondary, p, "fallback"),
            (LagBytes, PrimaryIfSecondaryUnavailable, None, "refused"),
            (LagSeconds, PrimaryOnly, p, "primary"),
            (LagSeconds, SecondaryOnly, None, "refused"),
            (LagSeconds, PreferSecondary, p, "fallback"),
            (LagSeconds, PrimaryIfSecondaryUnavailable, None, "refused"),
            (PrimaryBusy, PrimaryOnly, None, "refused"),
            (PrimaryBusy, SecondaryOnly, s, "secondary"),
            (PrimaryBusy, PreferSecondary, s, "secondary"),
            (PrimaryBusy, PrimaryIfSecondaryUnavailable, s, "secondary"),
            (PrimaryDown, PrimaryOnly, None, "refused"),
            (PrimaryDown, SecondaryOnly, None, "refused"),
            (PrimaryDown, PreferSecondary, None, "refused"),
            (PrimaryDown, PrimaryIfSecondaryUnavailable, None, "refused"),
        ];
        for &(c, policy, chosen, outcome) in table {
            let got = decide(&ds(policy), &world(c));
            assert_eq!(
                (got.chosen.as_deref(), got.outcome),
                (chosen, outcome),
                "{c:?} under {}: {}",
                policy.as_str(),
                got.reason
            );
            assert!(!got.reason.is_empty());
        }
    }

    #[test]
    fn a_busy_primary_is_not_a_fallback_and_the_reason_says_why() {
        let mut w = world(Cond::StandbyStopped);
        w[0].cpu_percent = Some(99.0);
        let got = decide(&ds(SourcePolicy::PreferSecondary), &w);
        assert_eq!(got.outcome, "refused");
        assert!(got.reason.contains("CPU use 99%"), "{}", got.reason);
        assert!(
            got.reason.contains("db-2's server does not answer"),
            "{}",
            got.reason
        );
    }

    #[test]
    fn the_least_behind_secondary_is_chosen_and_two_primaries_are_refused() {
        let mut w = world(Cond::Healthy);
        let mut s3 = node("db-3", DatasetRole::Secondary, 1.0);
        w[1].status.as_mut().unwrap().lag_bytes = Some(1 << 20);
        s3.status.as_mut().unwrap().lag_bytes = Some(4096);
        w.push(s3);
        let got = decide(&ds(SourcePolicy::SecondaryOnly), &w);
        assert_eq!(got.chosen.as_deref(), Some("db-3"), "{}", got.reason);
        let mut split = world(Cond::Healthy);
        split[1].status.as_mut().unwrap().role = DatasetRole::Primary;
        let got = decide(&ds(SourcePolicy::PrimaryOnly), &split);
        assert_eq!(got.outcome, "refused");
        assert!(
            got.reason.contains("say they are the primary"),
            "{}",
            got.reason
        );
    }

    #[test]
    fn a_data_set_with_one_node_is_backed_up_by_it_whatever_the_policy() {
        let w = vec![node("db-1", DatasetRole::Primary, 99.0)];
        for policy in [SourcePolicy::SecondaryOnly, SourcePolicy::PrimaryOnly] {
            let got = decide(&ds(policy), &w);
            assert_eq!(
                (got.chosen.as_deref(), got.outcome),
                (Some("db-1"), "only-copy")
            );
        }
    }
}
