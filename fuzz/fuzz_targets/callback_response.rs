//! The callback client's response reader (`gateway::client`): status line and headers,
//! interim responses, framing by length, chunks or close, and its bounds. The first byte
//! picks the bounds and how the bytes arrive; the rest is what the server sent.
#![no_main]

use gateway::client::{read_response_from, ClientError, ClientLimits, Response};
use libfuzzer_sys::fuzz_target;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};

/// The server's bytes, handed over at most `step` at a time (a slow server, a packet at a
/// time), then the end of the connection.
struct Dribble<'a> {
    bytes: &'a [u8],
    step: usize,
}

impl AsyncRead for Dribble<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.step.min(self.bytes.len()).min(buf.remaining());
        let (now, later) = self.bytes.split_at(n);
        buf.put_slice(now);
        self.bytes = later;
        Poll::Ready(Ok(()))
    }
}

fn limits(pick: u8) -> ClientLimits {
    ClientLimits {
        exchange_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        idle_per_host_max: 1,
        idle_total_max: 1,
        response_head_bytes_max: [64, 256, 8 * 1024][usize::from(pick % 3)],
        response_body_bytes_max: [0, 16, 1_024, 64 * 1024][usize::from((pick / 3) % 4)],
    }
}

/// Reads from memory. The reader never waits, so neither may the parser: a `Pending`
/// here would be a response it can never finish (a hang on a real connection until the
/// exchange timeout).
fn read(
    bytes: &[u8],
    step: usize,
    head_only: bool,
    limits: &ClientLimits,
) -> Result<(Response, bool), ClientError> {
    let mut future = pin!(read_response_from(
        Dribble { bytes, step },
        head_only,
        limits
    ));
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("the response reader waits on a reader that never waits"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, sent)) = data.split_first() else {
        return;
    };
    let limits = limits(pick);
    let head_only = pick & 0x80 != 0;
    let step = [1, 7, 64][usize::from((pick >> 5) & 3) % 3];

    let whole = read(sent, usize::MAX, head_only, &limits);
    let dribbled = read(sent, step, head_only, &limits);
    if let Ok((response, _)) = &whole {
        // Bounded: never more body than allowed, never more than was sent.
        assert!(response.body.len() <= limits.response_body_bytes_max);
        assert!(response.body.len() <= sent.len());
        // Three digits, as httparse reads them (a status below 100 is returned as sent).
        assert!(response.status <= 999);
        assert!(
            !(100..200).contains(&response.status),
            "interim responses are skipped"
        );
        if head_only || matches!(response.status, 204 | 304) {
            assert!(response.body.is_empty());
        }
    }
    // How the bytes arrive does not change what they mean: the same status and body, or
    // a refusal both ways. (Reuse may differ: a server's bytes past the response are seen
    // only when they arrive together with it.)
    match (&whole, &dribbled) {
        (Ok((a, _)), Ok((b, _))) => {
            assert_eq!((a.status, &a.body), (b.status, &b.body));
        }
        (Err(_), Err(_)) => {}
        _ => panic!(
            "read at once: {:?}; {step} bytes at a time: {:?}",
            whole.as_ref().map(|(r, _)| r.status),
            dribbled.as_ref().map(|(r, _)| r.status)
        ),
    }
});
