//! The cluster's shared secret (the cookie).
//!
//! Wherever a cookie comes from, the same rules hold:
//!
//! - **Length**: at least [`MIN_LEN`] (16) bytes. A shorter cookie is refused where it
//!   enters: [`Cookie::from_file`], the daemon's `cookie` and `accept_cookies` keys, and
//!   [`Builder::start`](crate::cluster::Builder::start) for the cookies given to the
//!   builder. [`MAKE_ONE`] says how to make a good one.
//! - **Trimming** ([`trim`]): white space around a configured cookie is not part of it,
//!   whether it is read from a file or from the configuration (`RALLYPOINT_COOKIE`), so
//!   the same secret written either way is the same cookie. A cookie given to the
//!   library's builder is taken byte for byte.
//! - **Files** ([`Cookie::from_file`]) are read with a bound: a regular file of at most
//!   [`MAX_FILE_LEN`] bytes; a device, a FIFO, a directory or a larger file is refused at
//!   once, before anything is read from it. A file that its group or other users may read
//!   or write is used, with a warning (once per file) that names the fix.

use std::fmt;
use std::fs::Metadata;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rand::RngCore;

/// The shared secret that every member of a cluster knows. Peers prove knowledge of it
/// by HMAC challenge/response; it never crosses the wire. Its `Debug` output is
/// redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Cookie(Arc<[u8]>);

/// The fewest bytes a cookie may have (after [`trim`], for a configured one).
pub const MIN_LEN: usize = 16;

/// The most bytes a cookie file may hold, white space included. A cookie is a short
/// secret; a larger file is the wrong file.
pub const MAX_FILE_LEN: usize = 4096;

/// A command that makes a good cookie (32 random bytes, base64: 44 characters).
pub const MAKE_ONE: &str = "head -c 32 /dev/urandom | base64";

/// Where a cookie came from, for errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CookieSource {
    /// A cookie file.
    File(PathBuf),
    /// The cookie given to [`Builder::cookie`](crate::cluster::Builder::cookie).
    Builder,
    /// A cookie given to [`Builder::accept_cookie`](crate::cluster::Builder::accept_cookie).
    BuilderAccepted,
}

impl CookieSource {
    /// How to make a cookie that is long enough, for this source.
    fn how_to(&self) -> String {
        match self {
            CookieSource::File(path) => {
                let p = path.display();
                format!("make one with `{MAKE_ONE} > {p}` and `chmod 600 {p}`")
            }
            CookieSource::Builder | CookieSource::BuilderAccepted => {
                format!("use {MIN_LEN} or more random bytes (`{MAKE_ONE}` makes a good one)")
            }
        }
    }
}

impl fmt::Display for CookieSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CookieSource::File(path) => write!(f, "the cookie in {}", path.display()),
            CookieSource::Builder => f.write_str("the cookie given to `Builder::cookie`"),
            CookieSource::BuilderAccepted => {
                f.write_str("a cookie given to `Builder::accept_cookie`")
            }
        }
    }
}

/// `1 byte`, `3 bytes`.
pub(crate) fn bytes(n: usize) -> String {
    format!("{n} byte{}", if n == 1 { "" } else { "s" })
}

/// Why a cookie could not be loaded or created. Nothing is changed by a failed load.
#[derive(Debug, thiserror::Error)]
pub enum CookieError {
    /// The cookie is empty (after trimming white space from a file's contents).
    #[error("the cookie in {path} is empty")]
    Empty {
        /// Where the cookie was read from.
        path: PathBuf,
    },
    /// A given cookie file does not exist. (Only the default cookie is created.)
    #[error(
        "the cookie file {} does not exist (a cookie file that is given is never created): \
         make one with `{MAKE_ONE} > {p}` and `chmod 600 {p}`, and give every node the \
         same; or leave the cookie file out to use this user's default cookie",
        .path.display(),
        p = .path.display()
    )]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// Reading the cookie file, or creating the default one, failed.
    #[error("cannot {} the cookie file {}", if *.create { "create" } else { "read" }, .path.display())]
    Io {
        /// Whether it was being created (the default cookie) rather than read.
        create: bool,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The user has no config directory to keep a default cookie in.
    #[error("no config directory to keep the default cookie in (set a cookie explicitly)")]
    NoConfigDir,
    /// The cookie is shorter than [`MIN_LEN`] bytes: it would be guessed.
    #[error(
        "{origin} is {}, shorter than the {} bytes a cookie needs; {}",
        bytes(*.len),
        MIN_LEN,
        .origin.how_to()
    )]
    TooShort {
        /// Its length in bytes (after trimming, for a configured cookie).
        len: usize,
        /// Where it came from.
        origin: CookieSource,
    },
    /// The cookie file is not a regular file (a device such as `/dev/zero`, a FIFO, a
    /// directory, a socket); nothing was read from it.
    #[error("the cookie file {} is {kind}, not a regular file", .path.display())]
    NotAFile {
        /// The file.
        path: PathBuf,
        /// What it is: `a character device`, `a FIFO`, `a directory`, …
        kind: &'static str,
    },
    /// The cookie file holds more than [`MAX_FILE_LEN`] bytes; it was not read (or not
    /// past the limit).
    #[error(
        "the cookie file {} holds {}, more than the {} bytes a cookie file may hold \
         (is it the right file?)",
        .path.display(),
        bytes(*.len as usize),
        MAX_FILE_LEN
    )]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size (or how much of it was read before giving up).
        len: u64,
    },
}

