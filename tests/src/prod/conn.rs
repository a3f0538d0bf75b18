//! The client's HTTP/1.1 connection: writes requests as a [`Request`]
//! says, reads every response to its end, records each exchange.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::FromRawFd as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use super::client::{Request, Sending, Truth};

/// A response as the client read it.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body_len: usize,
    /// The first [`BODY_KEPT`] bytes of the body.
    pub body: Vec<u8>,
}

/// Body bytes a [`Reply`] keeps.
pub const BODY_KEPT: usize = 64 * 1024;

/// A blocking HTTP/1.1 keep-alive connection that reads every response to
/// its end (Content-Length, chunked, or close) and records each exchange
/// in a [`Truth`]. Every read and write times out after 20 s.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pub port: u16,
}

const IO_TIMEOUT: Duration = Duration::from_secs(20);

impl Conn {
    /// Connects to 127.0.0.1:`port` of the calling thread's namespace.
    pub fn open(port: u16) -> Result<Self> {
        let stream = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(5),
        )
        .with_context(|| format!("connecting to {port}"))?;
        Self::from_stream(stream, port)
    }

    /// Like [`Conn::open`], with a receive buffer of `rcvbuf` bytes set
    /// before connecting (so the window it advertises stays small: a slow
    /// reader, whose responses queue up at the server).
    pub fn open_slow_reader(port: u16, rcvbuf: u32) -> Result<Self> {
        // SAFETY: plain socket calls on a descriptor this function owns;
        // it is handed to TcpStream (which closes it) before returning.
        let stream = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let stream = TcpStream::from_raw_fd(fd);
            let size = libc::c_int::try_from(rcvbuf)?;
            let rc = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                std::ptr::from_ref(&size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            ensure!(rc == 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
                },
                sin_zero: [0; 8],
            };
            let rc = libc::connect(
                fd,
                std::ptr::from_ref(&addr).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            ensure!(rc == 0, "connect: {}", std::io::Error::last_os_error());
            stream
        };
        Self::from_stream(stream, port)
    }

    fn from_stream(stream: TcpStream, port: u16) -> Result<Self> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            port,
        })
    }

    /// One request, its response read to the end; recorded in `truth`
    /// with its duration.
    pub fn send(&mut self, req: &Request, truth: &mut Truth) -> Result<Reply> {
        let start = Instant::now();
        match req.sending {
            Sending::Whole => self.stream.write_all(&req.bytes())?,
            Sending::HeadThenBody => {
                self.stream.write_all(&req.head())?;
                self.stream.write_all(&req.body)?;
            }
            Sending::ExpectContinue => {
                self.stream.write_all(&req.head())?;
                self.await_continue()?;
                self.stream.write_all(&req.body)?;
            }
        }
        let reply = self
            .read_response(req.method)
            .with_context(|| format!("{} {} on {}", req.method, req.path, self.port))?;
        truth.record(self.port, req, reply.status, Some(start.elapsed()));
        Ok(reply)
    }

    /// `reqs` written at once, then (after `pause`) their responses read
    /// in order; recorded in `truth` without durations.
    pub fn pipeline(
        &mut self,
        reqs: &[Request],
        pause: Duration,
        truth: &mut Truth,
    ) -> Result<Vec<Reply>> {
        ensure!(
            reqs.iter().all(|r| r.sending == Sending::Whole),
            "a pipelined request must be written whole"
        );
        let batch: Vec<u8> = reqs.iter().flat_map(Request::bytes).collect();
        self.stream.write_all(&batch)?;
        std::thread::sleep(pause);
        let mut replies = Vec::with_capacity(reqs.len());
        for req in reqs {
            let reply = self
                .read_response(req.method)
                .with_context(|| format!("pipelined {} {}", req.method, req.path))?;
            truth.record(self.port, req, reply.status, None);
            replies.push(reply);
        }
        Ok(replies)
    }

    /// Waits up to 1 s for `100 Continue` and consumes it.
    fn await_continue(&mut self) -> Result<()> {
        self.stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        let result = self.head_end();
        self.stream.set_read_timeout(Some(IO_TIMEOUT))?;
        match result {
            Ok(end) => {
                let status = status_of(&self.buf[..end])?;
                ensure!(status == 100, "expected 100 Continue, got {status}");
                self.buf.drain(..end);
                Ok(())
            }
            Err(e)
                if e.downcast_ref::<std::io::Error>().is_some_and(|e| {
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    )
                }) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The end of the next head in the buffer, reading as needed.
    fn head_end(&mut self) -> Result<usize> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                return Ok(pos + 4);
            }
            ensure!(self.buf.len() < 64 * 1024, "response head over 64 KiB");
            self.fill()?;
        }
    }

    fn read_response(&mut self, method: &str) -> Result<Reply> {
        let (status, head) = loop {
            let end = self.head_end()?;
            let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            self.buf.drain(..end);
            let status = status_of(head.as_bytes())?;
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            break (status, head);
        };
        let header = |name: &str| {
            head.split("\r\n")
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_ascii_lowercase())
        };
        let mut reply = Reply {
            status,
            body_len: 0,
            body: Vec::new(),
        };
        if method == "HEAD" || status == 204 || status == 304 {
            return Ok(reply);
        }
        if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let line = self.line()?;
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .with_context(|| format!("chunk size {line:?}"))?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    while !self.line()?.is_empty() {}
                    return Ok(reply);
                }
                self.body(size, &mut reply)?;
                ensure!(self.line()?.is_empty(), "chunk without CRLF");
            }
        }
        if let Some(length) = header("content-length") {
            let length: usize = length.parse().context("Content-Length")?;
            self.body(length, &mut reply)?;
            return Ok(reply);
        }
        // Delimited by the close.
        loop {
            let take = self.buf.len();
            self.keep(take, &mut reply);
            let mut chunk = vec![0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(reply);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Consumes `n` body bytes into `reply`.
    fn body(&mut self, mut n: usize, reply: &mut Reply) -> Result<()> {
        while n > 0 {
            if self.buf.is_empty() {
                self.fill()?;
            }
            let take = n.min(self.buf.len());
            self.keep(take, reply);
            n -= take;
        }
        Ok(())
    }

    fn keep(&mut self, take: usize, reply: &mut Reply) {
        let room = BODY_KEPT.saturating_sub(reply.body.len()).min(take);
        reply.body.extend_from_slice(&self.buf[..room]);
        reply.body_len += take;
        self.buf.drain(..take);
    }

    /// One CRLF-terminated line, without the CRLF.
    fn line(&mut self) -> Result<String> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.drain(..pos + 2);
                return Ok(line);
            }
            ensure!(self.buf.len() < 4096, "line over 4 KiB");
            self.fill()?;
        }
    }

    fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk)?;
        ensure!(n > 0, "server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn status_of(head: &[u8]) -> Result<u16> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or(head);
    std::str::from_utf8(line)?
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line {:?}", String::from_utf8_lossy(line)))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
