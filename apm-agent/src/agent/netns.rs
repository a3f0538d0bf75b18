//! The cookie of each network namespace that has monitored listeners:
//! packet records carry the netns cookie, procfs names namespaces by
//! inode, and this joins the two without borrowing anyone's socket.

use tracing::warn;

use super::Agent;
use crate::services::cookies;

impl Agent {
    /// The cookie of network namespace `ns` (inode), learnt the first time
    /// through `pid`, a process in it: the agent's own namespace from a
    /// socket of its own, any other from its id (Linux 6.18+).
    pub(super) fn netns_cookie(&mut self, ns: u64, pid: Option<u32>) -> Option<u64> {
        if let Some(&cookie) = self.netns_cookies.get(&ns) {
            return Some(cookie);
        }
        let found = match cookies::own_netns() {
            Ok((own, cookie)) if own == ns => Ok(cookie),
            _ => match pid {
                Some(pid) => {
                    cookies::netns_cookie_of(&self.proc_root, pid).and_then(|(inode, cookie)| {
                        if inode == ns {
                            Ok(cookie)
                        } else {
                            Err(std::io::Error::other("the process changed namespace"))
                        }
                    })
                }
                None => return None,
            },
        };
        match found {
            Ok(cookie) => {
                self.netns_cookies.insert(ns, cookie);
                Some(cookie)
            }
            Err(e) => {
                if self.netns_warned.insert(ns) {
                    warn!(netns = ns, pid, error = %e, "cannot read a network namespace's cookie; its services are named by port alone");
                }
                None
            }
        }
    }
}
