//! The proxy's Unix-socket listener (`listen.proxy = "unix:PATH"`): only processes allowed to
//! open the socket file reach the credentials, not everything that can reach loopback in the
//! network namespace.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

/// Binds a Unix socket at `path` with permission bits `mode`.
///
/// A socket file left by a sidekey that did not stop cleanly is replaced; a socket something
/// still answers on, or a file that is not a socket, is an error (never removed). The socket is
/// bound under a temporary name in the same directory, given its mode, then renamed into place,
/// so there is no moment when it is reachable with the umask's bits.
pub fn bind_unix(path: &Path, mode: u32) -> Result<tokio::net::UnixListener, String> {
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(format!("{shown}: another process is listening on this socket")),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                tracing::info!(socket = %shown, "removing a stale socket file (nothing listens on it)");
                std::fs::remove_file(path).map_err(|e| format!("cannot remove the stale socket {shown}: {e}"))?;
            }
            Err(e) => return Err(format!("{shown}: exists and cannot be checked ({e}); not replacing it")),
        },
        Ok(_) => return Err(format!("{shown} exists and is not a socket; not replacing it")),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{shown}: {e}")),
    }
    let name = path.file_name().ok_or_else(|| format!("{shown}: not a file path"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let _ = std::fs::remove_file(&temp);
    let listener = tokio::net::UnixListener::bind(&temp).map_err(|e| format!("cannot bind {shown}: {e}"))?;
    let placed = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set the mode of {shown}: {e}"))
        .and_then(|()| std::fs::rename(&temp, path).map_err(|e| format!("cannot bind {shown}: {e}")));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    Ok(listener)
}

/// Removes the socket file at shutdown, if it is still a socket (not one another process put
/// there meanwhile is not told apart: a second sidekey on the same path is refused at start).
pub fn remove_socket(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_socket_is_replaced_a_live_one_and_other_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.sock");
        let live = bind_unix(&path, 0o660).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o660);
        let e = bind_unix(&path, 0o660).unwrap_err();
        assert!(e.contains("another process is listening"), "{e}");
        drop(live); // the file stays, nothing listens: stale
        assert!(path.exists());
        let again = bind_unix(&path, 0o600).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        drop(again);
        remove_socket(&path);
        assert!(!path.exists());
        std::fs::write(&path, "not a socket").unwrap();
        let e = bind_unix(&path, 0o660).unwrap_err();
        assert!(e.contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 1, "no temporary socket left: {leftovers:?}");
    }
}
