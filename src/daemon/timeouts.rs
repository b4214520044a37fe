//! When an HTTP connection of the API has taken too long: a sans-IO clock per
//! connection, fed by the connection's shell ([`super::serve`]) with what happened and
//! when, and asked for its next deadline.
//!
//! Three rules, after nginx's `client_header_timeout` and `keepalive_timeout`:
//!
//! - **header**: a request's head (request line and headers) must be complete within
//!   `header` of the moment the connection opened (for its first request), or of the
//!   first byte of the request (for a later one, on a kept-alive connection). A client
//!   that dribbles a head byte by byte (slowloris), or opens a connection and sends
//!   nothing, is closed then.
//! - **idle**: a kept-alive connection on which no byte of a new request has come for
//!   `idle` after the previous response is closed.
//! - **stalled**: a response that has been waiting for the client to read (the socket's
//!   send buffer full, nothing written) for `idle` is cut. A long response that makes
//!   progress (an event stream being read) is never cut by the clock.
//!
//! While a request is being answered and nothing waits on the client (a handler still
//! working, an event stream waiting for the next event), no rule applies.
//!
//! Inputs are `handle_*(now)`; [`Clock::poll_timeout`] gives the next deadline and
//! [`Clock::expired`] says whether, and why, the connection is over at `now`. The shell
//! calls [`Clock::expired`] when the deadline it slept for has passed, and reads
//! [`Clock::poll_timeout`] again after every input that changed it.

use std::time::{Duration, Instant};

/// The two durations the clock applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How long a request's head may take to arrive (`http_header_timeout`).
    pub header: Duration,
    /// How long a kept-alive connection may sit idle between requests, and a response
    /// may wait for the client to read (`http_idle_timeout`).
    pub idle: Duration,
}

/// Why a connection's clock ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// A request's head did not arrive in time.
    Header,
    /// No new request came on a kept-alive connection in time.
    Idle,
    /// The client did not read a response for that long.
    Stalled,
}

impl Expired {
    /// The reason as the metrics and logs write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Expired::Header => "header_timeout",
            Expired::Idle => "idle_timeout",
            Expired::Stalled => "write_stalled",
        }
    }
}

/// Where the connection is, with what its deadline is counted from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Opened, no byte yet: the first request's head is due `header` after `opened`.
    Opened { opened: Instant },
    /// After a response, no byte of the next request yet: idle since `since`.
    KeptAlive { since: Instant },
    /// Bytes of a request head have come; the head is due `header` after `since` (the
    /// connection's opening for a first request, the first byte for a later one).
    Head { since: Instant },
    /// A request's head is in and it is being answered; `stalled`: since when the
    /// response has been waiting for the client to read, if it is.
    Busy { stalled: Option<Instant> },
}

/// One connection's clock. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct Clock {
    limits: Limits,
    phase: Phase,
}

impl Clock {
    /// The clock of a connection opened at `now`.
    pub fn new(limits: Limits, now: Instant) -> Clock {
        Clock {
            limits,
            phase: Phase::Opened { opened: now },
        }
    }

    /// Bytes were read from the client.
    pub fn handle_read(&mut self, now: Instant) {
        self.phase = match self.phase {
            Phase::Opened { opened } => Phase::Head { since: opened },
            Phase::KeptAlive { .. } => Phase::Head { since: now },
            // More of the head, or a request body, or the next request pipelined:
            // nothing changes until the head is in or the response is done.
            p @ (Phase::Head { .. } | Phase::Busy { .. }) => p,
        };
    }

    /// A request's head is complete: the request goes to its handler.
    pub fn handle_request(&mut self, _now: Instant) {
        self.phase = Phase::Busy { stalled: None };
    }

    /// The response to the current request is written (or abandoned).
    pub fn handle_response_done(&mut self, now: Instant) {
        self.phase = Phase::KeptAlive { since: now };
    }

    /// A write found the socket's send buffer full.
    pub fn handle_write_blocked(&mut self, now: Instant) {
        if let Phase::Busy { stalled: None } = self.phase {
            self.phase = Phase::Busy { stalled: Some(now) };
        }
    }

    /// A write went through.
    pub fn handle_write_progress(&mut self, _now: Instant) {
        if let Phase::Busy { stalled: Some(_) } = self.phase {
            self.phase = Phase::Busy { stalled: None };
        }
    }

    /// Whether a request is being answered (its head is in, its response not done).
    pub fn answering(&self) -> bool {
        matches!(self.phase, Phase::Busy { .. })
    }

