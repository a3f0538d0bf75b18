//! The ring-buffer reader task: waits for the kernel's records with epoll
//! (tokio's AsyncFd) and hands them to the request pipeline in batches.

use std::sync::{Arc, Mutex};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::watch};
use tracing::{error, info};

use crate::{metrics::Metrics, requests::Requests};

/// Records handled per lock of the pipeline, so /stats/requests is never
/// kept waiting for long.
const BATCH: usize = 4096;

pub async fn run(
    ring: RingBuf<MapData>,
    requests: Arc<Mutex<Requests>>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let registered = {
        // SAFETY: the RingBuf owns its map's file descriptor (MapData) and
        // returns the same one from every as_raw_fd call; it stays open
        // until the RingBuf, now owned by the AsyncFd, is dropped.
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            error!(error = %e, "cannot poll the ring buffer; no HTTP metrics");
            return;
        }
    };
    info!("reading request records");
    loop {
        let mut guard = tokio::select! {
            ready = fd.readable_mut() => match ready {
                Ok(guard) => guard,
                Err(e) => {
                    error!(error = %e, "ring buffer poll failed; no more HTTP metrics");
                    return;
                }
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        let ring = guard.get_inner_mut();
        let mut drained = false;
        {
            let Ok(mut requests) = requests.lock() else {
                error!("request pipeline state poisoned; stopping the reader");
                return;
            };
            requests.refresh_services();
            for _ in 0..BATCH {
                match ring.next() {
                    Some(record) => requests.handle_record(&record, &metrics),
                    None => {
                        drained = true;
                        break;
                    }
                }
            }
        }
        if drained {
            guard.clear_ready();
        } else {
            tokio::task::yield_now().await;
        }
    }
}
