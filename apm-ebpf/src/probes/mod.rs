//! One file per hook, mirroring `apm_common::maps::PROBES`.

pub mod accept;
pub mod close;
pub mod connect;
pub mod connect_fd;
pub mod go_tls;
pub mod h2;
pub mod io;
pub mod packets;
pub mod records;
pub mod sockets;
pub mod tcp_health;
pub mod tcp_state;
pub mod tls;
pub mod tls_h2;
pub mod tls_link;
pub mod tls_tie;
pub mod verdict;
