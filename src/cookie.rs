//! The cluster's shared secret (the cookie).

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::RngCore;

/// The shared secret that every member of a cluster knows. Peers prove knowledge of it
/// by HMAC challenge/response; it never crosses the wire. Its `Debug` output is
/// redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Cookie(Arc<[u8]>);

/// Why a cookie could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum CookieError {
    /// The cookie is empty (after trimming white space from a file's contents).
    #[error("the cookie in {path} is empty")]
    Empty {
        /// Where the cookie was read from.
        path: PathBuf,
    },
    /// Reading or creating the cookie file failed.
    #[error("cannot read or create the cookie file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The user has no config directory to keep a default cookie in.
    #[error("no config directory to keep the default cookie in (set a cookie explicitly)")]
    NoConfigDir,
}

impl Cookie {
    /// A cookie from the given bytes.
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        Cookie(Arc::from(secret.as_ref()))
    }

    /// The secret bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Reads a cookie from a file: its contents with surrounding white space trimmed.
    pub fn from_file(path: &Path) -> Result<Self, CookieError> {
        let raw = std::fs::read(path).map_err(|source| CookieError::Io {
            path: path.to_owned(),
            source,
        })?;
        let trimmed = raw.trim_ascii();
        if trimmed.is_empty() {
            return Err(CookieError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Cookie::new(trimmed))
    }

    /// Where the default cookie lives: `<config dir>/rallypoint/cookie`
    /// (`~/.config/rallypoint/cookie` on Linux).
    pub fn default_path() -> Option<PathBuf> {
        dirs::config_dir().map(|d| d.join("rallypoint").join("cookie"))
    }

    /// The default cookie of this user, created once (32 random bytes, hex, mode 0600)
    /// at [`Cookie::default_path`]. Nodes of one user on one host thus cluster with no
    /// set-up, and nothing else gets in.
    pub fn load_or_create_default() -> Result<Self, CookieError> {
        let path = Self::default_path().ok_or(CookieError::NoConfigDir)?;
        Self::load_or_create(&path)
    }

    /// Like [`Cookie::load_or_create_default`], at a given path.
    pub fn load_or_create(path: &Path) -> Result<Self, CookieError> {
        match Self::from_file(path) {
            Ok(c) => return Ok(c),
            Err(CookieError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let io = |source| CookieError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let text = hex::encode(bytes);
        // Write a private temporary file, then link it into place: the cookie appears
        // whole or not at all, so two nodes starting at once never read a half-written
        // one, and the first to link wins.
        let tmp = path.with_extension(format!("tmp.{:016x}", rand::random::<u64>()));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let written = opts.open(&tmp).and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(Cookie::new(text)),
            // Another process created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::from_file(path),
            Err(e) => Err(io(e)),
        }
    }
}

/// The cookies a node holds: the first (the primary) is used to dial and to send, any of
/// them is accepted from a peer. Holding two lets a cluster move to a new cookie with no
/// downtime: first every node accepts the new one, then every node dials with it, then
/// the old one is dropped (see the README's "Rotating the cookie").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cookies {
    all: Vec<Cookie>,
}

impl Cookies {
    /// Just `primary`.
    pub fn new(primary: Cookie) -> Self {
        Cookies { all: vec![primary] }
    }

    /// Also accepts `cookie` from peers (never used to dial). A cookie held already is
    /// not added twice.
    pub fn accept(mut self, cookie: Cookie) -> Self {
        if !self.all.contains(&cookie) {
            self.all.push(cookie);
        }
        self
    }

    /// The cookie this node dials with.
    pub fn primary(&self) -> &Cookie {
        &self.all[0]
    }

    /// Every cookie accepted, the primary first.
    pub fn all(&self) -> &[Cookie] {
        &self.all
    }
}

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cookie(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cookie_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("cookie");
        let a = Cookie::load_or_create(&path).unwrap();
        let b = Cookie::load_or_create(&path).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_bytes().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(format!("{a:?}"), "Cookie(<redacted>)");
    }

    #[test]
    fn nodes_starting_at_once_agree_on_one_cookie() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cookie");
        let cookies: Vec<Cookie> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| Cookie::load_or_create(&path).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(cookies.iter().all(|c| *c == cookies[0]));
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "temporary files removed");
    }

    #[test]
    fn empty_cookie_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cookie");
        std::fs::write(&path, "  \n").unwrap();
        assert!(matches!(
            Cookie::from_file(&path),
            Err(CookieError::Empty { .. })
        ));
    }
}
