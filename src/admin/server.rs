//! The admin socket's server side: create the socket safely, answer requests line by line.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{Reply, Request};

/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;
/// A client that sends nothing for this long is disconnected.
const IDLE: Duration = Duration::from_secs(30);

/// The bound socket; the file is removed when this is dropped.
pub struct AdminSocket {
    pub listener: UnixListener,
    path: PathBuf,
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            // running as `[node] user`, the daemon may not write the directory it bound the
            // socket in as root; the next start replaces the stale file
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => tracing::info!(path = %self.path.display(), error = %e,
                "admin socket left in place (its directory is not writable by the daemon's user); the next start replaces it"),
            Err(e) => tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the admin socket"),
        }
    }
}

/// Create the socket at `path`, mode 0600, or 0660 and owned by `group` when one is given
/// (`[admin] group`): make the parent directory if missing (mode 0755), replace a stale socket
/// left by a daemon that died, refuse to take over a live one or anything that is not a socket.
pub fn bind(path: &Path, group: Option<u32>) -> io::Result<AdminSocket> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(io::ErrorKind::AddrInUse, "another overlayd is already answering on this socket"));
            }
            Err(_) => {
                tracing::info!(path = %path.display(), "removing a stale admin socket");
                std::fs::remove_file(path)?;
            }
        },
        Ok(_) => return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    let sock = AdminSocket { listener, path: path.to_path_buf() };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    if let Some(gid) = group {
        // the group first, so the group bits never open the socket to the group it was born with
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(|e| io::Error::new(e.kind(), format!("cannot give the socket to admin.group (gid {gid}): {e}; the daemon must be a member of that group or hold CAP_CHOWN")))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    }
    Ok(sock)
}

/// Answer requests on `sock` until the task is dropped. `answer` runs on this (control) task.
pub async fn serve(sock: AdminSocket, answer: Arc<dyn Fn(&Request) -> Reply + Send + Sync>) {
    loop {
        let stream = match sock.listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin: accept failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            if let Err(e) = conversation(stream, &*answer).await {
                tracing::debug!(error = %e, "admin: connection ended with an error");
            }
        });
    }
}

async fn conversation(stream: UnixStream, answer: &(dyn Fn(&Request) -> Reply + Send + Sync)) -> io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = String::new();
    loop {
        line.clear();
        let n = match tokio::time::timeout(IDLE, (&mut rd).take(MAX_REQUEST).read_line(&mut line)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        let too_long = !line.ends_with('\n') && n as u64 >= MAX_REQUEST;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let reply = if too_long {
            Reply::error(format!("request longer than {MAX_REQUEST} bytes"))
        } else {
            match serde_json::from_str::<Request>(text) {
                Ok(req) => answer(&req),
                Err(e) => Reply::error(format!("bad request: {e}")),
            }
        };
        let mut out = serde_json::to_vec(&reply).unwrap_or_else(|_| br#"{"ok":false,"error":"cannot encode the reply"}"#.to_vec());
        out.push(b'\n');
        wr.write_all(&out).await?;
        if too_long {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("overlayd-admin-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d.join("sub").join("a.sock")
    }

    #[tokio::test]
    async fn socket_is_0600_answers_requests_and_is_removed_on_drop() {
        let path = scratch("serve");
        let sock = bind(&path, None).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // a second daemon must not take over a live socket
        assert_eq!(bind(&path, None).err().map(|e| e.kind()), Some(io::ErrorKind::AddrInUse));
        let answer: Arc<dyn Fn(&Request) -> Reply + Send + Sync> = Arc::new(|r: &Request| Reply::ok(format!("{r:?}")));
        let server = tokio::spawn(serve(sock, answer));
        let p = path.clone();
        let v = tokio::task::spawn_blocking(move || super::super::client::request(&p, &Request::Stats)).await.unwrap().unwrap();
        assert_eq!(v, serde_json::json!("Stats"));
        let p = path.clone();
        let raw = tokio::task::spawn_blocking(move || {
            use std::io::{BufRead, Write};
            let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
            s.write_all(b"{\"cmd\":\"bogus\"}\n").unwrap();
            let mut line = String::new();
            std::io::BufReader::new(&s).read_line(&mut line).unwrap();
            line
        })
        .await
        .unwrap();
        assert!(raw.starts_with(r#"{"ok":false,"error":"bad request: unknown variant `bogus`"#), "{raw}");
        server.abort();
        let _ = server.await;
        assert!(!path.exists(), "socket file left behind");
        let _ = std::fs::remove_dir_all(path.parent().and_then(Path::parent).unwrap());
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_regular_file_is_refused() {
        let path = scratch("stale");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // leaves the file, nobody listening
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let s = bind(&path, None).expect("stale socket replaced");
            drop(s);
        });
        std::fs::write(&path, b"not a socket").unwrap();
        let e = rt.block_on(async { bind(&path, None).err().unwrap() });
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket", "a regular file must be left alone");
        let _ = std::fs::remove_dir_all(path.parent().and_then(Path::parent).unwrap());
    }

    #[tokio::test]
    async fn with_a_group_the_socket_is_0660_and_belongs_to_it() {
        use std::os::unix::fs::MetadataExt;
        let path = scratch("group");
        // the process's own group: any user may give a file it owns to one of its groups
        let gid = nix::unistd::getegid().as_raw();
        let sock = bind(&path, Some(gid)).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!((m.permissions().mode() & 0o777, m.gid()), (0o660, gid));
        drop(sock);
        let _ = std::fs::remove_dir_all(path.parent().and_then(Path::parent).unwrap());
    }
}
