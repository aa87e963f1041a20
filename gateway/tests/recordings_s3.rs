//! The recordings S3 backend against a real S3-compatible server that
//! verifies SigV4 (s3s-fs, installed by scripts/install/s3s-fs.sh).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airlock_gateway::recordings::{RecordingStorage, S3Storage, StorageError};

fn s3s_fs() -> PathBuf {
    if let Some(p) = std::env::var_os("AIRLOCK_S3S_FS") {
        return PathBuf::from(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("s3s-fs");
            if p.is_file() {
                return p;
            }
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install/s3s-fs.sh");
    let out = Command::new(&script)
        .output()
        .expect("run scripts/install/s3s-fs.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    PathBuf::from(dir).join("s3s-fs")
}

struct Server {
    child: Child,
    endpoint: String,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const KEY: &str = "AKIARECORDINGSTEST01";
const SECRET: &str = "recordings-test-secret";

fn start() -> Server {
    let dir = std::env::temp_dir().join(format!("airlock-s3-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("bucket")).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(s3s_fs())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", KEY, "--secret-key", SECRET])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start s3s-fs");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s3s-fs did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
        _dir: TempDir(dir),
    }
}

fn storage(s: &Server, secret: &str) -> S3Storage {
    S3Storage::new(&s.endpoint, "bucket", "us-east-1", KEY, secret, None).unwrap()
}

#[tokio::test]
async fn put_get_list_and_multipart_against_s3s_fs() {
    let server = start();
    let s3 = storage(&server, SECRET);
    s3.put("rec/s1/header.json", b"{}").await.unwrap();
    s3.put("rec/s1/chunks/000000000000.alrc", b"one")
        .await
        .unwrap();
    // Larger than the multipart threshold: goes up in parts.
    let big: Vec<u8> = (0..(airlock_gateway::recordings::s3::MULTIPART_THRESHOLD + 3_000_000))
        .map(|i| (i % 251) as u8)
        .collect();
    s3.put("rec/s1/big.bin", &big).await.unwrap();
    assert_eq!(s3.get("rec/s1/big.bin").await.unwrap().unwrap(), big);
    assert_eq!(
        s3.get("rec/s1/header.json").await.unwrap().as_deref(),
        Some(&b"{}"[..])
    );
    assert_eq!(s3.get("rec/s1/missing").await.unwrap(), None);
    assert_eq!(
        s3.list("rec/s1/").await.unwrap(),
        vec![
            "rec/s1/big.bin",
            "rec/s1/chunks/000000000000.alrc",
            "rec/s1/header.json"
        ]
    );
    assert!(s3.list("rec/s2/").await.unwrap().is_empty());
}

#[tokio::test]
async fn wrong_secret_is_rejected_and_outage_is_unavailable() {
    let mut server = start();
    let bad = storage(&server, "not-the-secret");
    assert!(matches!(
        bad.put("k", b"x").await,
        Err(StorageError::Rejected(_))
    ));
    let good = storage(&server, SECRET);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert!(matches!(
        good.put("k", b"x").await,
        Err(StorageError::Unavailable(_))
    ));
}
