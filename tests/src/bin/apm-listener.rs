//! A TCP server whose behaviour the end-to-end tests script, so they know
//! the ground truth: `apm-listener PORT ACCEPT CLOSE`.
//!
//! It binds 127.0.0.1:PORT and prints `listening`. On each `go` line on
//! stdin it accepts ACCEPT connections, closes CLOSE of them and prints
//! `accepted ACCEPT closed CLOSE`. It keeps the rest open until stdin closes.

use std::{
    io::{BufRead as _, Write as _},
    net::{TcpListener, TcpStream},
};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [port, accept, close] = args.as_slice() else {
        anyhow::bail!("usage: apm-listener PORT ACCEPT CLOSE");
    };
    let (port, accept, close): (u16, usize, usize) =
        (port.parse()?, accept.parse()?, close.parse()?);
    anyhow::ensure!(close <= accept, "CLOSE must not exceed ACCEPT");
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening")?;
    out.flush()?;
    let mut held: Vec<TcpStream> = Vec::new();
    for line in std::io::stdin().lock().lines() {
        if line?.trim() != "go" {
            continue;
        }
        let mut accepted = Vec::with_capacity(accept);
        for _ in 0..accept {
            accepted.push(listener.accept()?.0);
        }
        // Dropping a TcpStream closes it.
        let kept = accepted.split_off(close);
        drop(accepted);
        held.extend(kept);
        writeln!(out, "accepted {accept} closed {close}")?;
        out.flush()?;
    }
    Ok(())
}
