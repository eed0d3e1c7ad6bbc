//! The order a queue starts its waiting batches in, beyond SPEC.md's
//! priorities: fair turns between tenants and their groups, and aging.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::{Interval, Priority, TenantName};

/// How a queue shares a priority between the requests waiting in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Fairness {
    /// SPEC.md's order: the oldest request first.
    #[default]
    Fifo,
    /// Tenants take turns (in proportion to their weights), and inside a
    /// tenant its groups do; each group's own work in SPEC.md's order.
    Tenant,
}

impl std::str::FromStr for Fairness {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fifo" => Ok(Self::Fifo),
            "tenant" => Ok(Self::Tenant),
            _ => Err(format!("unknown fairness {s:?}: `fifo` or `tenant`")),
        }
    }
}

/// A tenant's share of the turns: at most this many.
pub const MAX_WEIGHT: u32 = 1000;

/// The pass a turn costs a tenant of weight 1; a tenant of weight w pays
/// `TURN / w`, so it gets w turns for every one of a tenant of weight 1
/// (stride scheduling). Divisible by every weight up to 10, so the common
/// weights share exactly.
pub const TURN: i64 = 2_520_000;

/// The order a queue starts its batches in: a value that goes with every
/// claim, so the store applies the settings in force.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DispatchOrder {
    pub fairness: Fairness,
    /// Tenants' weights; a tenant not named (and requests without a tenant)
    /// weighs 1.
    pub weights: Arc<BTreeMap<TenantName, NonZeroU32>>,
    /// A batch that has waited longer than k × this is ranked k levels more
    /// urgent; `None`: no aging.
    pub aging: Option<Interval>,
}

impl DispatchOrder {
    /// The pass one turn costs `tenant` (its name as stored: `""` for none).
    pub fn stride(&self, tenant: &str) -> i64 {
        let weight = self.weights.get(tenant).map_or(1, |w| w.get());
        TURN / i64::from(weight)
    }

    /// The weights as two lists, tenant names and their strides.
    pub fn strides(&self) -> (Vec<String>, Vec<i64>) {
        self.weights
            .iter()
            .map(|(name, weight)| (name.to_string(), TURN / i64::from(weight.get())))
            .unzip()
    }

    /// How urgent a batch of `priority` ranks after waiting `waited`.
    pub fn effective_priority(&self, priority: Priority, waited: Duration) -> Priority {
        let Some(aging) = self.aging.filter(|aging| !aging.is_zero()) else {
            return priority;
        };
        let levels = waited.as_micros() / aging.as_duration().as_micros();
        let rank = priority.rank() - i64::try_from(levels).unwrap_or(i64::MAX).min(2);
        Priority::from_rank(rank.max(0)).unwrap_or(Priority::High)
    }

    /// The aging in microseconds, zero for none.
    pub fn aging_micros(&self) -> i64 {
        self.aging.map_or(0, Interval::as_micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(aging: &str, weights: &[(&str, u32)]) -> DispatchOrder {
        DispatchOrder {
            fairness: Fairness::Tenant,
            weights: Arc::new(
                weights
                    .iter()
                    .map(|(t, w)| (TenantName::parse(t).unwrap(), NonZeroU32::new(*w).unwrap()))
                    .collect(),
            ),
            aging: Some(aging.parse().unwrap()),
        }
    }

    #[test]
    fn a_weight_buys_turns_in_proportion() {
        let order = order("30s", &[("acme", 3)]);
        assert_eq!(order.stride("acme"), TURN / 3);
        assert_eq!(order.stride("other"), TURN);
        assert_eq!(order.stride(""), TURN);
        for w in 1..=10 {
            assert_eq!(TURN % w, 0, "weight {w} does not share exactly");
        }
    }

    #[test]
    fn waiting_raises_the_rank_a_level_per_aging_and_never_beyond_high() {
        use Priority::*;
        let order = order("30s", &[]);
        let s = Duration::from_secs;
        assert_eq!(order.effective_priority(Low, s(29)), Low);
        assert_eq!(order.effective_priority(Low, s(30)), Medium);
        assert_eq!(order.effective_priority(Low, s(60)), High);
        assert_eq!(order.effective_priority(Low, s(6000)), High);
        assert_eq!(order.effective_priority(Medium, s(31)), High);
        assert_eq!(order.effective_priority(High, s(6000)), High);
        let off = DispatchOrder::default();
        assert_eq!(off.effective_priority(Low, s(6000)), Low);
    }
}
