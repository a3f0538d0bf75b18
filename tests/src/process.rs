//! Child processes and scratch directories of the tests: stopped and
//! removed however a test ends.

use std::{path::PathBuf, process::Child, time::Duration};

use anyhow::{Context as _, Result};

use crate::wait_for;

/// Sends `signal` to `child`, waits up to 5 s for it, then kills it.
pub fn stop(child: &mut Child, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe { libc::kill(pid, signal) };
    }
    let gone = wait_for(Duration::from_secs(5), || {
        child.try_wait().ok().flatten().map(|_| ())
    });
    if gone.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A scratch directory of this test process, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(what: &str, port: u16) -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("apm-e2e-{what}-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
