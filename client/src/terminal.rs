//! Local terminal handling: raw mode with guaranteed restore, size, stdin pump.

use std::io::{IsTerminal, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use bytes::Bytes;
use tokio::sync::mpsc;

/// Largest stdin chunk per Output frame (the stock plugin's size).
pub const STDIN_CHUNK: usize = 1024;
/// Size reported when stdin is not a terminal.
pub const NON_TTY_SIZE: (u32, u32) = (200, 50);
/// Fallback when the terminal size cannot be read.
pub const FALLBACK_SIZE: (u32, u32) = (300, 100);

static RAW_ACTIVE: AtomicBool = AtomicBool::new(false);
static HOOK: Once = Once::new();

pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}

pub fn stdout_is_tty() -> bool {
    std::io::stdout().is_terminal()
}

fn restore() {
    if RAW_ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// Puts the terminal in raw mode; restores it on drop and on panic.
/// Call [`restore_terminal`] before `process::exit`, which skips destructors.
pub struct RawGuard(());

impl RawGuard {
    pub fn enable() -> std::io::Result<RawGuard> {
        HOOK.call_once(|| {
            let prev = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                prev(info);
            }));
        });
        crossterm::terminal::enable_raw_mode()?;
        RAW_ACTIVE.store(true, Ordering::SeqCst);
        Ok(RawGuard(()))
    }
}

impl Drop for RawGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Restores the terminal if raw mode is on (idempotent).
pub fn restore_terminal() {
    restore();
}

/// (cols, rows) of the controlling terminal.
pub fn current_size() -> (u32, u32) {
    match crossterm::terminal::size() {
        Ok((c, r)) if c > 0 && r > 0 => (u32::from(c), u32::from(r)),
        _ => FALLBACK_SIZE,
    }
}

/// Reads stdin on a plain thread (stdin reads cannot be cancelled) into a
/// bounded channel; the channel closes on EOF or error. The thread dies with
/// the process.
pub fn spawn_stdin_reader() -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; STDIN_CHUNK];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let chunk = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
                        if tx.blocking_send(chunk).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start stdin reader: {e}");
    }
    rx
}