/// Removes white space from both ends of a configured cookie: the one rule for a cookie
/// file and for a cookie set in the configuration (`cookie`, `RALLYPOINT_COOKIE`,
/// `accept_cookies`), so the same secret written either way is the same cookie.
///
/// White space is what [`char::is_whitespace`] says (Unicode's `White_Space`: tab, line
/// feed, vertical tab, form feed, carriage return, space, and U+0085, U+00A0, U+1680,
/// U+2000–U+200A, U+2028, U+2029, U+202F, U+205F, U+3000). A cookie that is not UTF-8
/// (only a file can hold one) has no characters to judge: it loses the ASCII ones only
/// (tab, line feed, vertical tab, form feed, carriage return, space). Nothing inside the
/// cookie changes.
pub fn trim(raw: &[u8]) -> &[u8] {
    match std::str::from_utf8(raw) {
        Ok(text) => text.trim().as_bytes(),
        Err(_) => {
            let space = |b: &u8| matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ');
            let start = raw.iter().position(|b| !space(b)).unwrap_or(raw.len());
            let end = raw.iter().rposition(|b| !space(b)).map_or(start, |i| i + 1);
            &raw[start..end]
        }
    }
}

impl Cookie {
    /// A cookie from the given bytes, as they are (not trimmed, not checked: see
    /// [`Cookie::check`]).
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        Cookie(Arc::from(secret.as_ref()))
    }

    /// Refuses a cookie shorter than [`MIN_LEN`] bytes, saying where it came from and
    /// how to make a good one.
    pub fn check(&self, origin: CookieSource) -> Result<(), CookieError> {
        if self.0.len() < MIN_LEN {
            return Err(CookieError::TooShort {
                len: self.0.len(),
                origin,
            });
        }
        Ok(())
    }

    /// The secret bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Reads a cookie from a file: its contents, [`trim`]med, at least [`MIN_LEN`]
    /// bytes. The file must be a regular file of at most [`MAX_FILE_LEN`] bytes: anything
    /// else is refused before it is read. A file that its group or other users may read
    /// or write is used, with a warning naming the fix (`chmod 600 FILE`), once per file
    /// in a process.
    pub fn from_file(path: &Path) -> Result<Self, CookieError> {
        let (raw, meta) = read_bounded(path)?;
        let trimmed = trim(&raw);
        if trimmed.is_empty() {
            return Err(CookieError::Empty {
                path: path.to_owned(),
            });
        }
        let cookie = Cookie::new(trimmed);
        cookie.check(CookieSource::File(path.to_owned()))?;
        warn_if_exposed(path, &meta);
        Ok(cookie)
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
            Err(CookieError::Missing { .. }) => {}
            Err(e) => return Err(e),
        }
        let io = |source| CookieError::Io {
            create: true,
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

/// Reads a cookie file, refusing anything but a regular file of at most
/// [`MAX_FILE_LEN`] bytes. Returns the bytes and the metadata of the file read.
fn read_bounded(path: &Path) -> Result<(Vec<u8>, Metadata), CookieError> {
    let io = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            CookieError::Missing {
                path: path.to_owned(),
            }
        } else {
            CookieError::Io {
                create: false,
                path: path.to_owned(),
                source,
            }
        }
    };
    // Look before opening: opening a FIFO waits for a writer, and a device such as
    // /dev/zero never ends.
    check_file(path, &std::fs::metadata(path).map_err(io)?)?;
    let file = std::fs::File::open(path).map_err(io)?;
    // What was opened, which may have been replaced in between.
    let meta = file.metadata().map_err(io)?;
    check_file(path, &meta)?;
    let limit = MAX_FILE_LEN as u64;
    let mut raw = Vec::with_capacity(meta.len().min(limit) as usize + 1);
    // One byte more than allowed, to tell a file that grew past the limit.
    file.take(limit + 1).read_to_end(&mut raw).map_err(io)?;
    if raw.len() > MAX_FILE_LEN {
        return Err(CookieError::FileTooLarge {
            path: path.to_owned(),
            len: meta.len().max(raw.len() as u64),
        });
    }
    Ok((raw, meta))
}

/// Refuses what is not a regular file, or one larger than [`MAX_FILE_LEN`].
fn check_file(path: &Path, meta: &Metadata) -> Result<(), CookieError> {
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(CookieError::NotAFile {
            path: path.to_owned(),
            kind: describe(&kind),
        });
    }
    if meta.len() > MAX_FILE_LEN as u64 {
        return Err(CookieError::FileTooLarge {
            path: path.to_owned(),
            len: meta.len(),
        });
    }
    Ok(())
}

/// What a file that is not a regular file is, in words.
fn describe(kind: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_dir() {
        return "a directory";
    }
    "not a regular file"
}

/// Whether a file's mode lets its group or other users read, write or run it.
fn mode_is_exposed(mode: u32) -> bool {
    mode & 0o077 != 0
}

/// The cookie files warned about already: each is warned about once per process.
static WARNED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Warns (once per file) when the cookie file is open to its group or to others.
fn warn_if_exposed(path: &Path, meta: &Metadata) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode();
        if !mode_is_exposed(mode) {
            return;
        }
        let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
        if warned.iter().any(|p| p == path) {
            return;
        }
        warned.push(path.to_owned());
        tracing::warn!(
            path = %path.display(),
            mode = %format_args!("{:04o}", mode & 0o7777),
            "the cookie file {} can be read or written by its group or by other users \
             (mode {:04o}): run `chmod 600 {}`",
            path.display(),
            mode & 0o7777,
            path.display(),
        );
    }
    #[cfg(not(unix))]
    let _ = (path, meta, &WARNED);
}

/// The cookies a node holds: the first (the primary) is used to dial and to send, any of
/// them is accepted from a peer. Holding two lets a cluster move to a new cookie with no
/// downtime: first every node accepts the new one, then every node dials with it, then
/// the old one is dropped (see "Rotating the cookie" in docs/daemon.md).
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
mod tests;
