//! A shell under a pseudo-terminal, pumped by blocking threads into bounded
//! tokio channels. Dropping [`Pty`] kills nothing by itself: call
//! [`Pty::kill`] to end the shell; the threads stop on EOF/EIO.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use portable_pty::{native_pty_system, ChildKiller, CommandBuilder, MasterPty, PtySize};
use tokio::sync::{mpsc, oneshot};

/// Largest chunk read from the pty in one go (one stock frame payload).
pub const READ_CHUNK: usize = 1024;
/// Chunks buffered between the pty reader and the channel. When full, the
/// reader thread blocks, which stops reading the pty: the shell then blocks
/// on its own writes (natural backpressure).
const OUTPUT_QUEUE: usize = 64;
/// Keystroke chunks buffered towards the pty writer; when full the session
/// loop waits (and thereby stops acking new input from the peer).
const INPUT_QUEUE: usize = 64;

/// What to run and as whom.
#[derive(Clone, Debug)]
pub struct ShellSpec {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub cols: u16,
    pub rows: u16,
}

pub struct Pty {
    /// None for a command run on pipes ([`Pty::spawn_piped`]): no terminal
    /// to resize.
    master: Option<Box<dyn MasterPty + Send>>,
    killer: Killer,
    /// Shell output, UTF-8 boundaries respected where possible, never empty.
    pub output: mpsc::Receiver<Bytes>,
    input: mpsc::Sender<Bytes>,
    exit: Option<oneshot::Receiver<i32>>,
    /// Set by the waiter thread once the child is reaped; Drop kills otherwise.
    exited: Arc<AtomicBool>,
}

/// How the child is ended early.
enum Killer {
    Pty(Box<dyn ChildKiller + Send + Sync>),
    /// Tells the task that owns the child (and reaps it) to kill it, so a
    /// recycled pid is never signalled.
    Piped(Option<oneshot::Sender<()>>),
}

impl Killer {
    fn kill(&mut self) {
        match self {
            Killer::Pty(k) => {
                let _ = k.kill();
            }
            Killer::Piped(tx) => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if !self.exited.load(Ordering::SeqCst) {
            self.killer.kill();
        }
    }
}

/// Largest chunk read from a piped command's stdout or stderr at once.
const PIPE_CHUNK: usize = 64 * 1024;

impl Pty {
    pub fn spawn(spec: &ShellSpec) -> Result<Pty> {
        let system = native_pty_system();
        let pair = system
            .openpty(PtySize {
                rows: spec.rows,
                cols: spec.cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .context("openpty")?;
        let mut cmd = CommandBuilder::new(&spec.program);
        cmd.args(&spec.args);
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        if let Some(cwd) = &spec.cwd {
            if std::path::Path::new(cwd).is_dir() {
                cmd.cwd(cwd);
            }
        }
        let mut child = pair.slave.spawn_command(cmd).context("spawn shell")?;
        // The parent must not hold the slave open, or the reader never sees EOF.
        drop(pair.slave);
        let master = pair.master;
        let killer = child.clone_killer();
        let mut reader = master.try_clone_reader().context("pty reader")?;
        let mut writer = master.take_writer().context("pty writer")?;

        let (out_tx, out_rx) = mpsc::channel::<Bytes>(OUTPUT_QUEUE);
        std::thread::Builder::new()
            .name("pty-read".into())
            .spawn(move || {
                let mut buf = [0u8; READ_CHUNK];
                let mut carry = Vec::new();
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let chunk = utf8_chunk(&mut carry, buf.get(..n).unwrap_or(&[]));
                            if !chunk.is_empty()
                                && out_tx.blocking_send(Bytes::from(chunk)).is_err()
                            {
                                return;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        // EIO once the shell (and every holder of the slave) is gone.
                        Err(_) => break,
                    }
                }
                if !carry.is_empty() {
                    let _ = out_tx.blocking_send(Bytes::from(carry));
                }
            })?;

        let (in_tx, mut in_rx) = mpsc::channel::<Bytes>(INPUT_QUEUE);
        std::thread::Builder::new()
            .name("pty-write".into())
            .spawn(move || {
                while let Some(data) = in_rx.blocking_recv() {
                    if writer
                        .write_all(&data)
                        .and_then(|_| writer.flush())
                        .is_err()
                    {
                        break;
                    }
                }
            })?;

        let (exit_tx, exit_rx) = oneshot::channel();
        let exited = Arc::new(AtomicBool::new(false));
        let exited_flag = exited.clone();
        std::thread::Builder::new()
            .name("pty-wait".into())
            .spawn(move || {
                let code = match child.wait() {
                    Ok(status) => i32::try_from(status.exit_code()).unwrap_or(1),
                    Err(_) => 1,
                };
                exited_flag.store(true, Ordering::SeqCst);
                let _ = exit_tx.send(code);
            })?;

        Ok(Pty {
            master: Some(master),
            killer: Killer::Pty(killer),
            output: out_rx,
            input: in_tx,
            exit: Some(exit_rx),
            exited,
        })
    }

    /// Runs `spec` without a terminal, as a NonInteractiveCommands session
    /// needs: output passes byte for byte (no echo, no `\n` to `\r\n`),
    /// stdout and stderr merged as with AWS's document. Stdin is empty (the
    /// protocol has no way to end it, so a command reading it would wait
    /// forever); what the client types is dropped. Must be called inside
    /// the tokio runtime.
    pub fn spawn_piped(spec: &ShellSpec) -> Result<Pty> {
        use tokio::io::AsyncReadExt;
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(cwd) = spec
            .cwd
            .as_deref()
            .filter(|c| std::path::Path::new(c).is_dir())
        {
            cmd.current_dir(cwd);
        }
        let mut child = cmd.spawn().context("spawn command")?;
        let (out_tx, out_rx) = mpsc::channel::<Bytes>(OUTPUT_QUEUE);
        let streams: [Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>; 2] = [
            child.stdout.take().map(|s| Box::new(s) as _),
            child.stderr.take().map(|s| Box::new(s) as _),
        ];
        for mut stream in streams.into_iter().flatten() {
            let out_tx = out_tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; PIPE_CHUNK];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let chunk = Bytes::copy_from_slice(buf.get(..n).unwrap_or(&[]));
                            if out_tx.send(chunk).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
        drop(out_tx);
        let (in_tx, _) = mpsc::channel::<Bytes>(1);
        let (exit_tx, exit_rx) = oneshot::channel();
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        let exited = Arc::new(AtomicBool::new(false));
        let exited_flag = exited.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                _ = kill_rx => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            exited_flag.store(true, Ordering::SeqCst);
            let code = match status {
                Ok(s) => s.code().unwrap_or_else(|| {
                    use std::os::unix::process::ExitStatusExt;
                    128 + s.signal().unwrap_or(0)
                }),
                Err(_) => 1,
            };
            let _ = exit_tx.send(code);
        });
        Ok(Pty {
            master: None,
            killer: Killer::Piped(Some(kill_tx)),
            output: out_rx,
            input: in_tx,
            exit: Some(exit_rx),
            exited,
        })
    }

