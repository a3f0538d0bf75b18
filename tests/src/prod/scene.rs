//! A scene for the production-traffic tests: a [`LinkNs`] with nginx and
//! the FastAPI app in it, and the agent watching both.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

use super::{App, LinkNs, Nginx, Observed, Truth, check_packet_capture, report};
use crate::{Agent, free_port, require_root};

/// A namespace with its link, both servers and the agent watching them.
pub struct Scene {
    pub agent: Agent,
    pub nginx: Nginx,
    pub app: App,
    pub link: LinkNs,
}

impl Scene {
    pub fn start(tag: &str, loss_percent: u32) -> Self {
        Self::start_with(tag, loss_percent, &[])
    }

    /// [`Scene::start`] with more agent arguments.
    pub fn start_with(tag: &str, loss_percent: u32, extra: &[&str]) -> Self {
        require_root();
        let nginx_port = free_port().expect("port");
        let app_port = loop {
            let p = free_port().expect("port");
            if p != nginx_port {
                break p;
            }
        };
        let link = LinkNs::create(tag, &[nginx_port, app_port], loss_percent).expect("link");
        let nginx = Nginx::start(&link.ns, nginx_port).expect("nginx");
        let app = App::start(&link.ns, app_port).expect("uvicorn");
        let (nginx_arg, app_arg) = (nginx_port.to_string(), app_port.to_string());
        let mut args = vec!["--port", &nginx_arg, "--port", &app_arg];
        args.extend_from_slice(extra);
        let agent = Agent::start(&args).expect("agent");
        check_packet_capture(&agent).expect("packet capture");
        agent.wait_for_service(nginx_port, "nginx");
        agent.wait_for_service(app_port, "uvicorn");
        Self {
            agent,
            nginx,
            app,
            link,
        }
    }

    pub fn services(&self) -> [(&'static str, u16); 2] {
        [("nginx", self.nginx.port), ("uvicorn", self.app.port)]
    }

    /// Runs `f` on a thread inside the namespace (threads it spawns are
    /// inside too).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.link.ns.run(f)
    }

    /// The harness checks (the clients' counts equal the servers' logs,
    /// every packet within the MTU, at least `packets` each way), then
    /// the agent's numbers once they settle.
    pub fn observe(&self, truth: &Truth, packets: u64) -> (Observed, String) {
        // The servers log a request once its response is written, which
        // may be just after the client read it: retried for up to 5 s.
        let logs = || -> Result<()> {
            truth.check_server_log(self.nginx.port, "nginx", &self.nginx.log_counts()?)?;
            truth.check_server_log(self.app.port, "uvicorn", &self.app.log_counts()?)?;
            let timed = self.app.timings()?.len() as u64;
            let sent = truth.total(self.app.port);
            ensure!(
                timed == sent,
                "harness error: uvicorn timed {timed} requests, the client sent {sent}"
            );
            Ok(())
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(e) = logs() {
            assert!(Instant::now() < deadline, "{e:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let counters = self.link.check_link(packets).expect("link");
        eprintln!("link: {counters:?}");
        let obs = Observed::settle(&self.agent, &self.services(), truth).expect("agent");
        let text = report(truth, &obs, &self.services());
        eprintln!("{text}");
        (obs, text)
    }
}
