//! Tests of the cookie: creation, length, trimming, bounded reads, file modes.

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

/// A file in a fresh temporary directory (kept alive by the returned guard).
fn file_with(contents: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cookie");
    std::fs::write(&path, contents).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    (dir, path)
}

#[test]
fn a_cookie_shorter_than_16_bytes_is_refused_with_how_to_make_one() {
    let (_dir, path) = file_with(b"x\n");
    let err = Cookie::from_file(&path).unwrap_err();
    assert!(
        matches!(&err, CookieError::TooShort { len: 1, origin: CookieSource::File(p) } if *p == path),
        "{err:?}"
    );
    let text = err.to_string();
    let shown = path.display().to_string();
    assert!(text.contains(&shown), "{text}");
    assert!(
        text.contains("1 byte,") && text.contains("16 bytes"),
        "{text}"
    );
    assert!(
        text.contains(&format!("`head -c 32 /dev/urandom | base64 > {shown}`")),
        "{text}"
    );
    assert!(text.contains(&format!("`chmod 600 {shown}`")), "{text}");

    // 15 bytes are refused, 16 are enough; white space around them does not count.
    let (_dir, path) = file_with(b"  fifteen-bytes!!\n");
    assert!(matches!(
        Cookie::from_file(&path),
        Err(CookieError::TooShort { len: 15, .. })
    ));
    let (_dir, path) = file_with(b"  sixteen-bytes!!!\n");
    assert_eq!(
        Cookie::from_file(&path).unwrap(),
        Cookie::new("sixteen-bytes!!!")
    );

    let err = Cookie::new("short")
        .check(CookieSource::Builder)
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("`Builder::cookie`") && text.contains("5 bytes"),
        "{text}"
    );
    assert!(text.contains("head -c 32 /dev/urandom | base64"), "{text}");
    let text = Cookie::new("")
        .check(CookieSource::BuilderAccepted)
        .unwrap_err()
        .to_string();
    assert!(text.contains("`Builder::accept_cookie`"), "{text}");
    assert!(
        Cookie::new([0u8; MIN_LEN])
            .check(CookieSource::Builder)
            .is_ok()
    );
}

#[test]
fn unicode_white_space_is_trimmed_as_from_the_environment() {
    // What `str::trim` (the configuration's `cookie`, RALLYPOINT_COOKIE) removes, a
    // file loses too: one rule.
    let around = "\u{3000}\u{a0}\u{b}\t the-cluster-cookie-1234 \u{b}\u{a0}\u{3000}\r\n";
    assert_eq!(trim(around.as_bytes()), b"the-cluster-cookie-1234");
    assert_eq!(trim(around.as_bytes()), around.trim().as_bytes());
    let (_dir, path) = file_with(around.as_bytes());
    assert_eq!(
        Cookie::from_file(&path).unwrap(),
        Cookie::new("the-cluster-cookie-1234")
    );
    // White space inside is kept.
    assert_eq!(trim(" a b\u{3000}c ".as_bytes()), "a b\u{3000}c".as_bytes());
    assert_eq!(trim(b" \n\t"), b"");
    // Not UTF-8: ASCII white space only (vertical tab included); a lone 0xA0 byte is
    // not white space there.
    assert_eq!(
        trim(b"\x0b\t \xa0\xffsecret\xa0 \x0c\x0b\n"),
        b"\xa0\xffsecret\xa0"
    );
    assert_eq!(trim(b"\xff\xfe"), b"\xff\xfe");
}

#[test]
fn devices_fifos_directories_and_large_files_are_refused_unread() {
    let err = Cookie::from_file(Path::new("/dev/zero")).unwrap_err();
    assert!(
        matches!(
            err,
            CookieError::NotAFile {
                kind: "a character device",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("/dev/zero"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let err = Cookie::from_file(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            CookieError::NotAFile {
                kind: "a directory",
                ..
            }
        ),
        "{err:?}"
    );

    // A FIFO with no writer: opening it would wait for ever.
    #[cfg(unix)]
    {
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = Cookie::from_file(&fifo).unwrap_err();
        assert!(
            matches!(
                err,
                CookieError::NotAFile {
                    kind: "a FIFO (named pipe)",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    let (_d, path) = file_with(&[b'a'; MAX_FILE_LEN + 1]);
    let err = Cookie::from_file(&path).unwrap_err();
    assert!(
        matches!(err, CookieError::FileTooLarge { len, .. } if len == MAX_FILE_LEN as u64 + 1),
        "{err:?}"
    );
    assert!(err.to_string().contains("4096 bytes"), "{err}");

    // At the limit, white space included, it is read.
    let mut padded = vec![b' '; MAX_FILE_LEN - 20];
    padded.extend_from_slice(b"a-cookie-of-20-bytes");
    let (_d, path) = file_with(&padded);
    assert_eq!(
        Cookie::from_file(&path).unwrap(),
        Cookie::new("a-cookie-of-20-bytes")
    );
}

#[test]
fn a_mode_with_any_group_or_other_bit_is_exposed() {
    for mode in [0o600, 0o400, 0o700, 0o100600, 0o4700] {
        assert!(!mode_is_exposed(mode), "{mode:o}");
    }
    for mode in [
        0o644, 0o640, 0o604, 0o620, 0o602, 0o610, 0o601, 0o666, 0o100644,
    ] {
        assert!(mode_is_exposed(mode), "{mode:o}");
    }
    // An exposed file is still used (with a warning).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let (_d, path) = file_with(b"a-cookie-readable-by-all\n");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            Cookie::from_file(&path).unwrap(),
            Cookie::new("a-cookie-readable-by-all")
        );
    }
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
