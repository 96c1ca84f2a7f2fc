//! Rate limits for log messages about conditions that can recur on every call.
//!
//! A lookup served default rows because Redis failed (`redis_lookup_defaults_on_error`) is
//! worth a warning, but a training loop makes thousands of lookups a minute while a server is
//! down: one line per call buried every other message and, through the Python `logging`
//! bridge, cost a GIL round trip per call. A [`Throttle`] lets the first message through,
//! then one per interval, and the next one says how many were held back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One message kind's rate limit.
#[derive(Debug)]
pub(crate) struct Throttle {
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    /// At most one message per `interval`.
    pub(crate) fn new(interval: Duration) -> Self {
        Throttle {
            interval,
            state: Mutex::new(State::default()),
        }
    }

    /// `Some(n)` when a message may go out now, `n` being how many were held back since the
    /// last one; `None` when this one is held back.
    pub(crate) fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                state.held_back += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.held_back))
            }
        }
    }
}

/// ` (N more in the last S s were not logged)` when messages were held back, else nothing.
pub(crate) fn held_back_note(held_back: u64, interval: Duration) -> String {
    if held_back == 0 {
        String::new()
    } else {
        format!(
            " ({held_back} more in the last {} s were not logged)",
            interval.as_secs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_message_passes_then_one_per_interval_with_the_held_back_count() {
        let t = Throttle::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(t.admit_at(t0), Some(0));
        for s in 1..60 {
            assert_eq!(t.admit_at(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(t.admit_at(t0 + Duration::from_secs(60)), Some(59));
        assert_eq!(t.admit_at(t0 + Duration::from_secs(61)), None);
        assert_eq!(t.admit_at(t0 + Duration::from_secs(200)), Some(1));
        assert_eq!(held_back_note(0, Duration::from_secs(60)), "");
        assert_eq!(
            held_back_note(3, Duration::from_secs(60)),
            " (3 more in the last 60 s were not logged)"
        );
    }
}
