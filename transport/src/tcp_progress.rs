//! Whether the peer's kernel is still acknowledging what we send.
//!
//! While a socket's send buffer is full, a keepalive ping cannot tell a dead
//! path from backpressure: the ping waits behind the data either way. The
//! kernel can. A peer that is alive but not reading advertises a zero window
//! and answers every window probe, so all we sent is acknowledged and any
//! probe is answered. On a dead path nothing comes back: sent segments stay
//! unacknowledged, probes pile up unanswered, and the time since the last
//! ACK only grows. `TCP_USER_TIMEOUT` cannot be used instead: it also gives
//! up on a zero window that lasts, which is exactly backpressure.

use std::time::Duration;

/// The kernel's view of one TCP connection's send side (`TCP_INFO`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckProgress {
    /// Segments sent and not yet acknowledged.
    pub unacked_segments: u32,
    /// Zero-window probes sent since the last ACK.
    pub unanswered_probes: u8,
    /// Time since the peer's kernel last acknowledged anything.
    pub since_last_ack: Duration,
    /// Bytes the peer has acknowledged over the connection's life; None
    /// from a kernel too old to say (before Linux 4.1).
    pub bytes_acked: Option<u64>,
}

impl AckProgress {
    /// True when nothing has been acknowledged for `silence` although
    /// something is owed an answer: a sent segment, or a probe beyond the
    /// one that may be in flight (a live peer answers each probe, and the
    /// next goes out only a backoff later, so two outstanding means one was
    /// lost or ignored).
    pub fn path_is_dead(&self, silence: Duration) -> bool {
        self.since_last_ack >= silence && (self.unacked_segments > 0 || self.unanswered_probes >= 2)
    }

    /// Reads `TCP_INFO` off a connected TCP socket.
    #[cfg(target_os = "linux")]
    pub fn of(socket: std::os::fd::BorrowedFd<'_>) -> std::io::Result<AckProgress> {
        use std::os::fd::AsRawFd;
        let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: the buffer is a zeroed tcp_info of the length passed; the
        // kernel writes at most `len` bytes and the fd is borrowed, so open.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: zero-initialised, so valid even if an old kernel filled
        // fewer bytes than the struct holds.
        let info = unsafe { info.assume_init() };
        let filled = |end: usize| len as usize >= end;
        Ok(AckProgress {
            unacked_segments: info.tcpi_unacked,
            unanswered_probes: info.tcpi_probes,
            since_last_ack: Duration::from_millis(info.tcpi_last_ack_recv.into()),
            bytes_acked: filled(
                std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + std::mem::size_of::<u64>(),
            )
            .then_some(info.tcpi_bytes_acked),
        })
    }

    #[cfg(not(target_os = "linux"))]
    pub fn of(_socket: std::os::fd::BorrowedFd<'_>) -> std::io::Result<AckProgress> {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const SILENCE: Duration = Duration::from_secs(3);

    fn progress(unacked_segments: u32, unanswered_probes: u8, secs: u64) -> AckProgress {
        AckProgress {
            unacked_segments,
            unanswered_probes,
            since_last_ack: Duration::from_secs(secs),
            bytes_acked: None,
        }
    }

    #[test]
    fn unacknowledged_data_past_the_silence_is_a_dead_path() {
        assert!(progress(4, 0, 3).path_is_dead(SILENCE));
        assert!(
            !progress(4, 0, 2).path_is_dead(SILENCE),
            "not silent long enough"
        );
    }

    #[test]
    fn an_answered_zero_window_is_backpressure_however_long() {
        // Probes back off to two minutes, so the last ACK may be that old
        // while each probe is still answered.
        assert!(!progress(0, 0, 120).path_is_dead(SILENCE));
        assert!(
            !progress(0, 1, 120).path_is_dead(SILENCE),
            "one probe may be in flight"
        );
        assert!(progress(0, 2, 120).path_is_dead(SILENCE));
        assert!(!progress(0, 2, 2).path_is_dead(SILENCE));
    }

    /// The kernel's side of the rule: a peer that is alive but never reads
    /// leaves nothing unacknowledged and no probe unanswered, while the
    /// window stays shut for longer than the silence allowed.
    #[tokio::test]
    async fn a_peer_that_stops_reading_reads_as_alive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut sender = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut idle_reader, _) = listener.accept().await.unwrap();
        let chunk = vec![7u8; 1 << 20];
        // Fill both socket buffers until the window is shut.
        let shut = Duration::from_millis(300);
        while let Ok(written) = tokio::time::timeout(shut, sender.write_all(&chunk)).await {
            written.unwrap();
        }
        let silence = Duration::from_millis(1500);
        let shut_at = AckProgress::of(sender.as_fd()).unwrap().bytes_acked;
        assert!(shut_at.is_some_and(|n| n > 0), "{shut_at:?}");
        let until = tokio::time::Instant::now() + silence * 2;
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let p = AckProgress::of(sender.as_fd()).unwrap();
            assert!(!p.path_is_dead(silence), "{p:?}");
            // Alive, but nothing moves while the window is shut.
            assert_eq!(p.bytes_acked, shut_at);
        }
        // Reading opens the window: what was waiting gets acknowledged.
        let mut drained = vec![0u8; 256 << 10];
        idle_reader.read_exact(&mut drained).await.unwrap();
        assert!(drained.iter().all(|b| *b == 7));
        let moved = async {
            while AckProgress::of(sender.as_fd()).unwrap().bytes_acked <= shut_at {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), moved)
            .await
            .expect("bytes_acked moves once the reader reads");
    }
}