    /// When the connection expires unless something happens first; `None`: not while
    /// nothing happens.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline().map(|(at, _)| at)
    }

    /// Whether the connection is over at `now`, and why.
    pub fn expired(&self, now: Instant) -> Option<Expired> {
        self.deadline()
            .and_then(|(at, why)| (now >= at).then_some(why))
    }

    fn deadline(&self) -> Option<(Instant, Expired)> {
        let Limits { header, idle } = self.limits;
        match self.phase {
            Phase::Opened { opened } => Some((opened + header, Expired::Header)),
            Phase::Head { since } => Some((since + header, Expired::Header)),
            Phase::KeptAlive { since } => Some((since + idle, Expired::Idle)),
            Phase::Busy { stalled } => stalled.map(|t| (t + idle, Expired::Stalled)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        header: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_connection_that_sends_nothing_expires_after_the_header_timeout() {
        let t0 = Instant::now();
        let c = Clock::new(LIMITS, t0);
        assert_eq!(c.poll_timeout(), Some(t0 + secs(10)));
        assert_eq!(c.expired(t0 + secs(9)), None);
        assert_eq!(c.expired(t0 + secs(10)), Some(Expired::Header));
    }

    #[test]
    fn dribbling_a_first_head_does_not_extend_its_deadline() {
        let t0 = Instant::now();
        let mut c = Clock::new(LIMITS, t0);
        for s in 1..10 {
            c.handle_read(t0 + secs(s));
            assert_eq!(
                c.poll_timeout(),
                Some(t0 + secs(10)),
                "after a byte at {s} s"
            );
        }
        assert_eq!(c.expired(t0 + secs(10)), Some(Expired::Header));
    }

    #[test]
    fn a_kept_alive_connection_waits_idle_then_gives_the_next_head_the_header_timeout() {
        let t0 = Instant::now();
        let mut c = Clock::new(LIMITS, t0);
        c.handle_read(t0);
        c.handle_request(t0 + secs(1));
        assert_eq!(c.poll_timeout(), None, "no deadline while a handler works");
        c.handle_response_done(t0 + secs(2));
        assert_eq!(c.poll_timeout(), Some(t0 + secs(62)));
        assert_eq!(c.expired(t0 + secs(61)), None);
        // The next request starts at 50 s: its head is due 10 s later, not at 62 s.
        c.handle_read(t0 + secs(50));
        assert_eq!(c.poll_timeout(), Some(t0 + secs(60)));
        c.handle_read(t0 + secs(55));
        assert_eq!(c.expired(t0 + secs(60)), Some(Expired::Header));
    }

    #[test]
    fn an_idle_kept_alive_connection_expires_as_idle() {
        let t0 = Instant::now();
        let mut c = Clock::new(LIMITS, t0);
        c.handle_read(t0);
        c.handle_request(t0);
        c.handle_response_done(t0);
        assert_eq!(c.expired(t0 + secs(59)), None);
        assert_eq!(c.expired(t0 + secs(60)), Some(Expired::Idle));
    }

    #[test]
    fn a_response_the_client_does_not_read_is_cut_after_idle_but_progress_resets_it() {
        let t0 = Instant::now();
        let mut c = Clock::new(LIMITS, t0);
        c.handle_read(t0);
        c.handle_request(t0);
        c.handle_write_blocked(t0 + secs(1));
        // A second blocked write does not move the start of the stall.
        c.handle_write_blocked(t0 + secs(30));
        assert_eq!(c.poll_timeout(), Some(t0 + secs(61)));
        c.handle_write_progress(t0 + secs(40));
        assert_eq!(c.poll_timeout(), None);
        c.handle_write_blocked(t0 + secs(45));
        assert_eq!(c.expired(t0 + secs(104)), None);
        assert_eq!(c.expired(t0 + secs(105)), Some(Expired::Stalled));
    }

    #[test]
    fn bytes_read_while_busy_change_nothing() {
        let t0 = Instant::now();
        let mut c = Clock::new(LIMITS, t0);
        c.handle_read(t0);
        c.handle_request(t0);
        c.handle_read(t0 + secs(100));
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn writes_outside_a_response_change_nothing() {
        let t0 = Instant::now();
        let mut c = Clock::new(LIMITS, t0);
        c.handle_write_blocked(t0 + secs(1));
        assert_eq!(c.poll_timeout(), Some(t0 + secs(10)));
        c.handle_read(t0 + secs(2));
        c.handle_request(t0 + secs(3));
        c.handle_response_done(t0 + secs(4));
        c.handle_write_progress(t0 + secs(5));
        assert_eq!(c.poll_timeout(), Some(t0 + secs(64)));
    }
}
