//! Scenario files of `mim4-testnet run`: any text is parsed and checked whole
//! or refused with an error before anything runs.
//!
//! Invariants: nothing panics; a parsed scenario has at least one step and
//! every step has a name.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mim4_testnet::scenario::Scenario;

fuzz_target!(|text: &str| {
    if let Ok(scenario) = Scenario::parse(text) {
        assert!(!scenario.steps.is_empty());
        assert!(scenario.steps.len() <= mim4_testnet::scenario::STEPS_MAX);
        // Names may be anything a TOML string holds, but they are never absent.
        let _ = scenario.steps.iter().map(|s| s.name.len()).sum::<usize>();
    }
});
