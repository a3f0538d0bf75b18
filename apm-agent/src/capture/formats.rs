//! A tracepoint's record, read from its format file, against the fields
//! its program reads (`apm_common::tracepoints`): a kernel with another
//! layout gets the program refused with the reason, never misread.

use std::path::Path;

use apm_common::tracepoints::Field;

/// Fails, naming the first difference, unless every field of `wanted` is
/// in the format file at `path` at its offset and size.
pub fn check(path: &Path, wanted: &[Field]) -> Result<(), String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    differs(&text, wanted).map_or(Ok(()), Err)
}

/// The first field of `wanted` that `format` lays out otherwise.
fn differs(format: &str, wanted: &[Field]) -> Option<String> {
    let fields = parse(format);
    wanted.iter().find_map(|&(name, offset, size)| {
        match fields.iter().find(|f| f.0 == name) {
            Some(&(_, o, s)) if (o, s) == (offset, size) => None,
            Some(&(_, o, s)) => Some(format!(
                "this kernel's record has {name} at {o} ({s} bytes), apm reads it at {offset} ({size} bytes)"
            )),
            None => Some(format!("this kernel's record has no field {name}")),
        }
    })
}

/// (name, offset, size) of each `field:` line: `field:TYPE NAME[N];
/// offset:O; size:S; signed:X;`.
fn parse(format: &str) -> Vec<(String, usize, usize)> {
    format
        .lines()
        .filter_map(|line| {
            let mut parts = line.trim().split(';').map(str::trim);
            let decl = parts.next()?.strip_prefix("field:")?;
            let name = decl.rsplit(' ').next()?.split('[').next()?.to_owned();
            let mut num =
                |key: &str| -> Option<usize> { parts.next()?.strip_prefix(key)?.parse().ok() };
            let offset = num("offset:")?;
            let size = num("size:")?;
            Some((name, offset, size))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use apm_common::tracepoints::tcp_send_reset;

    use super::*;

    /// 6.18's format file.
    const NOW: &str = "name: tcp_send_reset\nID: 2280\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
        \tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;\n\
        \tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n\
        \tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;\n\
        \tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;\n\
        \tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;\n\n\
        print fmt: \"skbaddr=%p\"\n";

    /// 6.1's: ports and addresses as fields of their own.
    const OLD: &str = "name: tcp_send_reset\nformat:\n\
        \tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
        \tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;\n\
        \tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n\
        \tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;\n\
        \tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;\n\
        \tfield:__u16 family;\toffset:32;\tsize:2;\tsigned:0;\n\
        \tfield:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;\n";

    #[test]
    fn the_layout_apm_reads_passes_and_an_older_one_is_named() {
        assert_eq!(differs(NOW, tcp_send_reset::FIELDS), None);
        let why = differs(OLD, tcp_send_reset::FIELDS).expect("differs");
        assert!(why.contains("saddr at 34 (4 bytes)"), "{why}");
        assert!(differs("", tcp_send_reset::FIELDS).is_some_and(|w| w.contains("no field")));
    }

    /// Every program's fields against this machine's kernel, when it has
    /// tracefs (the e2e tests attach them).
    #[test]
    fn this_kernels_records_are_the_ones_apm_reads() {
        let events = Path::new("/sys/kernel/tracing/events");
        for (category, name) in [
            ("sock", "inet_sock_set_state"),
            ("tcp", "tcp_retransmit_skb"),
            ("tcp", "tcp_retransmit_synack"),
            ("tcp", "tcp_receive_reset"),
            ("tcp", "tcp_send_reset"),
        ] {
            let path = events.join(category).join(name).join("format");
            if !path.exists() {
                eprintln!("no {}: skipped", path.display());
                continue;
            }
            let wanted = apm_common::tracepoints::fields_of(name).expect("fields");
            assert_eq!(check(&path, wanted), Ok(()), "{name}");
        }
    }
}
