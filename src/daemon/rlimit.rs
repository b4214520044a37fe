//! The open-file limit, and what the HTTP API may take of it.
//!
//! Every connection costs a file descriptor: the cluster's (peers, dialled and
//! accepted) and the HTTP API's alike. If the API could use them all, a flood of idle
//! API connections would leave none for the cluster port, and peers would be cut off.
//! So at start the daemon raises its soft `RLIMIT_NOFILE` to the hard limit (the
//! default soft limit is often 1024), and the API's connection cap is kept to at most
//! half of what results ([`api_share`]), the rest left to the cluster and the runtime.

/// Raises the soft limit on open files to the hard limit, where there is one to raise
/// to. Returns the soft limit in force afterwards; `None` when it is unlimited or
/// unknown (not a Unix system).
pub fn raise_nofile() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current.is_some() && limit.current != limit.maximum {
            let raised = rustix::process::Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => tracing::debug!(
                    from = ?limit.current,
                    to = ?limit.maximum,
                    "raised the open-file limit (RLIMIT_NOFILE) to its hard limit"
                ),
                // An unlimited hard limit may not be a valid soft one (Linux caps it at
                // fs.nr_open, macOS at OPEN_MAX): keep what there is.
                Err(e) => tracing::debug!(
                    current = ?limit.current,
                    hard = ?limit.maximum,
                    error = %e,
                    "cannot raise the open-file limit (RLIMIT_NOFILE); keeping it"
                ),
            }
        }
        let now = getrlimit(Resource::Nofile).current;
        tracing::debug!(soft = ?now, "open-file limit (RLIMIT_NOFILE)");
        now
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The HTTP API's connection cap under an open-file limit of `nofile` (`None`:
/// unlimited): `configured`, or half the limit if that is less (at least 1).
pub fn api_share(configured: usize, nofile: Option<u64>) -> usize {
    match nofile {
        Some(n) => {
            let half = usize::try_from(n / 2).unwrap_or(usize::MAX).max(1);
            configured.min(half)
        }
        None => configured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_gets_at_most_half_the_descriptors() {
        assert_eq!(api_share(256, Some(1_048_576)), 256);
        assert_eq!(api_share(256, Some(1024)), 256);
        assert_eq!(api_share(256, Some(256)), 128);
        assert_eq!(api_share(256, Some(1)), 1);
        assert_eq!(api_share(256, None), 256);
    }

    #[test]
    fn raising_the_limit_leaves_a_usable_one() {
        // Raising is idempotent: a second call finds soft = hard.
        let first = raise_nofile();
        assert_eq!(raise_nofile(), first);
        if let Some(n) = first {
            assert!(n >= 3, "a limit that leaves stdio: {n}");
        }
    }
}
