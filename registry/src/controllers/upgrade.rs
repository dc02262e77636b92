//! The apply-version finalizer: switches on newer apply semantics once every coordinator knows them.
//!
//! During a rolling upgrade old and new builds replicate one log; they compute the same state only while
//! they apply it by the same rules, so new rules wait behind [`APPLY_VERSION`]. This controller proposes
//! `SetApplyVersion` with the newest version every member's build knows, as the coordinator learns it by
//! asking them ([`MemberApplyVersions`]); a member that has not answered, or answers an older version,
//! holds the registry where it is.

use std::sync::Arc;
use std::time::Duration;

use super::{Controller, Tick, Wake};
use crate::state::{ClusterOp, Op, APPLY_VERSION};

/// The newest apply version every current member knows, as last asked; `None` while any is unknown.
pub trait MemberApplyVersions: Send + Sync {
    fn lowest_supported(&self) -> Option<u32>;
}

/// The apply version as a controller.
pub struct ApplyVersionFinalizer {
    pub tick: Duration,
    pub members: Arc<dyn MemberApplyVersions>,
}

impl Controller for ApplyVersionFinalizer {
    fn name(&self) -> &'static str {
        "apply-version"
    }

    fn wake(&self) -> Wake {
        Wake::Every(self.tick)
    }

    fn decide(&mut self, tick: &Tick<'_>) -> Vec<Op> {
        let Some(lowest) = self.members.lowest_supported() else {
            return Vec::new();
        };
        let version = lowest.min(APPLY_VERSION);
        if version > tick.state.apply_version {
            vec![Op::Cluster(ClusterOp::SetApplyVersion { version })]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::Now;
    use crate::state::RegistryState;

    struct Known(Option<u32>);

    impl MemberApplyVersions for Known {
        fn lowest_supported(&self) -> Option<u32> {
            self.0
        }
    }

    fn decide(state: &RegistryState, known: Option<u32>) -> Vec<Op> {
        let mut finalizer = ApplyVersionFinalizer {
            tick: Duration::from_secs(1),
            members: Arc::new(Known(known)),
        };
        finalizer.decide(&Tick {
            state,
            now: Now {
                unix_ms: 1,
                mono_ms: 1,
            },
            leading_since_ms: 0,
        })
    }

    #[test]
    fn the_version_moves_only_to_what_every_member_knows() {
        let state = RegistryState::default();
        assert_eq!(
            decide(&state, None),
            vec![],
            "a member not heard from holds it"
        );
        assert_eq!(decide(&state, Some(0)), vec![], "an old member holds it");
        assert_eq!(
            decide(&state, Some(APPLY_VERSION)),
            vec![Op::Cluster(ClusterOp::SetApplyVersion {
                version: APPLY_VERSION
            })]
        );
        assert_eq!(
            decide(&state, Some(APPLY_VERSION + 5)),
            vec![Op::Cluster(ClusterOp::SetApplyVersion {
                version: APPLY_VERSION
            })],
            "never beyond what this build knows"
        );
        let mut current = RegistryState::default();
        current.apply_version = APPLY_VERSION;
        assert_eq!(
            decide(&current, Some(APPLY_VERSION)),
            vec![],
            "nothing to do"
        );
    }
}
