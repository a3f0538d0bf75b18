fn main(){ let b = include_bytes!(concat!(env!("OUT_DIR"), "/apm")); println!("{}", b.len()); }
