//! Running the checker to completion and reading its verdict, shared by
//! the tests.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

use stateright::{Checker, CheckerBuilder, Expectation, HasDiscoveries, Model, Path};

/// What one exhaustive run found.
pub struct Outcome<M: Model> {
    /// The model that was checked, for rendering its traces.
    pub model: M,
    /// Distinct states visited.
    pub unique_states: usize,
    /// Transitions explored (states generated, duplicates included).
    pub generated: usize,
    /// The longest path explored.
    pub max_depth: usize,
    /// How long the check took.
    pub elapsed: Duration,
    /// Property name to the path that reached it: a counterexample for
    /// `always`, an example for `sometimes`.
    pub discoveries: BTreeMap<&'static str, Path<M::State, M::Action>>,
}

impl<M> Outcome<M>
where
    M: Model,
{
    /// The `always` properties that have a counterexample.
    pub fn violated(&self) -> Vec<&'static str> {
        self.model
            .properties()
            .iter()
            .filter(|p| p.expectation == Expectation::Always)
            .filter(|p| self.discoveries.contains_key(p.name))
            .map(|p| p.name)
            .collect()
    }

    /// The `sometimes` properties never reached.
    pub fn unreached(&self) -> Vec<&'static str> {
        self.model
            .properties()
            .iter()
            .filter(|p| p.expectation == Expectation::Sometimes)
            .filter(|p| !self.discoveries.contains_key(p.name))
            .map(|p| p.name)
            .collect()
    }

    /// One line for the test log.
    pub fn summary(&self, label: &str) -> String {
        format!(
            "{label}: {} states visited ({} generated, depth {}) in {:.2?}",
            self.unique_states, self.generated, self.max_depth, self.elapsed
        )
    }
}

/// Breadth-first search over every reachable state, on one thread so that
/// each counterexample is a shortest one. It stops early only when every
/// property has a discovery.
pub fn exhaustive<M>(model: M) -> Outcome<M>
where
    M: Model + Clone + Send + Sync + 'static,
    M::State: Clone + Debug + Hash + PartialEq + Send + Sync + 'static,
    M::Action: Clone + Debug + PartialEq,
{
    run(model.clone().checker(), model)
}

/// Breadth-first search that stops at the first state breaking (or, for a
/// `sometimes`, showing) `property`: its path is a shortest one, give or
/// take a step (the checker looks at its discoveries once per batch of
/// states). Running on would record a sticky violation again, on longer
/// paths, for every state after it.
pub fn until<M>(model: M, property: &'static str) -> Outcome<M>
where
    M: Model + Clone + Send + Sync + 'static,
    M::State: Clone + Debug + Hash + PartialEq + Send + Sync + 'static,
    M::Action: Clone + Debug + PartialEq,
{
    let finish = HasDiscoveries::AnyOf([property].into_iter().collect());
    run(model.clone().checker().finish_when(finish), model)
}

fn run<M>(builder: CheckerBuilder<M>, model: M) -> Outcome<M>
where
    M: Model + Clone + Send + Sync + 'static,
    M::State: Clone + Debug + Hash + PartialEq + Send + Sync + 'static,
    M::Action: Clone + Debug + PartialEq,
{
    let started = Instant::now();
    let checker = builder.spawn_bfs().join();
    let elapsed = started.elapsed();
    assert!(checker.is_done(), "the checker stopped before the end");
    Outcome {
        unique_states: checker.unique_state_count(),
        generated: checker.state_count(),
        max_depth: checker.max_depth(),
        elapsed,
        discoveries: checker.discoveries().into_iter().collect(),
        model,
    }
}
