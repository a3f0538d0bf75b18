//! Instructions per request of the userspace pipeline, for callgrind:
//! `instructions WORKLOAD PASSES` replays WORKLOAD (`packets`, `syscalls`
//! or `resp`, the traffic of the criterion `pipeline` group) once to warm
//! the pipeline up, then PASSES more times. Two runs under
//! `valgrind --tool=callgrind` with different PASSES cancel the set-up:
//! the difference in instructions over the difference in requests is the
//! per-request work, exact to the instruction (`cargo xtask bench`).

mod workloads;

use apm_agent::{
    protocols::routes::RouteConfig,
    telemetry::{metrics::Metrics, pipeline::Pipeline},
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(workload), Some(passes)) = (
        args.first(),
        args.get(1).and_then(|p| p.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: instructions packets|syscalls|resp PASSES");
        std::process::exit(2);
    };
    let metrics = Metrics::new().expect("metrics");
    let mut pipeline = Pipeline::new(RouteConfig::default(), 65_536, workloads::directory());
    let (mut records, fresh_connections, requests) = match workload.as_str() {
        "packets" => (workloads::packets(), true, workloads::requests()),
        "resp" => (workloads::resp_packets(), true, 2 * workloads::requests()),
        "syscalls" => (workloads::syscalls(), false, workloads::requests()),
        other => {
            eprintln!("unknown workload {other}");
            std::process::exit(2);
        }
    };
    for generation in 0..=passes {
        if fresh_connections {
            workloads::renew(&mut records, generation + 1, &mut pipeline, &metrics);
        } else {
            for r in &records {
                pipeline.handle_record(r, &metrics);
            }
        }
    }
    // What `cargo xtask bench` divides by (commands, for RESP).
    println!("requests per pass: {requests}");
}
