//! Where the programs read the fields of the tracepoint records they
//! attach to, checked by the agent against each tracepoint's format file
//! before attaching: a kernel whose record differs (an older layout) gets
//! the program refused and reported, never misread.

/// A field of a record: its name in the format file, offset and size.
pub type Field = (&'static str, usize, usize);

/// The fields the programs read, by tracepoint name.
pub fn fields_of(name: &str) -> Option<&'static [Field]> {
    Some(match name {
        "inet_sock_set_state" => inet_sock_set_state::FIELDS,
        "tcp_retransmit_skb" => tcp_retransmit_skb::FIELDS,
        "tcp_retransmit_synack" => tcp_retransmit_synack::FIELDS,
        "tcp_receive_reset" => tcp_receive_reset::FIELDS,
        "tcp_send_reset" => tcp_send_reset::FIELDS,
        _ => return None,
    })
}

/// `sock:inet_sock_set_state` (this layout since 4.16).
pub mod inet_sock_set_state {
    pub const SKADDR: usize = 8;
    pub const OLDSTATE: usize = 16;
    pub const NEWSTATE: usize = 20;
    pub const SPORT: usize = 24;
    pub const DPORT: usize = 26;
    pub const FAMILY: usize = 28;
    pub const PROTOCOL: usize = 30;
    pub const DADDR: usize = 36;
    pub const DADDR_V6: usize = 56;
    pub const FIELDS: &[super::Field] = &[
        ("skaddr", SKADDR, 8),
        ("oldstate", OLDSTATE, 4),
        ("newstate", NEWSTATE, 4),
        ("sport", SPORT, 2),
        ("dport", DPORT, 2),
        ("family", FAMILY, 2),
        ("protocol", PROTOCOL, 2),
        ("daddr", DADDR, 4),
        ("daddr_v6", DADDR_V6, 16),
    ];
}

/// `tcp:tcp_retransmit_skb` (with `family` since 5.12).
pub mod tcp_retransmit_skb {
    pub const SKBADDR: usize = 8;
    pub const SKADDR: usize = 16;
    pub const SPORT: usize = 28;
    pub const DPORT: usize = 30;
    pub const FAMILY: usize = 32;
    pub const DADDR: usize = 38;
    pub const DADDR_V6: usize = 58;
    pub const FIELDS: &[super::Field] = &[
        ("skbaddr", SKBADDR, 8),
        ("skaddr", SKADDR, 8),
        ("sport", SPORT, 2),
        ("dport", DPORT, 2),
        ("family", FAMILY, 2),
        ("daddr", DADDR, 4),
        ("daddr_v6", DADDR_V6, 16),
    ];
}

/// `tcp:tcp_retransmit_synack` (with `family` since 5.12).
pub mod tcp_retransmit_synack {
    pub const SKADDR: usize = 8;
    pub const SPORT: usize = 24;
    pub const DPORT: usize = 26;
    pub const FAMILY: usize = 28;
    pub const DADDR: usize = 34;
    pub const DADDR_V6: usize = 54;
    pub const FIELDS: &[super::Field] = &[
        ("skaddr", SKADDR, 8),
        ("sport", SPORT, 2),
        ("dport", DPORT, 2),
        ("family", FAMILY, 2),
        ("daddr", DADDR, 4),
        ("daddr_v6", DADDR_V6, 16),
    ];
}

/// `tcp:tcp_receive_reset` (with `family` since 5.12).
pub mod tcp_receive_reset {
    pub const SKADDR: usize = 8;
    pub const SPORT: usize = 16;
    pub const DPORT: usize = 18;
    pub const FAMILY: usize = 20;
    pub const DADDR: usize = 26;
    pub const DADDR_V6: usize = 46;
    pub const FIELDS: &[super::Field] = &[
        ("skaddr", SKADDR, 8),
        ("sport", SPORT, 2),
        ("dport", DPORT, 2),
        ("family", FAMILY, 2),
        ("daddr", DADDR, 4),
        ("daddr_v6", DADDR_V6, 16),
    ];
}

/// `tcp:tcp_send_reset` with a reason and socket addresses (6.10+): the
/// local and remote `sockaddr_in` or `sockaddr_in6`, 28 bytes each (the
/// local one even when the reset answers a segment no socket wanted).
pub mod tcp_send_reset {
    pub const SKADDR: usize = 16;
    pub const SADDR: usize = 32;
    pub const DADDR: usize = 60;
    pub const FIELDS: &[super::Field] = &[
        ("skaddr", SKADDR, 8),
        ("saddr", SADDR, 28),
        ("daddr", DADDR, 28),
    ];
}
