//! Who listens where and what each service is called: procfs discovery,
//! container identity (and a pod's, from the node's files in
//! `kubernetes`), and the directory the request pipeline reads.

pub mod connections;
pub mod cookies;
pub mod directory;
pub mod discovery;
pub mod identity;
pub mod kubernetes;
pub mod sock_diag;
