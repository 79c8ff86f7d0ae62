//! Exit when the process that started us goes away.
//!
//! A robot script that dies without `close()` (SIGKILL, a crash) would otherwise leave its client sidecar
//! holding the UDP port and the QUIC session; a dead supervisor would leave a server sidecar that no one
//! restarts or stops. When a parent dies its children are re-parented (to init or a subreaper), so a change
//! of `getppid()` tells. Polling is used rather than `PR_SET_PDEATHSIG` because that signal fires when the
//! *thread* that spawned us ends, and Python may spawn a sidecar from a short-lived worker thread.

use std::time::Duration;

/// How often the parent is checked: a dead parent's sidecar is gone within this much (plus shutdown).
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The parent at startup; [`ParentWatch::gone`] resolves once it is no longer our parent.
#[derive(Clone, Copy, Debug)]
pub struct ParentWatch {
    parent: u32,
}

impl ParentWatch {
    /// Call first thing in `main`: a parent that dies before this call goes unnoticed (its replacement,
    /// init or a subreaper, is taken for the parent), which is the one race polling cannot close.
    pub fn capture() -> ParentWatch {
        ParentWatch { parent: std::os::unix::process::parent_id() }
    }

    pub fn parent(&self) -> u32 {
        self.parent
    }

    /// Resolves when our parent process has changed (the original one exited). Cancel-safe.
    pub async fn gone(&self) {
        let mut ticks = tokio::time::interval(POLL_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if std::os::unix::process::parent_id() != self.parent {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_living_parent_is_not_gone_and_a_changed_one_is() {
        let watch = ParentWatch::capture();
        assert_eq!(watch.parent(), std::os::unix::process::parent_id());
        assert!(tokio::time::timeout(3 * POLL_INTERVAL, watch.gone()).await.is_err());
        let stale = ParentWatch { parent: watch.parent().wrapping_add(1) };
        assert!(tokio::time::timeout(3 * POLL_INTERVAL, stale.gone()).await.is_ok());
    }
}