    /// Queues keystrokes for the shell; waits while the queue is full.
    /// (The future does not borrow `self`: `MasterPty` is not `Sync`.)
    pub fn write(&self, data: Bytes) -> impl std::future::Future<Output = bool> + Send + 'static {
        let input = self.input.clone();
        async move { data.is_empty() || input.send(data).await.is_ok() }
    }

    pub fn resize(&self, cols: u16, rows: u16) {
        let Some(master) = self.master.as_ref().filter(|_| cols > 0 && rows > 0) else {
            return;
        };
        let _ = master.resize(PtySize {
            rows,
            cols,
            pixel_width: 0,
            pixel_height: 0,
        });
    }

    pub fn kill(&mut self) {
        if !self.exited.load(Ordering::SeqCst) {
            self.killer.kill();
        }
    }

    /// Takes the exit-status receiver (once).
    pub fn take_exit(&mut self) -> Option<oneshot::Receiver<i32>> {
        self.exit.take()
    }
}

/// Appends `new` to `carry` and returns everything up to the last complete
/// UTF-8 character; an incomplete trailing sequence (≤3 bytes) stays in
/// `carry` for the next read. Invalid bytes are passed through unchanged:
/// the pty is a byte stream, the split only avoids cutting characters.
pub fn utf8_chunk(carry: &mut Vec<u8>, new: &[u8]) -> Vec<u8> {
    let mut buf = std::mem::take(carry);
    buf.extend_from_slice(new);
    let len = buf.len();
    // Find the start of the last (possibly partial) character.
    let mut i = len;
    let mut back = 0;
    while i > 0 && back < 4 {
        i -= 1;
        back += 1;
        let b = buf.get(i).copied().unwrap_or(0);
        if b & 0xC0 != 0x80 {
            let need = if b < 0x80 {
                1
            } else if b & 0xE0 == 0xC0 {
                2
            } else if b & 0xF0 == 0xE0 {
                3
            } else if b & 0xF8 == 0xF0 {
                4
            } else {
                1
            };
            if len - i < need {
                *carry = buf.split_off(i);
            }
            break;
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_carry_splits_multibyte_chars() {
        let text = "héllo → wörld 🎉".as_bytes();
        for split in 0..=text.len() {
            let mut carry = Vec::new();
            let mut out = utf8_chunk(&mut carry, &text[..split]);
            assert!(std::str::from_utf8(&out).is_ok(), "split {split}");
            let rest = utf8_chunk(&mut carry, &text[split..]);
            assert!(std::str::from_utf8(&rest).is_ok());
            out.extend_from_slice(&rest);
            assert!(carry.is_empty());
            assert_eq!(out, text);
        }
    }

    #[test]
    fn utf8_carry_passes_invalid_bytes() {
        let mut carry = Vec::new();
        assert_eq!(utf8_chunk(&mut carry, &[0xff, b'a']), vec![0xff, b'a']);
        assert!(carry.is_empty());
        // Lone continuation bytes are not held back forever.
        assert_eq!(
            utf8_chunk(&mut carry, &[0x80, 0x80, 0x80, 0x80]),
            vec![0x80; 4]
        );
        assert!(carry.is_empty());
        // Only a partial lead is carried.
        assert_eq!(utf8_chunk(&mut carry, &[b'x', 0xE2, 0x82]), vec![b'x']);
        assert_eq!(carry, vec![0xE2, 0x82]);
        assert_eq!(utf8_chunk(&mut carry, &[0xAC]), "€".as_bytes());
    }

    #[tokio::test]
    async fn pty_runs_shell_and_reports_exit_code() {
        let spec = ShellSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "printf hi; exit 3".into()],
            env: vec![],
            cwd: None,
            cols: 80,
            rows: 24,
        };
        let mut pty = Pty::spawn(&spec).expect("spawn");
        let exit = pty.take_exit().expect("exit");
        let mut out = Vec::new();
        let collect = async {
            while let Some(chunk) = pty.output.recv().await {
                assert!(!chunk.is_empty());
                out.extend_from_slice(&chunk);
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), collect)
            .await
            .expect("output eof");
        let code = tokio::time::timeout(std::time::Duration::from_secs(10), exit)
            .await
            .expect("exit")
            .expect("code");
        assert_eq!(String::from_utf8_lossy(&out), "hi");
        assert_eq!(code, 3);
    }
}
