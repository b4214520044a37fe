//! Rate limits for warnings caused by what others send.
//!
//! A refused handshake, a dropped gossip packet: each is worth one warning, but an
//! attacker (or a misconfigured neighbour) can cause thousands a second from as many
//! spoofed source addresses. [`WarnLimit`] keys by *reason* (a small fixed set), never by
//! source, so what it remembers and what it logs are bounded whatever the senders: per
//! reason, at most `burst` warnings in any `window`; the rest are left to debug level,
//! and the next warning after a quiet spell says how many were held back. Counters
//! (metrics) still count every occurrence; this only decides the log level.
//!
//! Sans-IO like the core: time comes in as an argument.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What to do with one occurrence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it as a warning; `suppressed` occurrences of this reason were held back
    /// (logged at debug level) since the last warning.
    Warn {
        /// How many were held back since the last warning of this reason.
        suppressed: u64,
    },
    /// Log it at debug level.
    Quiet,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    warned: u32,
    suppressed: u64,
}

/// Per-reason warning budget. See the [module docs](self).
#[derive(Debug)]
pub struct WarnLimit {
    window: Duration,
    burst: u32,
    reasons: HashMap<&'static str, Window>,
}

impl Default for WarnLimit {
    /// Five warnings per reason per minute.
    fn default() -> Self {
        WarnLimit::new(5, Duration::from_secs(60))
    }
}

impl WarnLimit {
    /// At most `burst` warnings per reason in any `window`.
    pub fn new(burst: u32, window: Duration) -> Self {
        WarnLimit {
            window,
            burst,
            reasons: HashMap::new(),
        }
    }

    /// Decides the level of one occurrence of `reason` at `now`.
    pub fn check(&mut self, now: Instant, reason: &'static str) -> Verdict {
        let w = self.reasons.entry(reason).or_insert(Window {
            started: now,
            warned: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(w.started) >= self.window {
            w.started = now;
            w.warned = 0;
        }
        if w.warned < self.burst {
            w.warned += 1;
            Verdict::Warn {
                suppressed: std::mem::take(&mut w.suppressed),
            }
        } else {
            w.suppressed += 1;
            Verdict::Quiet
        }
    }
}

/// Logs `msg` as a warning or at debug level, as `limit` decides for `reason`.
pub(crate) fn log(
    limit: &mut WarnLimit,
    now: Instant,
    reason: &'static str,
    msg: impl FnOnce() -> String,
) {
    match limit.check(now, reason) {
        Verdict::Warn { suppressed: 0 } => tracing::warn!(reason, "{}", msg()),
        Verdict::Warn { suppressed } => {
            tracing::warn!(
                reason,
                suppressed,
                "{} ({suppressed} more like it logged at debug level)",
                msg()
            )
        }
        Verdict::Quiet => tracing::debug!(reason, "{}", msg()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_gives_a_bounded_number_of_warnings_per_reason() {
        let mut l = WarnLimit::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let warned = (0..100_000)
            .filter(|i| {
                let now = t0 + Duration::from_micros(*i);
                matches!(l.check(now, "bad_packet"), Verdict::Warn { .. })
            })
            .count();
        assert_eq!(warned, 3);
        // Another reason has its own budget.
        assert_eq!(l.check(t0, "other"), Verdict::Warn { suppressed: 0 });
        // After the window, the next warning says how many were held back.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(
            l.check(later, "bad_packet"),
            Verdict::Warn {
                suppressed: 100_000 - 3
            }
        );
        assert_eq!(l.reasons.len(), 2, "memory is per reason, not per source");
    }
}
