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

/// A record's fields: one `NAME: "field" at OFFSET, SIZE` each, making
/// the constant `NAME` (the offset) and the record's `FIELDS`.
macro_rules! record {
    ($($name:ident: $field:literal at $offset:literal, $size:literal;)*) => {
        $(pub const $name: usize = $offset;)*
        pub const FIELDS: &[super::Field] = &[$(($field, $offset, $size)),*];
    };
}

/// `sock:inet_sock_set_state` (this layout since 4.16).
pub mod inet_sock_set_state {
    record! {
        SKADDR: "skaddr" at 8, 8;
        OLDSTATE: "oldstate" at 16, 4;
        NEWSTATE: "newstate" at 20, 4;
        SPORT: "sport" at 24, 2;
        DPORT: "dport" at 26, 2;
        FAMILY: "family" at 28, 2;
        PROTOCOL: "protocol" at 30, 2;
        DADDR: "daddr" at 36, 4;
        DADDR_V6: "daddr_v6" at 56, 16;
    }
}

/// `tcp:tcp_retransmit_skb` (with `family` since 5.12).
pub mod tcp_retransmit_skb {
    record! {
        SKBADDR: "skbaddr" at 8, 8;
        SKADDR: "skaddr" at 16, 8;
        SPORT: "sport" at 28, 2;
        DPORT: "dport" at 30, 2;
        FAMILY: "family" at 32, 2;
        DADDR: "daddr" at 38, 4;
        DADDR_V6: "daddr_v6" at 58, 16;
    }
}

/// `tcp:tcp_retransmit_synack` (with `family` since 5.12).
pub mod tcp_retransmit_synack {
    record! {
        SKADDR: "skaddr" at 8, 8;
        SPORT: "sport" at 24, 2;
        DPORT: "dport" at 26, 2;
        FAMILY: "family" at 28, 2;
        DADDR: "daddr" at 34, 4;
        DADDR_V6: "daddr_v6" at 54, 16;
    }
}

/// `tcp:tcp_receive_reset` (with `family` since 5.12).
pub mod tcp_receive_reset {
    record! {
        SKADDR: "skaddr" at 8, 8;
        SPORT: "sport" at 16, 2;
        DPORT: "dport" at 18, 2;
        FAMILY: "family" at 20, 2;
        DADDR: "daddr" at 26, 4;
        DADDR_V6: "daddr_v6" at 46, 16;
    }
}

/// `tcp:tcp_send_reset` with a reason and socket addresses (6.10+): the
/// local and remote `sockaddr_in` or `sockaddr_in6`, 28 bytes each (the
/// local one even when the reset answers a segment no socket wanted).
pub mod tcp_send_reset {
    record! {
        SKADDR: "skaddr" at 16, 8;
        SADDR: "saddr" at 32, 28;
        DADDR: "daddr" at 60, 28;
    }
}
