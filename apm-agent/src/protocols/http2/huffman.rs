//! HPACK's Huffman code (RFC 7541 §5.2, Appendix B), decoded four bits at
//! a time. The code is canonical, so the table below keeps each symbol's
//! code length only and the codes follow from it. The decoder is a state
//! machine whose states are the code tree's 256 inner nodes: for each
//! state and nibble, the next state and the symbol it completes, if any
//! (no code is shorter than five bits, so a nibble completes at most
//! one). Built once, 16 KiB.
//!
//! loona-hpack's decoder, used before, walked the tree bit by bit through
//! nested hash maps it built anew for every string: 85 % of the agent's
//! time under h2load.

use std::sync::OnceLock;

/// Code lengths of symbols 0 to 255 and of EOS (256).
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

const EOS: u16 = 256;

/// A transition: the next state, and the symbol completed (`NONE`), or
/// `FAIL` (EOS inside a string).
#[derive(Clone, Copy)]
struct Step {
    next: u8,
    symbol: u16,
}

const NONE: u16 = u16::MAX;
const FAIL: u16 = u16::MAX - 1;

struct Machine {
    steps: Vec<Step>,
    /// States a string may end in: the root, or up to seven 1 bits (the
    /// most significant bits of EOS) after its last symbol.
    ends: [bool; 256],
}

/// Each symbol's code and its length: canonical, in the order of
/// (length, symbol).
fn codes() -> [(u32, u8); 257] {
    let mut order: Vec<u16> = (0..=EOS).collect();
    order.sort_by_key(|&s| (LENGTHS[usize::from(s)], s));
    let mut codes = [(0u32, 0u8); 257];
    let (mut code, mut len) = (0u32, LENGTHS[usize::from(order[0])]);
    for (k, &s) in order.iter().enumerate() {
        let l = LENGTHS[usize::from(s)];
        if k > 0 {
            code = (code + 1) << (l - len);
        }
        len = l;
        codes[usize::from(s)] = (code, l);
    }
    codes
}

/// A child in the tree: an inner node, or a leaf (`LEAF` | symbol).
const LEAF: u16 = 0x8000;

fn machine() -> &'static Machine {
    static MACHINE: OnceLock<Machine> = OnceLock::new();
    MACHINE.get_or_init(|| {
        // The tree: inner nodes, each with two children (0: none yet).
        let mut tree: Vec<[u16; 2]> = vec![[0; 2]];
        for (symbol, (code, l)) in codes().into_iter().enumerate() {
            let symbol = symbol as u16;
            let mut node = 0usize;
            for bit in (0..l).rev() {
                let b = ((code >> bit) & 1) as usize;
                if bit == 0 {
                    tree[node][b] = LEAF | symbol;
                } else {
                    if tree[node][b] == 0 {
                        tree.push([0; 2]);
                        tree[node][b] = (tree.len() - 1) as u16;
                    }
                    node = usize::from(tree[node][b]);
                }
            }
        }
        debug_assert_eq!(tree.len(), 256);
        let mut ends = [false; 256];
        let mut node = 0usize;
        for _ in 0..8 {
            ends[node] = true;
            match tree[node][1] {
                c if c & LEAF == 0 => node = usize::from(c),
                _ => break,
            }
        }
        let mut steps = Vec::with_capacity(tree.len() * 16);
        for state in 0..tree.len() {
            for nibble in 0..16u8 {
                let (mut node, mut symbol) = (state, NONE);
                for bit in (0..4).rev() {
                    let child = tree[node][usize::from((nibble >> bit) & 1)];
                    if child & LEAF == 0 {
                        node = usize::from(child);
                        continue;
                    }
                    symbol = if child & !LEAF == EOS {
                        FAIL
                    } else {
                        child & !LEAF
                    };
                    node = 0;
                }
                steps.push(Step {
                    next: node as u8,
                    symbol,
                });
            }
        }
        Machine { steps, ends }
    })
}

/// Decodes the Huffman-coded `src`, appending at most `max` of its bytes
/// to `out`; returns the decoded length, or `None` for a string no
/// encoder makes (EOS inside it, or padding that is not EOS's first bits
/// or longer than seven).
pub fn decode(src: &[u8], out: &mut Vec<u8>, max: usize) -> Option<usize> {
    let m = machine();
    let (mut state, mut n) = (0usize, 0usize);
    for &byte in src {
        for nibble in [byte >> 4, byte & 15] {
            let step = m.steps[state * 16 + usize::from(nibble)];
            match step.symbol {
                NONE => {}
                FAIL => return None,
                s => {
                    if n < max {
                        out.push(s as u8);
                    }
                    n += 1;
                }
            }
            state = usize::from(step.next);
        }
    }
    m.ends[state].then_some(n)
}

#[cfg(test)]
mod tests {
    use loona_hpack::huffman::HuffmanDecoder;

    use super::*;

    /// Encodes with the canonical codes of `LENGTHS`, padded with 1 bits.
    fn encode(data: &[u8]) -> Vec<u8> {
        let codes = codes();
        let (mut acc, mut bits, mut out) = (0u64, 0u32, Vec::new());
        for &b in data {
            let (c, l) = codes[usize::from(b)];
            acc = (acc << l) | u64::from(c);
            bits += u32::from(l);
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) as u8);
        }
        out
    }

    #[test]
    fn agrees_with_an_independent_decoder_on_every_byte_and_random_strings() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut strings: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for len in 0..400 {
            strings.push(
                (0..len % 97)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        if len % 3 == 0 {
                            seed as u8
                        } else {
                            b'a' + (seed % 26) as u8
                        }
                    })
                    .collect(),
            );
        }
        for s in strings {
            let coded = encode(&s);
            let theirs = HuffmanDecoder::new().decode(&coded).expect("loona");
            assert_eq!(theirs, s);
            let mut ours = Vec::new();
            assert_eq!(decode(&coded, &mut ours, usize::MAX), Some(s.len()));
            assert_eq!(ours, s);
            let mut cut = Vec::new();
            assert_eq!(decode(&coded, &mut cut, 3), Some(s.len()));
            assert_eq!(cut, s[..s.len().min(3)]);
        }
    }

    #[test]
    fn refuses_what_no_encoder_makes() {
        // EOS (30 ones) inside a string, padding of zeros, and padding of
        // eight ones.
        let mut out = Vec::new();
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xff], &mut out, 8), None);
        assert_eq!(decode(&[0x00], &mut out, 8), None);
        assert_eq!(decode(&[0x1f, 0xff], &mut out, 8), None);
        // '0' (00000) padded with three ones, and the empty string.
        out.clear();
        assert_eq!(decode(&[0x07], &mut out, 8), Some(1));
        assert_eq!(out, b"0");
        assert_eq!(decode(&[], &mut out, 8), Some(0));
    }
}
