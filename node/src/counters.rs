//! Counts of refused requests and withheld attributes, by reason, shown in
//! `GetStatus`. Both transports, the API and the driver count here, each
//! refusal under its [`Reason`], so an operator sees one table.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::core::reason::Reason;

/// Refusal and withholding counters (a few dozen names at most: the
/// reasons, and one per withholding code of the catalogue's answers).
#[derive(Debug, Default)]
pub struct Counters(Mutex<BTreeMap<String, u64>>);

impl Counters {
    /// Counts one refusal for `reason`.
    pub fn count(&self, reason: Reason) {
        self.count_name(reason.as_str());
    }

    /// Counts one attribute withheld with a data answer's `code`
    /// (`withheld_not_found`, ...).
    pub fn count_withheld(&self, code: &str) {
        self.count_name(&format!("withheld_{}", code.replace('-', "_")));
    }

    fn count_name(&self, name: &str) {
        let mut counters = match self.0.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *counters.entry(name.to_owned()).or_insert(0) += 1;
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        match self.0.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}
